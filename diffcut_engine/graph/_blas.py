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
import math
import os
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


_single = {"depth": 0, "previous": None, "shared": None}


def share_blas_guard(enter, exit_) -> None:
    """Make :func:`single_threaded_blas` take the C++ core's counted guard (``enter()`` / ``exit_()``), so that one
    count covers the blocks of both (the core's own calls take it too): without it, one side could restore the
    thread count while the other's single-threaded calls still run. Called by :mod:`.native` once the extension
    is bound."""
    with _blas_lock:
        _single["shared"] = (enter, exit_)


@contextlib.contextmanager
def single_threaded_blas(enabled: bool = True):
    """Within the block, SciPy's OpenBLAS runs single-threaded (a no-op where its thread control is not found or
    ``enabled`` is false). For the native batch: several grids on the core's threads would otherwise each start
    OpenBLAS's threads on the same cores (measured 0.52x the one-thread throughput for 8 grids of 32x32 on 2 cores,
    against 1.87x single-threaded). The setting is process-wide while a block runs; overlapping blocks (other
    threads') are counted, and the thread count is restored when the last one ends (the C++ core's guard does the
    same for its own calls)."""
    if not enabled:
        yield
        return
    shared = _single["shared"]
    if shared is not None:
        enter, exit_ = shared
        enter()
        try:
            yield
        finally:
            exit_()
        return
    controls = blas_thread_controls()
    if controls is None:
        yield
        return
    get, set_ = controls
    with _blas_lock:
        if _single["depth"] == 0:
            _single["previous"] = int(get())
            set_(1)
        _single["depth"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _single["depth"] -= 1
            if _single["depth"] == 0:
                set_(_single["previous"])


#: From this many tokens on, :func:`gram_lower` computes the Gram matrix in two bands (``kBandMinRows`` of the C++
#: core, csrc/src/affinity.cpp).
GRAM_BAND_MIN_ROWS = 256

#: Work (n^2 c) from which :func:`gram_lower` runs its two bands on two threads (the same calls either way).
_GRAM_THREADED_MIN_WORK = 1 << 24

_INT = ctypes.POINTER(ctypes.c_int)
_FLOAT = ctypes.POINTER(ctypes.c_float)
_CHAR = ctypes.c_char_p
_gram_fns = {}


def _gram_functions():
    """ctypes callers of SciPy's ``ssyrk`` and ``sgemm`` (the functions the core is bound to; a ctypes call releases
    the GIL)."""
    if not _gram_fns:
        addr = scipy_blas_addresses()
        syrk = ctypes.CFUNCTYPE(None, _CHAR, _CHAR, _INT, _INT, _FLOAT, ctypes.c_void_p, _INT, _FLOAT,
                                ctypes.c_void_p, _INT)(addr["ssyrk"])
        gemm = ctypes.CFUNCTYPE(None, _CHAR, _CHAR, _INT, _INT, _INT, _FLOAT, ctypes.c_void_p, _INT,
                                ctypes.c_void_p, _INT, _FLOAT, ctypes.c_void_p, _INT)(addr["sgemm"])
        _gram_fns.update(syrk=syrk, gemm=gemm)
    return _gram_fns["syrk"], _gram_fns["gemm"]


def gram_band_split(n: int) -> int:
    """The first row of :func:`gram_lower`'s second band for ``n`` >= :data:`GRAM_BAND_MIN_ROWS` tokens: about
    equal areas (floor(n / sqrt 2), rounded down to a multiple of 64), as the core computes it."""
    r = int(float(n) / math.sqrt(2.0))
    return r - r % 64


def gram_lower(x: np.ndarray, out: np.ndarray) -> None:
    """``out``'s lower triangle (diagonal included; the rest is left as it was) = X X^T of the C-ordered (n, c)
    float32 ``x``, into the C-ordered (n, n) float32 ``out``.

    The floats of an OpenBLAS call depend on how the call is split over threads and blocks (its micro-kernel's
    edge paths sum in another order, and a call made while another thread's call runs may go single-threaded),
    so the result is defined by a fixed set of calls, each running single-threaded (:func:`single_threaded_blas`):
    below :data:`GRAM_BAND_MIN_ROWS` rows one ``ssyrk``; from there two bands, rows [0, r) by ``ssyrk``, rows
    [r, n) by ``sgemm`` against rows [0, r) and then ``ssyrk`` (r = :func:`gram_band_split`), run on two threads
    where the work is large enough. The C++ core makes the same calls (csrc/src/affinity.cpp, ``gram_lower``), so
    its affinities are the numpy path's bit for bit on every CPU and at every thread count."""
    n, c = x.shape
    if n == 0:
        return
    if n > 46340 or c > 2**31 - 1:
        raise ValueError("too many tokens for a dense affinity")
    syrk, gemm = _gram_functions()
    ref = ctypes.byref
    xp, base, item = x.ctypes.data, out.ctypes.data, out.itemsize
    ci, ld = ctypes.c_int(c), ctypes.c_int(n)
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def diag(r0, r1):  # rows [r0, r1) against themselves: out's diagonal block
        rows = ctypes.c_int(r1 - r0)
        syrk(b"U", b"T", ref(rows), ref(ci), ref(one), xp + r0 * c * item, ref(ci), ref(zero),
             base + (r0 * n + r0) * item, ref(ld))

    def bottom(r):  # rows [r, n): against rows [0, r), then against themselves
        rows, cols = ctypes.c_int(r), ctypes.c_int(n - r)
        gemm(b"T", b"N", ref(rows), ref(cols), ref(ci), ref(one), xp, ref(ci), xp + r * c * item, ref(ci),
             ref(zero), base + r * n * item, ref(ld))
        diag(r, n)

    with single_threaded_blas():
        if n < GRAM_BAND_MIN_ROWS:
            diag(0, n)
            return
        r = gram_band_split(n)
        if n * n * c < _GRAM_THREADED_MIN_WORK or _cpus() < 2:
            diag(0, r)
            bottom(r)
            return
        errors = []

        def top():
            try:
                diag(0, r)
            except BaseException as exc:  # pragma: no cover - re-raised below
                errors.append(exc)

        helper = threading.Thread(target=top, name="diffcut-gram", daemon=True)
        helper.start()
        try:
            bottom(r)
        finally:
            helper.join()
        if errors:
            raise errors[0]


def _cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
