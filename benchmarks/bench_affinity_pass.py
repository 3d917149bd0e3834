"""The host path's float64 affinity: the C++ core's fused pass against the numpy passes, same process.

Above 32 x 32 tokens ``graph_backend="auto"`` runs the numpy recursion on a float64 ``W`` and its zero-row mask.
The numpy path builds them in passes over the whole matrix (ssyrk, mirror, min/max, scale and power chunk by chunk
into float64, then the zero-row scan); the fused pass (``graph.native.native_affinity_widened``) does the same
float32 operations tile by tile over the Gram matrix's lower triangle. Both call the same ssyrk (SciPy's BLAS), so
the difference is the pass after it. Medians of ``--repeats`` calls, alternated; the two results are compared bit
for bit.

    python benchmarks/bench_affinity_pass.py
    python benchmarks/bench_affinity_pass.py --tokens 4096 --channels 1280,320 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from diffcut_engine.graph import affinity_from_tokens, l2_normalize, native
from diffcut_engine.graph.host import zero_row_mask


def _gram(x):
    from scipy.linalg.blas import ssyrk

    return ssyrk(1.0, x.T, trans=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096, help="N (4096: a 64x64 grid)")
    ap.add_argument("--channels", default="1280,320", help="comma-separated C (1280: SSD-1B, 320: lite features)")
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    if not native.fused_affinity_applies(args.alpha, args.tokens):
        print("the fused pass does not apply here (extension not built, non-integer alpha or a small grid)")
        return 1
    from diffcut_engine.graph import memory

    print(f"load average at start: {os.getloadavg()[0]:.2f}; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print("| N | C | ssyrk alone (ms) | numpy passes (ms) | fused pass (ms) | after ssyrk: numpy / fused | identical |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for c in (int(v) for v in args.channels.split(",")):
        x = l2_normalize(rng.standard_normal((args.tokens, c)).astype(np.float32))
        times = {"gram": [], "numpy": [], "fused": []}
        same = True
        for _ in range(args.repeats):
            t = time.perf_counter()
            _gram(x)
            times["gram"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = affinity_from_tokens(x, args.alpha, dtype=np.float64, pooled=True)  # as the engine calls it
            zr_ref = zero_row_mask(ref)
            times["numpy"].append(time.perf_counter() - t)
            t = time.perf_counter()
            W, zr = native.native_affinity_widened(x, args.alpha)
            times["fused"].append(time.perf_counter() - t)
            same = same and np.array_equal(W, ref) and np.array_equal(zr, zr_ref)
            memory.give_back(W, ref)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratio = (med["numpy"] - med["gram"]) / max(med["fused"] - med["gram"], 1e-9)
        print(f"| {args.tokens} | {c} | {med['gram']:.1f} | {med['numpy']:.1f} | {med['fused']:.1f} | {ratio:.2f}x | "
              f"{same} |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
