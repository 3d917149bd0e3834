"""DiffCut's recursive two-way Normalized Cut of a feature grid or an affinity: the public entry points.

Each call is a configuration of the one recursion (:func:`~diffcut_engine.graph.tree.grow`): features on the
host go to the host splitter (:mod:`.host`), features on a CUDA device to the batched device path
(:mod:`.device`). The exact semantics of the ``compat`` modes are in docs/ALGORITHM.md.

References
----------
J. Shi and J. Malik, "Normalized Cuts and Image Segmentation", IEEE TPAMI 22(8), 2000.
P. Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features",
NeurIPS 2024 (arXiv 2406.02842); official code ``diffcut/recursive_normalized_cut.py`` (commit aa16df4).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .affinity import affinity_from_tokens, as_token_matrix, l2_normalize
from .device import device_namespace, device_ncut_tree, device_ncut_trees
from .eigen import validate_solver
from .host import host_tree
from .native import (fused_affinity_applies, native_affinity_widened, native_tree, native_tree_affinity,
                     native_trees, resolve_graph_backend)
from .scoring import NUM_THRESHOLDS
from .tree import NCutTree
from .validation import (DEFAULT_COMPAT, check_affinity_values, check_alpha, check_compat, check_node_shape,
                         check_num_thresholds, check_tau)
from .xp import is_device, to_host


def check_options(tau, compat, solver, num_thresholds, name="tau") -> float:
    """Validate the recursion's options (one place for every entry point); returns tau as a float."""
    check_compat(compat)
    validate_solver(solver)
    check_num_thresholds(num_thresholds)
    return check_tau(tau, name)


def build_tree(W, *, tau_max: float, compat: str = DEFAULT_COMPAT, solver: str = "auto",
               num_thresholds: int = NUM_THRESHOLDS, shape=None, leaf_bounds: bool = True,
               graph_backend: str = "numpy") -> NCutTree:
    """Run the recursive NCut on a dense affinity, keeping every split with NCut < ``tau_max``.

    Parameters
    ----------
    W : numpy.ndarray
        (N, N) symmetric non-negative affinity, float32 (as :func:`affinity_from_tokens` returns it).
    tau_max : float
        Largest tau the tree will be cut at.
    compat, solver, num_thresholds
        See :func:`recursive_ncut`.
    shape : tuple of int, optional
        Shape of the label maps (default ``(N,)``).
    leaf_bounds : bool, default True
        Except with ``compat="official-float32"``, skip the eigensolve of a subgraph whose
        :func:`spectral_lower_bound` proves that no bipartition has NCut < ``tau_max`` (its node gets that bound
        as ``value`` and ``exact=False``). The tree and every cut are unchanged; only leaf values differ.
    graph_backend : {"numpy", "native", "auto"}, default "numpy"
        As for :func:`ncut_tree` (the native core solves every leaf: exact values, no bounds). The core works on
        float32 values: another dtype is rounded to float32 for ``"native"`` (an ``InputError`` where that would
        change the graph: values beyond float32's range, or non-zero values that would become 0), and ``"auto"``
        takes the numpy path for a W that float32 does not hold exactly.
    """
    tau_max = check_options(tau_max, compat, solver, num_thresholds, name="tau_max")
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise InputError(f"affinity must be a square (N, N) matrix, got shape {W.shape}")
    if not np.issubdtype(W.dtype, np.number) and W.dtype != bool or np.iscomplexobj(W):
        raise InputError(f"affinity must be a real numeric matrix, got dtype {W.dtype}")
    # the same checks for every backend (the numpy path gave one segment for a negative W, the native one refused)
    check_affinity_values(np, [W])
    shape = None if shape is None else check_node_shape(shape, W.shape[0])
    backend = resolve_graph_backend(graph_backend, on_device=False, compat=compat, solver=solver,
                                    num_tokens=W.shape[0])
    if backend == "cupy":
        raise InputError("build_tree runs on the host: choose graph_backend 'numpy', 'native' or 'auto'")
    if backend == "native" and graph_backend == "auto" and W.dtype != np.float32:
        with np.errstate(over="ignore"):
            if not np.array_equal(W.astype(np.float32), W):
                backend = "numpy"  # the core works on float32 values: "auto" keeps the numpy path's labels
    if backend == "native":
        return native_tree_affinity(W, tau_max=tau_max, compat=compat, num_thresholds=num_thresholds, shape=shape,
                                    solver=solver)
    return host_tree(W, tau_max=tau_max, compat=compat, solver=solver, num_thresholds=num_thresholds,
                     shape=shape, leaf_bounds=leaf_bounds)


def recursive_ncut_affinity(W, *, tau: float = 0.5, compat: str = DEFAULT_COMPAT, solver: str = "auto",
                            num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
    """Recursive NCut of a given dense affinity matrix; see :func:`recursive_ncut`.

    Parameters
    ----------
    W : numpy.ndarray
        (N, N) symmetric non-negative affinity.

    Returns
    -------
    numpy.ndarray
        (N,) int32 labels 0..K-1.
    """
    tau = check_tau(tau)
    return build_tree(W, tau_max=tau, compat=compat, solver=solver, num_thresholds=num_thresholds).cut(tau)


def _num_tokens(features) -> int:
    """h * w of an (h, w, C) grid (0 when the shape is not that of a grid: validation reports it later)."""
    shape = getattr(features, "shape", None)
    if shape is None or len(shape) != 3:
        return 0
    return int(shape[0]) * int(shape[1])


def _affinity_of(features, alpha, compat=DEFAULT_COMPAT, fused: bool = False):
    """Affinity of a feature grid, as the recursion consumes it, its grid and its zero-row mask (``None``: the
    recursion computes it when its mode needs it): float32 for ``official-float32`` (whose float32 semantics
    depend on it), else the same values widened to float64 in the same pass (the float64 solvers then need no
    conversion of the root matrix; widening keeps the exact zeros of the zero-row rule). ``fused``: by the C++
    core's fused pass where it applies (the same values and mask, :func:`~.native.native_affinity_widened`)."""
    tokens, grid = as_token_matrix(features)
    official = compat == "official-float32"
    if fused and not official and fused_affinity_applies(alpha, tokens.shape[0]):
        W, zero_row = native_affinity_widened(l2_normalize(tokens), float(alpha))
        return W, grid, zero_row
    W = affinity_from_tokens(l2_normalize(tokens), float(alpha), exact_power=official,
                             dtype=np.float32 if official else np.float64, pooled=not official)
    return W, grid, None


def ncut_tree(features, *, alpha: float = 10.0, tau_max: float = 1.0, compat: str = DEFAULT_COMPAT,
              solver: str = "auto", num_thresholds: int = NUM_THRESHOLDS, graph_backend: str = "auto") -> NCutTree:
    """The full recursive-NCut hierarchy of a feature grid, to be cut at any ``tau <= tau_max``.

    ``ncut_tree(f, tau_max=t).cut(tau)`` equals ``recursive_ncut(f, tau=tau)`` for every ``tau <= t``, so every
    granularity comes from one pass. Parameters as :func:`recursive_ncut`.

    Returns
    -------
    NCutTree
        ``cut(tau)`` gives (h, w) int32 labels.
    """
    on_device = is_device(features)
    backend = resolve_graph_backend(graph_backend, on_device=on_device, compat=compat, solver=solver,
                                    num_tokens=_num_tokens(features))
    if backend == "cupy":
        if on_device:  # CuPy array or CUDA tensor: built on the device (graph/device.py)
            return device_ncut_tree(features, alpha=alpha, tau_max=tau_max, compat=compat, solver=solver,
                                    num_thresholds=num_thresholds)
        check_options(tau_max, compat, solver, num_thresholds, name="tau_max")
        return device_ncut_trees([features], alpha=alpha, tau_max=tau_max, num_thresholds=num_thresholds,
                                 xp=device_namespace(), compat=compat)[0]
    if on_device:
        features = to_host(features)
    tau_max = check_options(tau_max, compat, solver, num_thresholds, name="tau_max")
    alpha = check_alpha(alpha)
    if backend == "native":
        # raw tokens: the core normalises them (l2_normalize's bits) in its warm scratch memory, where a fresh
        # normalised copy here faulted in every page of it
        tokens, grid = as_token_matrix(features)
        return native_tree(tokens, grid, alpha=alpha, tau_max=tau_max, compat=compat,
                           num_thresholds=num_thresholds, solver=solver, normalize=True)
    # finite by construction (the features were checked); "auto" takes the C++ core's fused affinity pass
    W, grid, zero_row = _affinity_of(features, alpha, compat, fused=graph_backend == "auto")
    return host_tree(W, tau_max=tau_max, compat=compat, solver=solver, num_thresholds=num_thresholds,
                     shape=grid, leaf_bounds=True, owned=compat != "official-float32", zero_row=zero_row)


def ncut_trees(grids, *, alpha: float = 10.0, tau_max: float = 1.0, compat: str = DEFAULT_COMPAT,
               solver: str = "auto", num_thresholds: int = NUM_THRESHOLDS, graph_backend: str = "auto",
               num_threads: int = 1) -> list:
    """The trees of several host feature grids, as ``[ncut_tree(f, ...) for f in grids]``, the grids that take the
    native core solved in one call on ``num_threads`` threads.

    Each grid's backend is chosen as :func:`ncut_tree` chooses it (``graph_backend``); those that resolve to
    ``native`` are built together by the C++ core's thread pool (one grid per thread at a time; SciPy's OpenBLAS
    runs single-threaded meanwhile, :func:`~.native.single_threaded_blas`), the others one by one. Same trees
    as one call per grid, in the grids' order. Device grids go to :func:`ncut_tree` one by one (the batched
    device path is :func:`~diffcut_engine.graph.device.device_ncut_trees`).

    Parameters
    ----------
    grids : sequence of array_like
        (h_i, w_i, C) feature grids (sizes may differ).
    num_threads : int, default 1
        Threads of the native batch (>= 1), each grid on one of them: the call uses exactly that many threads (with
        1, none of the core's helper threads either; a lone :func:`ncut_tree` call uses them).
    Other parameters as :func:`ncut_tree`.

    Returns
    -------
    list of NCutTree
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise InputError(f"num_threads must be an int >= 1, got {num_threads!r}")
    grids = list(grids)
    trees = [None] * len(grids)
    native_at, native_grids = [], []
    for i, f in enumerate(grids):
        try:
            if not is_device(f) and resolve_graph_backend(graph_backend, on_device=False, compat=compat,
                                                          solver=solver, num_tokens=_num_tokens(f)) == "native":
                native_at.append(i)
                native_grids.append(f)
            else:
                trees[i] = ncut_tree(f, alpha=alpha, tau_max=tau_max, compat=compat, solver=solver,
                                     num_thresholds=num_thresholds, graph_backend=graph_backend)
        except InputError as exc:  # (which grid of the batch)
            raise InputError(f"grids[{i}]: {exc}") from exc
    if native_grids:
        tau_max = check_options(tau_max, compat, solver, num_thresholds, name="tau_max")
        alpha = check_alpha(alpha)
        tokens, shapes = zip(*(as_token_matrix(f, name=f"grids[{i}]: features") for i, f in zip(native_at,
                                                                                                    native_grids)))
        built = native_trees(list(tokens), list(shapes), alpha=alpha, tau_max=tau_max, compat=compat,
                             num_thresholds=num_thresholds, solver=solver, num_threads=int(num_threads),
                             normalize=True)  # (each grid normalised by the core, on its thread)
        for i, tree in zip(native_at, built):
            trees[i] = tree
    return trees


def recursive_ncut(features, *, alpha: float = 10.0, tau: float = 0.5, compat: str = DEFAULT_COMPAT,
                   solver: str = "auto", num_thresholds: int = NUM_THRESHOLDS,
                   graph_backend: str = "auto") -> np.ndarray:
    """Segment a feature grid by DiffCut's recursive two-way Normalized Cut.

    The affinity is W = ((S - min S) / (max S - min S)) ** alpha with S the cosine similarity of the L2-normalised
    tokens (dense, self-loops included). Starting from the whole graph, each subgraph is split at the best of
    ``num_thresholds`` thresholds on its Fiedler vector y = D^-1/2 u2 (degrees recomputed inside the subgraph),
    scored by exact NCut; the split is accepted while that NCut is below ``tau``, and the recursion visits the
    "1"-side (the side of the largest |y|) before the "0"-side. Each leaf becomes one segment.

    Parameters
    ----------
    features : array_like
        (h, w, C) feature grid, float. NaN or infinite values are rejected.
    alpha : float, default 10
        Affinity exponent (the paper's value for every dataset).
    tau : float, default 0.5
        Accept a split while its NCut < tau; larger gives more segments. Paper: 0.5 with SSD-1B, 0.2 with SD1.4.
    compat : {"official", "official-float32", "clean"}, default "official"
        ``official`` (the default, the partitions the published numbers come from): the official code's
        zero-row rule, as a rule on index sets: below the root, a node whose row of the float32 W contains an
        exact zero (always the globally least similar pair; also entries that underflow for large alpha) is
        left out of every later subgraph and so keeps the label path it had at the root's split; solved on the
        fast float64 path (certified iterative solvers, binned scoring, leaf bounds). ``official-float32``: the
        same rule with the official arithmetic itself, float32 solves with a full ``syevd`` as
        ``torch.linalg.eigh`` does and float32 indicator scoring (slow; for reproduction studies).
        Bit-for-bit agreement with a float32 run needs that mode: where the official float32 eigensolve puts
        a node within its rounding (~1e-6 relative) of a threshold, the float64 solve can put it on the other
        side (see docs/ALGORITHM.md for how often). ``clean``: plain index sets, every node of a side stays in
        its subgraph (no zero-row rule), float64.
    solver : {"auto", "dense", "full", "lobpcg", "lanczos"}, default "auto"
        Fiedler-vector solver (see :mod:`diffcut_engine.graph.eigen`); every solver gives the dense solve's
        split. ``compat="official-float32"`` uses ``full`` unless another is named.
    num_thresholds : int, default 100
        Candidate thresholds per split.
    graph_backend : {"auto", "native", "numpy", "cupy"}, default "auto"
        ``native``: the C++ core (``diffcut_engine._native``, built by the package install; the dense solver,
        ``compat`` ``official`` or ``clean``); ``numpy``: this module's host path; ``cupy``: the device path.
        ``auto``: ``cupy`` for device features, else ``native`` when it is built and applies (see
        :func:`~diffcut_engine.graph.native.resolve_graph_backend`: grids up to 128 x 128 tokens), else
        ``numpy``. The backends give the same partitions and label ids.

    Returns
    -------
    numpy.ndarray
        (h, w) int32 labels numbered 0..K-1 in the order of the official ``assemble_clusters`` (ranked by the
        leaves' membership in the accepted "1"-sides, latest split most significant). One segment if no split is
        accepted or all features are identical.

    Raises
    ------
    InputError
        On a wrong shape, NaN/inf features, a non-positive alpha or tau, or an unknown compat mode.

    References
    ----------
    .. [1] P. Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features",
       NeurIPS 2024, arXiv:2406.02842.
    .. [2] J. Shi and J. Malik, "Normalized Cuts and Image Segmentation", TPAMI 2000.
    """
    tau = check_tau(tau)  # (named as the caller named it)
    return ncut_tree(features, alpha=alpha, tau_max=tau, compat=compat, solver=solver,
                     num_thresholds=num_thresholds, graph_backend=graph_backend).cut(tau)
