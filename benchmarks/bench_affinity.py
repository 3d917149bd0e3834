"""Fused Triton affinity kernel vs the torch reference (normalise, matmul, min/max, pow, sum: separate torch kernels).

On a CUDA device it times ``diffcut_engine.kernels.affinity.fused_affinity`` (ieee, and tf32 for information)
against ``affinity_reference`` with ``triton.testing.do_bench`` for N in {1024, 4096}, C = 1280, and prints the
ratio and the largest difference from the reference:

    python benchmarks/bench_affinity.py
    python benchmarks/bench_affinity.py --sizes 1024 4096 --channels 1280 --json affinity.json

The first call of each (N, C, precision) autotunes the Gram kernel (a few seconds); it is outside the timing.
Both sides skip the finite-value check (a host sync) so only the computation is timed.

Without a CUDA device it says so and, for information only, times the torch reference against the numpy graph
stage (``diffcut_engine.graph.affinity``) on the CPU with ``time.perf_counter`` (smaller default sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from diffcut_engine.graph.affinity import affinity_from_tokens, l2_normalize
from diffcut_engine.kernels.affinity import affinity_reference, fused_affinity


def clustered_tokens(n: int, c: int, *, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """Tokens around a few centres, so that W is a realistic graph and not (almost) the identity."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, c, generator=g)
    labels = torch.randint(0, 8, (n,), generator=g)
    return (centres[labels] + 0.6 * torch.randn(n, c, generator=g)).float().to(device)


def bench_gpu(sizes, channels, alpha):
    import triton.testing

    rows = []
    for n in sizes:
        x = clustered_tokens(n, channels, device="cuda")
        w_ref, d_ref = affinity_reference(x, alpha, check_finite=False)
        t_ref = triton.testing.do_bench(lambda: affinity_reference(x, alpha, check_finite=False))
        for precision in ("ieee", "tf32"):
            w, d = fused_affinity(x, alpha, precision=precision, check_finite=False)  # autotune + compile
            torch.cuda.synchronize()
            t = triton.testing.do_bench(lambda: fused_affinity(x, alpha, precision=precision, check_finite=False))
            diff_w = (w - w_ref).abs().max().item()
            diff_d = ((d - d_ref).abs() / d_ref).max().item()
            rows.append({"n": n, "c": channels, "precision": precision, "fused_ms": t, "reference_ms": t_ref,
                         "ratio_reference_over_fused": t_ref / t, "max_abs_diff_w": diff_w,
                         "max_rel_diff_degrees": diff_d})
            print(f"N={n:5d} C={channels} {precision:5s}  fused {t * 1e3:8.1f} us   torch reference "
                  f"{t_ref * 1e3:8.1f} us   ratio {t_ref / t:5.2f}x   max|dW| {diff_w:.2e}  max rel dd {diff_d:.2e}")
    return rows


def bench_cpu(sizes, channels, alpha, repeats):
    rows = []
    for n in sizes:
        x = clustered_tokens(n, channels)
        xn = l2_normalize(x.numpy())
        times = {"torch_reference": [], "numpy": []}
        affinity_reference(x, alpha)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            w_ref, _ = affinity_reference(x, alpha, check_finite=False)
            times["torch_reference"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            w_np = affinity_from_tokens(xn, alpha)
            times["numpy"].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = float(np.abs(w_ref.numpy() - w_np).max())
        rows.append({"n": n, "c": channels, "median_s": med, "ratio_numpy_over_torch": med["numpy"] /
                     med["torch_reference"], "max_abs_diff_w": diff})
        print(f"N={n:5d} C={channels}  torch reference {med['torch_reference'] * 1e3:8.1f} ms   numpy "
              f"{med['numpy'] * 1e3:8.1f} ms   ratio {med['numpy'] / med['torch_reference']:5.2f}x   "
              f"max|dW| {diff:.2e}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", help="numbers of tokens N (default: 1024 4096 on GPU, "
                                                            "1024 on CPU)")
    ap.add_argument("--channels", type=int, default=1280, help="feature channels C (SSD-1B attn1: 1280)")
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3, help="CPU timing repeats (the GPU uses do_bench)")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)

    info = {"torch": torch.__version__, "machine": platform.platform(), "cpu_count": os.cpu_count(),
            "alpha": args.alpha}
    if torch.cuda.is_available():
        import triton

        info.update(device=torch.cuda.get_device_name(), triton=triton.__version__)
        print(f"fused affinity vs torch reference on {info['device']} (triton {triton.__version__}, "
              f"torch {torch.__version__}), alpha={args.alpha}")
        rows = bench_gpu(args.sizes or [1024, 4096], args.channels, args.alpha)
        kind = "gpu"
    else:
        print("The fused-kernel benchmark needs a CUDA device; none found. For information only: the torch "
              f"reference vs the numpy graph stage on the CPU ({torch.get_num_threads()} threads).")
        rows = bench_cpu(args.sizes or [1024], args.channels, args.alpha, args.repeats)
        kind = "cpu"
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": f"affinity ({kind})", **info, "results": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
