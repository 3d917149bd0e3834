"""The C++ core's products with float32-stored affinity matrices against SciPy's BLAS on the widened copy.

The Krylov solvers' cost at large grids is their products with the subgraph's matrix. The numpy path (and the core
before 2026-12-07) widens W to float64 and calls ``dsymv`` (Lanczos, one triangle: 8 bytes per stored value) and
``dgemm`` (block Krylov, 8 vectors); the core now keeps W's float32 values and multiplies in float64 with its own
kernels (``csrc/src/matvec.*``: the lower triangle for ``A x``, full rows for ``X A``; AVX-512/AVX2/baseline variants,
row ranges on up to four threads). Both compute float64 products of the same values; the ratio is the speed-up per
product. Each kernel is timed in its own block after a pause (OpenBLAS's workers spin for a while after a call, on
the cores the core's threads use), blocks alternated, medians.

    python benchmarks/bench_products.py [--sizes 1024,2048,4096] [--repeats 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def timed(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,4096")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="alternated blocks per kernel (the best block is kept)")
    ap.add_argument("--pause", type=float, default=0.3)
    args = ap.parse_args(argv)
    from scipy.linalg import blas

    from diffcut_engine.graph import native

    module = native.require_native()
    print(f"{'m':>6s} {'dsymv ms':>9s} {'core A x ms':>12s} {'ratio':>6s} {'dgemm(8) ms':>12s} {'core X A ms':>12s} "
          f"{'ratio':>6s}  max rel. difference")
    for m in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(m)
        a = rng.random((m, m), dtype=np.float32)
        A32 = np.tril(a) + np.tril(a, -1).T
        A64 = np.asfortranarray(A32.astype(np.float64))
        x = rng.standard_normal(m)
        X = rng.standard_normal((8, m))
        XT = np.asfortranarray(X.T)
        kernels = {
            "dsymv": lambda: blas.dsymv(1.0, A64, x, lower=1),
            "symv": lambda: module.symv_lower_f32(A32, x),
            "dgemm": lambda: blas.dgemm(1.0, A64, XT),
            "rows": lambda: module.rows_times_f32(A32, X),
        }
        best = {k: float("inf") for k in kernels}
        for _ in range(args.rounds):
            for name, fn in kernels.items():
                time.sleep(args.pause)
                best[name] = min(best[name], timed(fn, args.repeats))
        ref_y, ref_Y = blas.dsymv(1.0, A64, x, lower=1), blas.dgemm(1.0, A64, XT).T
        diff = max(float(np.max(np.abs(module.symv_lower_f32(A32, x) - ref_y) / (np.abs(A64) @ np.abs(x)))),
                   float(np.max(np.abs(module.rows_times_f32(A32, X) - ref_Y) / (np.abs(X) @ np.abs(A64)))))
        ms = {k: v * 1e3 for k, v in best.items()}
        print(f"{m:6d} {ms['dsymv']:9.3f} {ms['symv']:12.3f} {ms['dsymv'] / ms['symv']:6.2f} {ms['dgemm']:12.3f} "
              f"{ms['rows']:12.3f} {ms['dgemm'] / ms['rows']:6.2f}  {diff:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
