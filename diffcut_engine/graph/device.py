"""Graph stage on a CUDA device: affinity and recursive NCut of feature grids that already live on the GPU.

:func:`device_ncut_trees` validates a batch of grids (one small transfer), builds each affinity on the device
(the fused Triton kernel for CUDA tensors where it runs, its float64 degrees reused by the recursion; else
:func:`~diffcut_engine.graph.affinity.namespace_affinity` on CuPy) and solves all trees in one
:func:`~diffcut_engine.graph.batched.build_trees_batched` call. The trees are those of the host's recursion
in the same ``compat`` mode (``official``, the default, or ``clean``; values equal to rounding). Everything also
runs on numpy (``xp=numpy``), which is how the CPU test suite checks this path. See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import importlib
import logging
from contextlib import nullcontext
from typing import List, Sequence

import numpy as np

from ..errors import BackendUnavailableError, InputError
from .affinity import affinity_from_tokens, l2_normalize, namespace_affinity
from .batched import build_trees_batched, resolve_namespace
from .eigen import validate_solver
from .scoring import NUM_THRESHOLDS
from .tree import NCutTree
from .validation import DEFAULT_COMPAT, check_alpha, check_compat, check_num_thresholds, check_tau
from .xp import array_namespace, as_array, cupy_available, is_cuda_tensor, to_host

__all__ = ["device_affinity", "device_ncut_trees", "device_ncut_tree", "device_namespace", "check_device_options",
           "torch_device_of"]

logger = logging.getLogger(__name__)

#: How to get the device graph stage.
GPU_INSTALL_HINT = "pip install 'diffcut-engine[gpu]'"
_TO_HOST_HINT = "move the features to the host first (cupy.asnumpy(x) or tensor.cpu())"


def device_namespace():
    """The CuPy module, for running the graph stage on the current CUDA device.

    Returns
    -------
    module
        ``cupy``.

    Raises
    ------
    BackendUnavailableError
        If CuPy is not installed, fails to import, or sees no CUDA device; the message names the extra to install.
    """
    if not cupy_available():
        raise BackendUnavailableError(f"the device graph stage needs CuPy and a CUDA device, which are not "
                                      f"available here; install it with: {GPU_INSTALL_HINT} (or run the graph "
                                      f"stage on the host: graph_device='host')")
    import cupy

    return cupy


def check_device_options(compat: str = DEFAULT_COMPAT, solver: str = "auto") -> None:
    """Reject the options that only the host recursion has, for features that live on a device.

    Raises
    ------
    InputError
        On an unknown ``compat`` or ``solver``, on ``compat="official-float32"``, or on a solver other than
        ``"auto"``.
    """
    check_compat(compat)
    validate_solver(solver)
    if compat == "official-float32":
        raise InputError(f"compat={compat!r} runs on the host only (it reproduces the official code's float32 "
                         f"torch arithmetic); got device (CuPy / CUDA) features: {_TO_HOST_HINT}, or use "
                         f"compat='official' (the same partitions rule on the fast path)")
    if solver != "auto":
        raise InputError(f"solver={solver!r} is a host eigensolver; device (CuPy / CUDA) features are solved with "
                         f"the batched device eigensolver: use solver='auto', or {_TO_HOST_HINT}")


def _affinity(xp, tokens, alpha: float):
    """W of (N, C) float32 tokens in namespace ``xp``, without validation and without a host synchronisation."""
    if xp is np:  # the host: exactly the host graph stage (ssyrk Gram, blocked passes)
        return affinity_from_tokens(l2_normalize(tokens), alpha)
    return namespace_affinity(xp, tokens, alpha)


def device_affinity(tokens, alpha: float = 10.0, *, check_finite: bool = True):
    """DiffCut affinity of tokens in their own namespace (CuPy on a CUDA device, or numpy).

    The same arithmetic as :func:`~diffcut_engine.graph.affinity.affinity_from_tokens` after
    :func:`~diffcut_engine.graph.affinity.l2_normalize`, in float32: rows normalised to unit L2 norm (eps 1e-12,
    zero rows stay zero), S = X X^T, W = ((S - min S) / (max S - min S)) ** alpha with the global min and max, in
    place, the power by binary powering for integer ``alpha`` up to 64; all ones if every similarity is equal.

    Parameters
    ----------
    tokens : array
        (N, C) real tokens, not necessarily normalised: a CuPy or numpy array, or a torch tensor (CUDA tensors
        are viewed as CuPy arrays without a copy, CPU tensors as numpy arrays).
    alpha : float, default 10
        Positive exponent.
    check_finite : bool, default True
        Reject NaN and infinite tokens (one small device-to-host copy on a device).

    Returns
    -------
    array
        (N, N) float32 in the namespace of ``tokens``, symmetric to rounding, entries in [0, 1].

    Raises
    ------
    InputError
        On a wrong shape or dtype, non-finite tokens, a non-positive alpha, or a CUDA tensor without CuPy.
    """
    alpha = check_alpha(alpha)
    x = as_array(tokens)
    xp = array_namespace(x)
    if x.ndim != 2 or 0 in x.shape:
        raise InputError(f"tokens must be a non-empty (N, C) array, got shape {tuple(x.shape)}")
    if x.dtype.kind not in "iuf":
        raise InputError(f"tokens must be a real numeric array, got dtype {x.dtype}")
    x = x.astype(xp.float32, copy=False)
    if check_finite:
        bad = int(to_host((~xp.isfinite(x)).any(axis=1).sum()))
        if bad:
            raise InputError(f"tokens contain NaN or infinite values ({bad} of {x.shape[0]} tokens)")
    return _affinity(xp, x, alpha)


def _token_matrices(xp, arrays: list) -> tuple:
    """Validate each (h, w, C) grid and flatten it to (h*w, C) float32 tokens; NaN / inf found in one transfer."""
    names = ["features"] if len(arrays) == 1 else [f"features {i}" for i in range(len(arrays))]
    tokens, grids = [], []
    for name, x in zip(names, arrays):
        if x.ndim != 3:
            raise InputError(f"{name} must be an (h, w, C) array, got shape {tuple(x.shape)}")
        h, w, c = (int(v) for v in x.shape)
        if h * w == 0 or c == 0:
            raise InputError(f"{name} must not be empty, got shape {tuple(x.shape)}")
        if x.dtype.kind not in "iuf":
            raise InputError(f"{name} must be a real numeric array, got dtype {x.dtype}")
        tokens.append(x.reshape(h * w, c).astype(xp.float32, copy=False))
        grids.append((h, w))
    bad = to_host(xp.stack([(~xp.isfinite(t)).any(axis=1).sum() for t in tokens]))  # the one transfer
    for name, t, count in zip(names, tokens, bad.tolist()):
        if count:
            raise InputError(f"{name} contain NaN or infinite values ({count} of {t.shape[0]} tokens)")
    return tokens, grids


def _fused_affinity_module():
    """``diffcut_engine.kernels.affinity`` when its Triton kernels are compiled for CUDA here, else None.

    Called only for torch tensors, so importing that (torch-importing) module costs nothing new. The module guards
    its own Triton import (``kaff.tl is None`` when Triton is missing or broken); an import error of our own module
    is a bug and surfaces.
    """
    # (import_module consults sys.modules: a module marked broken there raises instead of being reused)
    kaff = importlib.import_module("diffcut_engine.kernels.affinity")
    if kaff.tl is None or kaff.triton_interpreted():
        return None
    return kaff


def torch_device_of(tensor):
    """``torch.cuda.device(tensor.device)`` for a CUDA tensor (kernels launched inside run on the GPU that holds
    it, whatever torch's current device is), a no-op context otherwise."""
    if getattr(getattr(tensor, "device", None), "type", None) != "cuda":
        return nullcontext()
    import torch

    return torch.cuda.device(tensor.device)


def _triton_affinity(tensor, alpha: float):
    """The fused Triton affinity and float64 degrees of a CUDA (h, w, C) tensor as CuPy arrays (no copy), or
    None if the kernel cannot run."""
    if not tensor.is_floating_point():  # the kernel reads floats; CuPy converts integer grids
        return None
    kaff = _fused_affinity_module()
    if kaff is None:
        return None
    h, w, c = tensor.shape
    try:
        # Triton launches on torch's current device: make that the tensor's (as CuPy's is, in device_ncut_trees)
        with torch_device_of(tensor):
            W, d = kaff.fused_affinity(tensor.reshape(h * w, c), alpha, check_finite=False)
    except BackendUnavailableError as exc:  # e.g. Triton older than 3.0
        logger.debug("device affinity: %s; using CuPy", exc)
        return None
    return as_array(W), as_array(d)  # DLPack: CuPy views of the kernel's outputs, same device memory


def device_ncut_trees(features_list: Sequence, *, alpha: float = 10.0, tau_max: float = 1.0,
                      num_thresholds: int = NUM_THRESHOLDS, xp=None, compat: str = DEFAULT_COMPAT) -> List[NCutTree]:
    """Recursive-NCut trees of several feature grids at once, built on the device that holds them.

    Equivalent, image by image, to ``ncut_tree(features, alpha=alpha, tau_max=tau_max, compat=compat)`` on
    the host: same splits, values equal to rounding (a node within rounding of a threshold may fall on the other
    side, as between two host solvers). All affinities are built on the device and all trees come from **one**
    :func:`~diffcut_engine.graph.batched.build_trees_batched` call, so sibling subgraphs of every image share the
    stacked eigensolves of each recursion level.

    Parameters
    ----------
    features_list : sequence of array
        (h_i, w_i, C_i) real feature grids, not necessarily normalised; grid sizes may differ. CuPy arrays,
        CUDA torch tensors (read without a copy; their affinity comes from the fused Triton kernel when Triton can
        run, else from CuPy), or, for ``xp=numpy`` or host inputs, numpy arrays and CPU tensors.
    alpha : float, default 10
        Affinity exponent.
    tau_max : float, default 1
        Largest tau the trees will be cut at.
    num_thresholds : int, default 100
        Candidate thresholds per split.
    xp : module, optional
        ``numpy`` or ``cupy`` to force the namespace (inputs are moved there); default: the inputs' own.
    compat : {"official", "clean"}, default "official"
        As for the host (:func:`~diffcut_engine.graph.ncut.recursive_ncut`); ``official-float32`` is host only.

    Returns
    -------
    list of NCutTree
        One per grid, in input order, ``shape == (h_i, w_i)``, with this ``compat``; ``tree.cut(tau)`` gives
        numpy int32 labels.

    Raises
    ------
    InputError
        On a grid that is not 3-D, is empty, not real, or holds NaN or infinite values (named by its position);
        mixed host and device inputs; a CUDA tensor without CuPy; a non-positive alpha or tau_max;
        ``num_thresholds < 2``.
    """
    # 1. Check inputs (one transfer of per-image counts of non-finite tokens)
    alpha = check_alpha(alpha)
    tau_max = check_tau(tau_max, "tau_max")
    check_num_thresholds(num_thresholds)
    check_device_options(compat)
    features_list = list(features_list)
    if not features_list:
        return []
    xp, arrays = resolve_namespace(features_list, xp)
    if xp is not np:
        devices = sorted({int(a.device.id) for a in arrays})
        if len(devices) > 1:
            raise InputError(f"features on several devices (CUDA {', '.join(map(str, devices))}) cannot be solved in "
                             f"one batch; call once per device")
    # CuPy computes on its current device: make that the one holding the features (e.g. cuda:1); the Triton
    # kernel is launched under the same device (torch_device_of)
    with nullcontext() if xp is np else arrays[0].device:
        tokens, grids = _token_matrices(xp, arrays)

        # 2. Affinities on the device: the Triton kernel for CUDA tensors where it runs, else the xp code
        Ws, degrees = [], []
        for f, t in zip(features_list, tokens):
            fused = _triton_affinity(f, alpha) if is_cuda_tensor(f) and xp is not np else None
            Ws.append(_affinity(xp, t, alpha) if fused is None else fused[0])
            degrees.append(None if fused is None else fused[1])

        # 3. All trees in one level-synchronous batched recursion (the kernel's degrees used for the roots)
        return build_trees_batched(Ws, tau_max=tau_max, num_thresholds=num_thresholds, shapes=grids, xp=xp,
                                   degrees=degrees if any(d is not None for d in degrees) else None,
                                   compat=compat)


def device_ncut_tree(features, *, alpha: float = 10.0, tau_max: float = 1.0, compat: str = DEFAULT_COMPAT,
                     solver: str = "auto", num_thresholds: int = NUM_THRESHOLDS) -> NCutTree:
    """:func:`~diffcut_engine.graph.ncut.ncut_tree` for one grid on a device: what ``ncut_tree`` and
    ``recursive_ncut`` call for CuPy arrays and CUDA tensors.

    Raises
    ------
    InputError
        As :func:`device_ncut_trees`, and for ``compat="official-float32"`` or a named host solver (see
        :func:`check_device_options`).
    """
    check_device_options(compat, solver)
    return device_ncut_trees([features], alpha=alpha, tau_max=tau_max, num_thresholds=num_thresholds,
                             compat=compat)[0]
