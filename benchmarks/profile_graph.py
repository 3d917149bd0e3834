"""Where the host graph stage spends its time: per-phase wall time and Lanczos steps per subgraph.

    python benchmarks/profile_graph.py                         # planted 32x32 and 64x64, real chelsea 32x32
    python benchmarks/profile_graph.py --cases planted:64 --repeats 5
    python benchmarks/profile_graph.py --crossover             # dense vs Lanczos on every subgraph of 32x32 trees

Phases (medians over ``--repeats`` runs after one warm-up, milliseconds per image): ``affinity`` (validation,
normalisation, Gram matrix, min-max, power), ``fiedler`` (eigensolves), ``scoring`` (the 100 thresholds of every
split, with the children's degrees), ``gather`` (the children's affinities), ``bound`` (spectral leaf bounds),
``other`` (the rest: tree bookkeeping, labels). The phases are timed by wrapping the graph stage's own functions,
so the total is the plain ``recursive_ncut`` call plus a few microseconds per wrapped call.

``--crossover`` collects every subgraph the recursion solves and times the ``dense`` and ``lanczos`` solvers on each
(single BLAS thread recommended: ``OPENBLAS_NUM_THREADS=1``), which is how ``eigen.AUTO_DENSE_MAX`` was chosen.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import diffcut_engine.graph.eigen as eigen  # noqa: E402
import diffcut_engine.graph.host as host  # noqa: E402
import diffcut_engine.graph.ncut as ncut  # noqa: E402
from bench_graph import RealFeatures, disconnected_case, planted_case  # noqa: E402

PHASES = {"_affinity_of": "affinity", "fiedler_vector": "fiedler", "binned_scores": "scoring",
          "take_square": "gather", "spectral_lower_bound": "bound"}
TAUS = {"planted": 0.5, "disconnected": 0.5, "chelsea": 0.08, "coffee": 0.08}


def features(case: str, grid: int):
    if case == "planted":
        return planted_case(grid, grid, 0)[0]
    if case == "disconnected":  # bench_graph's 4 regions, noise 0.5 case
        return disconnected_case(grid, grid, 4, 0.5, seed=grid * 1000 + grid + 4)[0]
    return RealFeatures()(case, grid, grid)


def profile(feats, tau: float, repeats: int, backend: str = "numpy") -> dict:
    """Median milliseconds per phase, and (nodes, Lanczos steps) of every Lanczos solve of one run."""
    spent = defaultdict(float)
    # where each phase's function is looked up when the recursion calls it
    owner = {name: ncut if name == "_affinity_of" else host for name in PHASES}
    originals = {name: getattr(owner[name], name) for name in PHASES}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[PHASES[name]] += time.perf_counter() - t
        return wrapper

    steps = []

    real_ritz, real_lanczos = eigen._top_ritz_pairs, eigen._lanczos
    sizes = []

    def counting_ritz(alpha, beta):  # the last certificate check sees the final Krylov dimension
        sizes.append(len(alpha))
        return real_ritz(alpha, beta)

    def counting_lanczos(A, d, warm):
        sizes.clear()
        out = real_lanczos(A, d, warm)
        steps.append((A.shape[0], sizes[-1] if sizes else 0, warm is not None))
        return out

    rows = defaultdict(list)
    try:
        for name, fn in originals.items():
            setattr(owner[name], name, timed(name, fn))
        eigen._top_ritz_pairs, eigen._lanczos = counting_ritz, counting_lanczos
        # the numpy path (its phases are the functions wrapped here; the native core has none of them)
        ncut.recursive_ncut(feats, tau=tau, graph_backend=backend)  # warm-up
        for _ in range(repeats):
            spent.clear()
            steps.clear()
            t = time.perf_counter()
            ncut.recursive_ncut(feats, tau=tau, graph_backend=backend)
            total = time.perf_counter() - t
            for phase in PHASES.values():
                rows[phase].append(spent[phase])
            rows["other"].append(total - sum(spent.values()))
            rows["total"].append(total)
    finally:
        for name, fn in originals.items():
            setattr(owner[name], name, fn)
        eigen._top_ritz_pairs, eigen._lanczos = real_ritz, real_lanczos
    return {k: 1e3 * statistics.median(v) for k, v in rows.items()}, list(steps)


def crossover(grid: int, repeats: int) -> None:
    problems = []
    real = host.fiedler_vector

    def collect(A, d, *, warm_start=None, **kwargs):
        problems.append((np.array(A), np.array(d), None if warm_start is None else np.array(warm_start)))
        return real(A, d, warm_start=warm_start, **kwargs)

    host.fiedler_vector = collect
    try:
        for case in ("chelsea", "coffee"):
            ncut.recursive_ncut(features(case, grid), tau=0.3, graph_backend="numpy")
        ncut.recursive_ncut(features("planted", grid), tau=0.5, graph_backend="numpy")
    finally:
        host.fiedler_vector = real

    def best(fn):
        fn()
        return 1e3 * min(_time(fn) for _ in range(repeats))

    print(f"{'nodes':>6} {'dense ms':>9} {'lanczos ms':>11}")
    for A, d, warm in sorted(problems, key=lambda p: p[0].shape[0]):
        if A.shape[0] < eigen.LANCZOS_MIN_NODES:
            continue
        print(f"{A.shape[0]:6d} {best(lambda: eigen._dense(A, d, False)):9.2f} "
              f"{best(lambda: eigen._lanczos(A, d, warm)):11.2f}")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="planted:32,chelsea:32,planted:64",
                    help="comma-separated CASE:GRID, CASE in planted, disconnected, chelsea, coffee")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--crossover", action="store_true", help="dense vs Lanczos per subgraph instead")
    ap.add_argument("--graph-backend", choices=("numpy", "auto"), default="numpy",
                    help="numpy (default): the pure numpy host path; auto: as the engine runs it above 32x32 (the "
                    "numpy recursion on the C++ core's fused affinity pass where it is built)")
    args = ap.parse_args(argv)
    if args.crossover:
        crossover(32, args.repeats)
        return 0
    cols = ["affinity", "fiedler", "scoring", "gather", "bound", "other", "total"]
    print(f"{'case':16s}" + "".join(f"{c:>10s}" for c in cols) + "   Lanczos solves (nodes: steps, w = warm start)")
    for spec in args.cases.split(","):
        case, grid = spec.split(":")
        ms, steps = profile(features(case, int(grid)), TAUS[case], args.repeats, args.graph_backend)
        solves = ", ".join(f"{n}:{k}{'w' if w else ''}" for n, k, w in steps)
        print(f"{case + ' ' + grid + 'x' + grid:16s}" + "".join(f"{ms[c]:10.1f}" for c in cols) + f"   {solves}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
