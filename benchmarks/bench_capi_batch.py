"""Throughput of the C API's batch (``diffcut_tree_build_batch``) on 1 thread vs 2, through a CMake-built libdiffcut.

The C library runs an OpenBLAS behind it single-threaded while a batch runs its images on several threads
(``csrc/src/lapack.h``, ``SingleThreadedBlas``); ``--blas-threads N`` sets the OpenBLAS thread count the process
starts from (``openblas_set_num_threads`` of the library libdiffcut links, looked up in the same way), so that both
the guarded default and a single-threaded process can be timed.

    wheel=$(python -c "import scipy_openblas32, os; print(os.path.dirname(scipy_openblas32.__file__))")
    cmake -S csrc -B build -DDIFFCUT_SCIPY_OPENBLAS=$wheel
    cmake --build build -j
    python benchmarks/bench_capi_batch.py --lib build/libdiffcut.so --grids 24,32 --batch 8

The C API's batch takes one channel count for all its images, so each batch holds one feature family
(``--families``, default ``lab,filters``: the photo features of bench_graph's ``photos`` cases, 8 and 13 channels), its
photos repeated up to ``--batch`` grids. Rounds alternate 1 and 2 threads; reported per family and grid: the best time
of each, the throughput ratio, whether the label maps (tau 0.5) of the two runs are equal and, where the Python
extension is built, whether they are the Python engine's (``graph.ncut_trees``, same grids).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_graph import parse_grid  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def load(lib_path: str):
    lib = ctypes.CDLL(os.path.abspath(lib_path))
    lib.diffcut_options_new.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.diffcut_options_set_tau_max.argtypes = [ctypes.c_void_p, ctypes.c_double]
    lib.diffcut_options_free.argtypes = [ctypes.c_void_p]
    lib.diffcut_tree_build_batch.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64),
                                             ctypes.POINTER(ctypes.c_int64), ctypes.c_int64, ctypes.c_int64,
                                             ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.diffcut_tree_cut.argtypes = [ctypes.c_void_p, ctypes.c_double, ctypes.POINTER(ctypes.c_int32),
                                     ctypes.c_int64, ctypes.POINTER(ctypes.c_int32)]
    lib.diffcut_tree_free.argtypes = [ctypes.c_void_p]
    lib.diffcut_last_error.restype = ctypes.c_char_p
    return lib


def openblas_controls(lib):
    """(get, set) of the OpenBLAS libdiffcut links, found among the process's loaded libraries, or None."""
    for name in ("scipy_openblas", "openblas"):
        get, set_ = getattr(lib, name + "_get_num_threads", None), getattr(lib, name + "_set_num_threads", None)
        if get is not None and set_ is not None:
            get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
            return get, set_
    return None


def build_batch(lib, grids, threads, tau=0.5):
    count = len(grids)
    c = grids[0].shape[2]
    for i, g in enumerate(grids):
        if g.ndim != 3 or g.shape[2] != c or g.dtype != np.float32 or not g.flags.c_contiguous:
            raise ValueError(f"grid {i}: the C API batch takes C-contiguous float32 (h, w, {c}) grids (one channel "
                             f"count for all), got {g.dtype} {g.shape}")
    feats = (ctypes.c_void_p * count)(*[g.ctypes.data for g in grids])
    hs = (ctypes.c_int64 * count)(*[g.shape[0] for g in grids])
    ws = (ctypes.c_int64 * count)(*[g.shape[1] for g in grids])
    out = (ctypes.c_void_p * count)()
    opts = ctypes.c_void_p()
    assert lib.diffcut_options_new(ctypes.byref(opts)) == 0
    lib.diffcut_options_set_tau_max(opts, tau)
    start = time.perf_counter()
    code = lib.diffcut_tree_build_batch(feats, hs, ws, c, count, opts, threads, out)
    seconds = time.perf_counter() - start
    lib.diffcut_options_free(opts)
    if code != 0:
        raise RuntimeError(lib.diffcut_last_error().decode())
    labels = []
    for i, g in enumerate(grids):
        buf = np.empty(g.shape[0] * g.shape[1], np.int32)
        assert lib.diffcut_tree_cut(out[i], tau, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), buf.size,
                                    None) == 0
        labels.append(buf)
        lib.diffcut_tree_free(out[i])
    return seconds, labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", required=True, help="path of the CMake-built libdiffcut shared library")
    ap.add_argument("--grids", default="24,32")
    ap.add_argument("--families", default="lab,filters", help="comma-separated feature families, one batch each")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--blas-threads", type=int, default=0, help="OpenBLAS threads to start from (0: as loaded)")
    args = ap.parse_args(argv)
    from realistic import FAMILIES  # tests/realistic.py: the photo features of bench_graph

    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    try:
        from diffcut_engine import graph
        from diffcut_engine.graph import native
        python_engine = graph if native.native_available() else None
    except ImportError:
        python_engine = None
    lib = load(args.lib)
    controls = openblas_controls(lib)
    if args.blas_threads and controls is not None:
        controls[1](args.blas_threads)
    print(f"OpenBLAS threads at the start: {controls[0]() if controls else 'unknown (not found)'}")
    print(f"{'family':8s} {'grid':7s} {'batch':>5s} {'1 thread s':>11s} {'2 threads s':>12s} {'throughput x':>13s}  "
          f"same labels  Python engine's")
    for spec in args.grids.split(","):
        h, w = parse_grid(spec)
        for family in families:
            cases = [FAMILIES[family](photo, h, w) for photo in PHOTOS]
            grids = [np.ascontiguousarray(cases[i % len(cases)], dtype=np.float32) for i in range(args.batch)]
            build_batch(lib, grids, 1)  # warm-up
            best = {1: np.inf, 2: np.inf}
            labels = {}
            for r in range(args.repeats):
                for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
                    seconds, labels[threads] = build_batch(lib, grids, threads)
                    best[threads] = min(best[threads], seconds)
            same = all(np.array_equal(a, b) for a, b in zip(labels[1], labels[2]))
            if python_engine is not None:
                trees = python_engine.ncut_trees(grids, alpha=10.0, tau_max=0.5)
                pythons = str(all(np.array_equal(a, t.cut(0.5).ravel()) for a, t in zip(labels[1], trees)))
            else:
                pythons = "(extension not built)"
            print(f"{family:8s} {spec:7s} {args.batch:5d} {best[1]:11.4f} {best[2]:12.4f} {best[1] / best[2]:13.2f}  "
                  f"{str(same):11s}  {pythons}")
        if controls is not None:
            print(f"        OpenBLAS threads after the calls: {controls[0]()}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    raise SystemExit(main())
