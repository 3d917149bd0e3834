"""Native core against the numpy graph path, same process, on the families that decide ``NATIVE_AUTO_MAX_TOKENS``.

    python benchmarks/bench_native_block.py                       # 24x24 and 32x32, best of 3
    python benchmarks/bench_native_block.py --grids 32 --repeats 5

Per grid and case, ``recursive_ncut(f, tau=0.5, graph_backend=be)`` (features to labels, the affinity included)
is timed for ``native`` and ``numpy`` alternately (one call of each per round, the order swapped every round), and
the best time of each is printed with the ratio numpy / native (> 1: native faster). Families: ``disconnected``
(``bench_graph.disconnected_case``, mutually unrelated regions: a clustered spectrum, where both backends go from
Lanczos to block Krylov) and ``planted`` (``bench_graph.planted_case``, hierarchical regions, three seeds). The
labels of the two backends are checked to be equal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

from bench_graph import DISCONNECTED, disconnected_case, planted_case  # noqa: E402

from diffcut_engine.graph import recursive_ncut  # noqa: E402

BACKENDS = ("native", "numpy")


def cases(h: int, w: int):
    for regions, noise in DISCONNECTED:
        feats, _ = disconnected_case(h, w, regions, noise, seed=h * 1000 + w + regions)
        yield f"disconnected {regions}/{noise:g}", feats
    for seed in range(3):
        feats, _ = planted_case(h, w, seed=h * 1000 + w + seed)
        yield f"planted seed {seed}", feats


def timed(feats, backend):
    start = time.perf_counter()
    labels = recursive_ncut(feats, tau=0.5, graph_backend=backend)
    return time.perf_counter() - start, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="24,32", help="comma-separated square grid sizes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| grid | case | native (s) | numpy (s) | numpy / native | same labels |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.grids.split(",")):
        for name, feats in cases(size, size):
            best = {be: np.inf for be in BACKENDS}
            labels = {}
            timed(feats, "numpy")  # warm-up (imports, first BLAS calls)
            for r in range(args.repeats):
                for be in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
                    t, labels[be] = timed(feats, be)
                    best[be] = min(best[be], t)
            same = np.array_equal(labels["native"], labels["numpy"])
            print(f"| {size}x{size} | {name} | {best['native']:.4f} | {best['numpy']:.4f} | "
                  f"{best['numpy'] / best['native']:.2f}x | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
