"""Do the numpy path and the C++ core give the same labels on odd inputs? ``recursive_ncut`` with
``graph_backend="numpy"`` and ``"native"`` on random grids: shapes 1x1 to 24x24 (non-square and one-row ones
included), C = 1, 8, 64, feature kinds (Gaussian, constant, a zero token, half the tokens repeated, planted regions,
rank one, signed halves), both compat modes, alpha 10 and 2.5, tau 0.05 / 0.5 / 0.99; a random quarter of the
combinations (``--seed``). Prints every case whose labels differ, whether the partition is the same up to the
label ids, and the counts.

    python benchmarks/fuzz_graph_backends.py
"""
from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

SHAPES = ((1, 1), (1, 2), (2, 1), (1, 50), (50, 1), (3, 3), (7, 13), (13, 7), (16, 16), (5, 40), (24, 24))
KINDS = ("rand", "const", "zero_row", "dup", "planted", "lowrank", "neg")


def features(kind: str, h: int, w: int, c: int, rng) -> np.ndarray:
    if kind == "const":
        return np.ones((h, w, c), np.float32)
    if kind == "planted":
        lab = np.arange(h)[:, None] * 3 // h + np.arange(w)[None, :] * 2 // w
        return (rng.standard_normal((10, c))[lab] + 0.3 * rng.standard_normal((h, w, c))).astype(np.float32)
    if kind == "lowrank":
        return (rng.standard_normal((h * w, 1)) @ rng.standard_normal((1, c))).reshape(h, w, c).astype(np.float32)
    f = rng.standard_normal((h, w, c)).astype(np.float32)
    if kind == "zero_row":
        f[0, 0] = 0
    elif kind == "dup":
        f[:, :(w + 1) // 2] = f[0, 0]
    elif kind == "neg":
        f = np.abs(f)
        f[:h // 2] *= -1
    return f


def first_seen_ids(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered in order of first appearance (the partition without its ids)."""
    _, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=0.25, help="share of the combinations run")
    args = ap.parse_args(argv)
    from diffcut_engine import graph
    from diffcut_engine.graph import native

    native.require_native()
    rng = np.random.default_rng(args.seed)
    cases = differ = same_partition = 0
    for (h, w), kind, c, compat, alpha, tau in itertools.product(SHAPES, KINDS, (1, 8, 64), ("official", "clean"),
                                                                 (10.0, 2.5), (0.5, 0.05, 0.99)):
        if rng.random() > args.fraction:
            continue
        f = features(kind, h, w, c, rng)
        cases += 1
        a, b = (graph.recursive_ncut(f, alpha=alpha, tau=tau, compat=compat, graph_backend=backend)
                for backend in ("numpy", "native"))
        if np.array_equal(a, b):
            continue
        differ += 1
        same = np.array_equal(first_seen_ids(a), first_seen_ids(b))
        same_partition += same
        print(f"{h}x{w} {kind} C={c} {compat} alpha={alpha:g} tau={tau:g}: "
              f"{'same partition, other label ids' if same else 'PARTITION DIFFERS'} (K {a.max() + 1} / {b.max() + 1})")
    print(f"{cases} cases, labels differ in {differ} ({same_partition} of them the same partition)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
