"""The native graph backend: the C++ core (``csrc/``), built by the package install as ``diffcut_engine._native``.

It runs the same recursion as :mod:`.host`: L2 normalisation here (numpy), then in C++ the affinity (ssyrk,
min-max, power), the zero-row rule of ``compat="official"``, the Fiedler vector (``solver="dense"``: LAPACK
``dsyevr`` per subgraph; ``"auto"``: as :func:`~diffcut_engine.graph.eigen.fiedler_vector`'s, dense up to 192
nodes, above the certified Lanczos, then the certified block Krylov where Lanczos cannot certify (first, once
Lanczos failed in the tree), then dense), the 100 thresholds scored from bin sums, pre-order. The extension links
no BLAS: it is bound here to SciPy's own ``ssyrk``, ``dsyevr``, ``dsymv``, ``dgemm``, ``sgemm`` and ``dstemr``
(``scipy.linalg.cython_blas`` / ``cython_lapack``), the functions the numpy path calls (the Gram matrix by the
numpy path's fixed single-threaded calls, :func:`._blas.gram_lower`, from 256 tokens in two bands on two threads;
the Krylov products by the core's own float64 kernels on W's float32 values, which the numpy path widens first),
and its floating-point operations follow the numpy code's order, so with ``solver="dense"`` the trees are the numpy
dense path's bit for bit; with ``"auto"`` both backends' vectors are certified within 1e-6 of the dense one
(tests/test_native.py compares partitions and label ids). Selection: :func:`resolve_graph_backend`.
"""

from __future__ import annotations

import importlib
import threading

import numpy as np

from ..errors import BackendUnavailableError, InputError
from . import memory
from ._blas import (  # noqa: F401 (re-exported)
    blas_thread_controls, scipy_blas_addresses, share_blas_guard, single_threaded_blas,
)
from .affinity import MAX_SQUARING_EXPONENT, affinity_from_tokens, l2_normalize
from .eigen import validate_solver
from .tree import NCutNode, NCutTree
from .validation import check_compat, check_graph_backend
#: ``auto`` takes the native backend up to this many tokens (128 x 128). The core measured 1.8-2.7x faster than the
#: numpy path with the fused affinity pass at 80 x 80 and 1.8-9.8x at 96 x 96, 128 x 96 and 128 x 128 on the
#: hierarchical, nearly disconnected, photo and lite-feature families, the same labels everywhere (``python
#: benchmarks/bench_native.py --grids 80,96,128x96,128 --against auto --pause 0.3``, benchmarks/RESULTS.md); it
#: also needs half the memory (W and the subgraphs' matrices in float32). Larger grids were not measured.
NATIVE_AUTO_MAX_TOKENS = 16384
#: compat modes the native core implements.
NATIVE_COMPAT = ("official", "clean")
# the extension beside this package ("diffcut_engine._native"; another name where the package is imported under
# one, e.g. benchmarks/bench_graph.py --baseline, so that each checkout runs its own core)
NATIVE_MODULE = __name__.rsplit(".", 2)[0] + "._native"

_lock = threading.Lock()
_loaded = {"module": None, "error": None}


def _load():
    with _lock:
        if _loaded["module"] is None and _loaded["error"] is None:
            try:
                # (an optional compiled module: loaded by name, absent where the install had no C++ compiler)
                module = importlib.import_module(NATIVE_MODULE)
            except ModuleNotFoundError as exc:
                if exc.name != NATIVE_MODULE:
                    raise
                _loaded["error"] = "the C++ extension diffcut_engine._native is not built"
            else:
                blas = scipy_blas_addresses()
                module.bind_lapack(blas["ssyrk"], blas["dsyevr"], blas["dsymv"])
                module.bind_dgemm(blas["dgemm"])
                module.bind_sgemm(blas["sgemm"])
                module.bind_dstemr(blas["dstemr"])
                # one count of single-threaded-BLAS blocks for the numpy path's and the core's (the Gram matrix)
                share_blas_guard(module.blas_single_thread_enter, module.blas_single_thread_exit)
                _loaded["module"] = module
        return _loaded["module"]


def native_available() -> bool:
    """Whether the native graph backend is built (and bound to SciPy's BLAS/LAPACK)."""
    return _load() is not None


def require_native():
    """The bound extension module; :class:`BackendUnavailableError` with a one-line reason if it is not built."""
    module = _load()
    if module is None:
        raise BackendUnavailableError(
            "graph_backend='native' needs the C++ extension diffcut_engine._native, which is not built: reinstall "
            "with a C++17 compiler available (pip install -e . or pip install diffcut-engine from the sdist)")
    return module


def scratch_cached_bytes() -> int:
    """Bytes of free scratch blocks the native core keeps for the calling thread and its helper threads (0 where it
    is not built).

    The core's large temporaries (a grid's affinity and its subgraphs' matrices, W's float32 values: about 130 MB
    at 64 x 64, up to about 2 GB at 128 x 128) come from a per-thread cache, as :mod:`.memory`'s for the numpy path,
    so that the next image does not fault in fresh pages; the same limit applies per thread
    (``DIFFCUT_GRAPH_CACHE_MB``, default 1024; 0 turns it off). Batches (:func:`~.ncut.ncut_trees` with
    ``num_threads > 1``) run their grids on the calling thread and the core's helper threads, which keep their
    caches between calls too.
    """
    module = _load()
    return 0 if module is None else int(module.scratch_cached_bytes())


def release_scratch() -> None:
    """Free the native core's cached scratch blocks of the calling thread and of its helper threads (nothing where
    it is not built)."""
    module = _load()
    if module is not None:
        module.release_scratch()


def resolve_graph_backend(backend: str, *, on_device: bool, compat: str, solver: str, num_tokens: int) -> str:
    """The concrete backend (``native``, ``numpy`` or ``cupy``) that ``backend`` stands for.

    ``auto``: ``cupy`` for device features; on the host ``native`` when it is built, the compat mode is one it
    implements, the solver is ``auto`` or ``dense`` and the grid has at most :data:`NATIVE_AUTO_MAX_TOKENS` tokens;
    else ``numpy``. ``native`` is checked here: :class:`BackendUnavailableError` if it is not built,
    :class:`InputError` for a compat mode or solver it does not implement.
    """
    check_graph_backend(backend)
    if backend == "auto":
        if on_device:
            return "cupy"
        if (compat in NATIVE_COMPAT and solver in ("auto", "dense") and num_tokens <= NATIVE_AUTO_MAX_TOKENS
                and native_available()):
            return "native"
        return "numpy"
    if backend == "native":
        require_native()
        check_compat(compat)  # an unknown mode is named as such, not as one the core lacks
        if compat not in NATIVE_COMPAT:
            raise InputError(f"graph_backend='native' supports compat {' and '.join(NATIVE_COMPAT)}, "
                             f"not {compat!r}")
        validate_solver(solver)  # an unknown solver is named as such, not as one the core lacks
        if solver not in ("auto", "dense"):
            raise InputError(f"graph_backend='native' has the solvers solver='auto' or 'dense', not {solver!r}")
    return backend


def tree_from_arrays(arrays, shape, tau_max: float, compat: str) -> NCutTree:
    """An :class:`NCutTree` from the extension's flat node arrays."""
    indices, offsets, depth, value, one, zero, exact = arrays
    nodes = [NCutNode(indices[offsets[i]:offsets[i + 1]].astype(np.intp), int(depth[i]), float(value[i]),
                      exact=bool(exact[i])) for i in range(depth.size)]
    for i, node in enumerate(nodes):
        if one[i] >= 0:
            node.one, node.zero = nodes[one[i]], nodes[zero[i]]
    return NCutTree(nodes[0], shape, tau_max, compat)


def core_power_matches(alpha: float) -> bool:
    """Whether the core's power gives numpy's floats: an integer ``alpha`` in [1, 64], raised by binary powering in
    both (the same float32 products). Any other exponent is ``np.power`` in the numpy path, numpy's own routine
    (SIMD where the CPU has it), which the core's ``std::pow`` does not reproduce bit for bit."""
    return float(alpha).is_integer() and 1 <= alpha <= MAX_SQUARING_EXPONENT


def _affinity_for_core(tokens: np.ndarray, alpha: float) -> np.ndarray:
    """W of L2-normalised tokens in float32 by the numpy path (for the exponents :func:`core_power_matches` rejects:
    the core then builds the tree on numpy's W, so the labels stay the numpy path's)."""
    return affinity_from_tokens(tokens, float(alpha), dtype=np.float32)


def native_tree(tokens: np.ndarray, grid, *, alpha: float, tau_max: float, compat: str,
                num_thresholds: int, solver: str = "auto", normalize: bool = False) -> NCutTree:
    """The tree of L2-normalised (N, C) float32 tokens (validated options) by the C++ core (on numpy's affinity for
    an exponent whose power the core does not reproduce, :func:`core_power_matches`). ``normalize``: the tokens
    are raw (finite) and the core normalises them, :func:`.affinity.l2_normalize`'s float32 values bit for bit
    (its ``row_norm`` is :func:`.affinity.row_norms`), in its warm scratch memory and on the image's thread."""
    tokens = np.ascontiguousarray(tokens, dtype=np.float32)
    if not core_power_matches(alpha):
        if normalize:
            tokens = l2_normalize(tokens)
        return native_tree_affinity(_affinity_for_core(tokens, alpha), tau_max=tau_max, compat=compat,
                                    num_thresholds=num_thresholds, shape=grid, solver=solver)
    arrays = require_native().tree_from_tokens(tokens, float(alpha), float(tau_max), compat, int(num_thresholds),
                                               solver, bool(normalize))
    return tree_from_arrays(arrays, grid, tau_max, compat)


def native_trees(tokens_list, grids, *, alpha: float, tau_max: float, compat: str, num_thresholds: int,
                 solver: str = "auto", num_threads: int = 1, normalize: bool = False) -> list:
    """The trees of several grids' L2-normalised (N_i, C) float32 tokens (validated options) by the C++ core, the
    images spread over ``num_threads`` threads (each image on one thread; with more than one, SciPy's OpenBLAS
    runs single-threaded during the call, :func:`single_threaded_blas`)."""
    if not core_power_matches(alpha):  # numpy's affinities (see native_tree), the trees one after the other
        return [native_tree(t, g, alpha=alpha, tau_max=tau_max, compat=compat, num_thresholds=num_thresholds,
                            solver=solver, normalize=normalize) for t, g in zip(tokens_list, grids)]
    tokens_list = [np.ascontiguousarray(t, dtype=np.float32) for t in tokens_list]
    module = require_native()
    threads = max(1, min(int(num_threads), len(tokens_list)))  # (one image per thread: more would idle)
    with single_threaded_blas(threads > 1):
        arrays = module.trees_from_tokens(tokens_list, float(alpha), float(tau_max), compat, int(num_thresholds),
                                          solver, threads, bool(normalize))
    return [tree_from_arrays(a, g, tau_max, compat) for a, g in zip(arrays, grids)]


def float32_affinity(W: np.ndarray) -> np.ndarray:
    """A validated (N, N) affinity as the core's float32 values (C-ordered).

    Raises
    ------
    InputError
        If rounding to float32 would change the graph itself: a value beyond float32's range (it would become
        infinite) or a positive value below it (it would become 0 and drop an edge, or change which rows the
        zero-row rule of ``compat="official"`` drops).
    """
    with np.errstate(over="ignore"):  # (overflow is reported below, as an InputError)
        W32 = np.ascontiguousarray(W, dtype=np.float32)
    if W32.dtype != W.dtype:
        if not np.all(np.isfinite(W32)):
            raise InputError(f"graph_backend='native' works on float32 affinities and this {W.dtype} affinity has "
                             f"values beyond float32's range (max {float(np.max(W)):.3g}); scale it, or use "
                             "graph_backend='numpy'")
        if np.any((W32 == 0) & (W != 0)):
            raise InputError(f"graph_backend='native' works on float32 affinities and this {W.dtype} affinity has "
                             f"non-zero values below float32's range (min non-zero "
                             f"{float(np.min(W[W != 0])):.3g}), which would become zeros; scale it, or use "
                             "graph_backend='numpy'")
    return W32


def native_tree_affinity(W: np.ndarray, *, tau_max: float, compat: str, num_thresholds: int,
                         shape=None, solver: str = "auto") -> NCutTree:
    """The tree of a validated (N, N) affinity by the C++ core, on its float32 values (:func:`float32_affinity`)."""
    W = float32_affinity(W)
    arrays = require_native().tree_from_affinity(W, float(tau_max), compat, int(num_thresholds), solver)
    return tree_from_arrays(arrays, shape or (W.shape[0],), tau_max, compat)


def native_affinity(tokens: np.ndarray, alpha: float) -> np.ndarray:
    """W of L2-normalised (N, C) float32 tokens by the C++ core (as :func:`.affinity.affinity_from_tokens`)."""
    return require_native().affinity(np.ascontiguousarray(tokens, dtype=np.float32), float(alpha))


#: Grids from this many tokens take the fused affinity pass in ``graph_backend="auto"`` (smaller ones take the
#: native core as a whole, or are too small for the pass to matter).
FUSED_AFFINITY_MIN_TOKENS = 1024


def fused_affinity_applies(alpha: float, num_tokens: int) -> bool:
    """Whether :func:`native_affinity_widened` serves the host path's float64 affinity: the extension is built,
    ``alpha`` is an integer the numpy path raises by binary powering (the same float32 products; ``np.power`` for
    other exponents is numpy's own SIMD routine, which a C++ ``powf`` does not reproduce bit for bit), and the
    grid is large enough for the pass to matter (:data:`FUSED_AFFINITY_MIN_TOKENS`)."""
    return num_tokens >= FUSED_AFFINITY_MIN_TOKENS and core_power_matches(alpha) and native_available()



def native_affinity_widened(tokens: np.ndarray, alpha: float):
    """``(W, zero_row)``: the host path's float64 affinity of L2-normalised (N, C) float32 tokens and its zero-row
    mask, by one fused C++ pass over the Gram matrix's lower triangle (scaling, power, mirror, widening and the
    exact-zero scan together, on a few threads).

    The values are :func:`~.affinity.affinity_from_tokens` ``(tokens, alpha, dtype=float64)``'s bit for bit and the
    mask is :func:`~.host.zero_row_mask`'s (tests/test_native.py); ``W`` comes from :mod:`.memory` (the caller
    owns it and gives it back). ``alpha`` must satisfy :func:`fused_affinity_applies`.
    """
    tokens = np.ascontiguousarray(tokens, dtype=np.float32)
    n = tokens.shape[0]
    module = require_native()
    scratch = memory.empty((n, n), np.float32)
    W = memory.empty((n, n), np.float64)
    zero_row = np.empty(n, np.uint8)
    try:
        module.affinity_widened(tokens, float(alpha), scratch.reshape(-1), W, zero_row)
    except BaseException:
        memory.give_back(W)
        raise
    finally:
        memory.give_back(scratch)
    return W, zero_row.view(bool)
