"""The host graph stage's dense products, all through one BLAS library (SciPy's).

NumPy and SciPy wheels each bundle their own OpenBLAS, each with its own thread pool, and an OpenBLAS worker
spins for a while after a call before it sleeps. Alternating the two libraries (SciPy's ``ssyrk`` for the Gram
matrix and LAPACK for dense solves, NumPy's ``@`` for the Lanczos products) therefore leaves one library's idle
workers spinning on the cores the other needs; on a 2-core machine that slowed the matrix-vector products
several-fold in A/B runs against the mixed version (not kept as a script). So every product on the hot path goes
through ``scipy.linalg.blas`` here, and only BLAS-free NumPy (element-wise operations, reductions, gathers) is used
beside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading

import numpy as np
from scipy.linalg import blas as _blas

_GEMV = {np.dtype(np.float64): _blas.dgemv, np.dtype(np.float32): _blas.sgemv}
_GEMM = {np.dtype(np.float64): _blas.dgemm, np.dtype(np.float32): _blas.sgemm}
_SYMV = {np.dtype(np.float64): _blas.dsymv, np.dtype(np.float32): _blas.ssymv}


def _c(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _gemv(A: np.ndarray, x: np.ndarray, transpose: bool) -> np.ndarray:
    A = _c(A)
    gemv = _GEMV.get(A.dtype)
    if gemv is None or 0 in A.shape:
        return x @ A if transpose else A @ x
    # a C-ordered A is A.T in Fortran order: BLAS computes (A.T)^T x = A x with trans=1, A.T x with trans=0
    return gemv(1.0, A.T, np.asarray(x, dtype=A.dtype), trans=0 if transpose else 1)


def matvec(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A @ x`` for a 2-D float32/float64 ``A`` (C-ordered is copy-free) and a 1-D ``x`` of the same dtype."""
    return _gemv(A, x, transpose=False)


def rmatvec(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A.T @ x`` (equivalently ``x @ A``) for a 2-D ``A`` and a 1-D ``x``."""
    return _gemv(A, x, transpose=True)


def symv(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A @ x`` for a symmetric 2-D ``A``, by BLAS ``symv``: it reads one triangle (A's lower one), half the
    memory traffic of ``gemv``, which is what a matrix-vector product on a dense affinity is bound by."""
    A = _c(A)
    fn = _SYMV.get(A.dtype)
    if fn is None or 0 in A.shape:
        return A @ x
    # A.T is A's memory in Fortran order; symv reads its upper triangle, i.e. A's lower one
    return fn(1.0, A.T, np.asarray(x, dtype=A.dtype))


def project_out(Q: np.ndarray, w: np.ndarray) -> None:
    """``w -= Q.T @ (Q @ w)`` in place: one classical Gram-Schmidt pass of ``w`` against the rows of a
    C-ordered ``Q`` (orthonormal rows), as two ``gemv`` calls and no temporary of ``w``'s size."""
    gemv = _GEMV.get(Q.dtype)
    if gemv is None or w.dtype != Q.dtype or not (Q.flags.c_contiguous and w.flags.c_contiguous):
        w -= (Q @ w) @ Q
        return
    h = gemv(1.0, Q.T, w, trans=1)
    out = gemv(-1.0, Q.T, h, beta=1.0, y=w, overwrite_y=1, trans=0)
    if out is not w:  # (f2py copies only if w were unsuitable, which the checks above rule out)
        w[...] = out


def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` for 2-D C-ordered float32/float64 matrices of one dtype (a C-ordered result)."""
    A, B = _c(A), _c(B)
    gemm = _GEMM.get(A.dtype)
    if gemm is None or A.dtype != B.dtype or 0 in A.shape or 0 in B.shape:
        return A @ B
    # C = A B  <=>  C^T = B^T A^T, and a C-ordered matrix is its transpose in Fortran order
    return gemm(1.0, B.T, A.T).T


# ------------------------------------------------------------------------------------------------------------
# SciPy's BLAS: addresses (bound by the C++ core) and thread control
# ------------------------------------------------------------------------------------------------------------

_blas_lock = threading.Lock()


def _capsule_address(capsule) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return int(get_pointer(capsule, get_name(capsule)))


def scipy_blas_addresses() -> dict:
    """Addresses of SciPy's own ``ssyrk``, ``dsyevr``, ``dsymv``, ``dgemm``, ``sgemm`` and ``dstemr`` (the
    functions the numpy path calls), which the extension is bound to."""
    from scipy.linalg import cython_blas, cython_lapack

    return {"ssyrk": _capsule_address(cython_blas.__pyx_capi__["ssyrk"]),
            "dsyevr": _capsule_address(cython_lapack.__pyx_capi__["dsyevr"]),
            "dsymv": _capsule_address(cython_blas.__pyx_capi__["dsymv"]),
            "dgemm": _capsule_address(cython_blas.__pyx_capi__["dgemm"]),
            "sgemm": _capsule_address(cython_blas.__pyx_capi__["sgemm"]),
            "dstemr": _capsule_address(cython_lapack.__pyx_capi__["dstemr"])}


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p), ("dli_sname", ctypes.c_char_p),
                ("dli_saddr", ctypes.c_void_p)]


_blas_threads = {"looked": False, "get": None, "set": None}


def blas_thread_controls():
    """``(get, set)``: the thread-count functions of the OpenBLAS that SciPy's BLAS calls (the BLAS the native core
    is bound to), or ``None`` where they cannot be found (another BLAS, or no ``dladdr``). Looked up once: the
    shared object holding SciPy's ``dgemm`` is found by address (``dladdr``) and its dependencies searched for
    ``scipy_openblas_get_num_threads`` / ``openblas_get_num_threads`` and the matching setter."""
    with _blas_lock:
        if not _blas_threads["looked"]:
            _blas_threads["looked"] = True
            try:
                dl = ctypes.CDLL(None)
                if not hasattr(dl, "dladdr"):
                    dl = ctypes.CDLL("libdl.so.2")
                dl.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
                info = _DlInfo()
                if dl.dladdr(ctypes.c_void_p(scipy_blas_addresses()["dgemm"]), ctypes.byref(info)) and info.dli_fname:
                    lib = ctypes.CDLL(info.dli_fname.decode())
                    for prefix in ("scipy_openblas", "openblas"):
                        get = getattr(lib, prefix + "_get_num_threads", None)
                        set_ = getattr(lib, prefix + "_set_num_threads", None)
                        if get is not None and set_ is not None:
                            get.restype, get.argtypes = ctypes.c_int, []
                            set_.restype, set_.argtypes = None, [ctypes.c_int]
                            _blas_threads.update(get=get, set=set_)
                            break
            except OSError:  # no dladdr or the library cannot be reopened: leave the BLAS threads alone
                pass
    if _blas_threads["get"] is None:
        return None
    return _blas_threads["get"], _blas_threads["set"]


@contextlib.contextmanager
def single_threaded_blas(enabled: bool = True):
    """Within the block, SciPy's OpenBLAS runs single-threaded (restored after; a no-op where its thread control
    is not found or ``enabled`` is false). For the native batch: several grids on the core's threads would
    otherwise each start OpenBLAS's threads on the same cores (measured 0.52x the one-thread throughput for 8
    grids of 32x32 on 2 cores, against 1.87x single-threaded). The setting is process-wide while the block runs."""
    controls = blas_thread_controls() if enabled else None
    if controls is None:
        yield
        return
    get, set_ = controls
    previous = int(get())
    set_(1)
    try:
        yield
    finally:
        set_(previous)
