"""Native graph backend (the C++ core, ``graph_backend="native"``) against the numpy path, in one run.

For each case of ``bench_graph.py`` (planted 1280-channel scenes, realistic photo features, real lite features),
the calls alternate (A B C D A B C D ...): ``numpy`` (the default numpy path, ``solver="auto"``: dense up to 192
nodes, certified Lanczos above), ``dense`` (the numpy path with ``solver="dense"``), ``native`` (``solver="auto"``,
the C++ certified Lanczos above 192 nodes) and ``native-dense``. Reported: median seconds, the ratios numpy / native
and dense / native-dense, and whether the labels are equal (label ids, not only partitions).

    python benchmarks/bench_native.py [--grids 16,24,32,24x40] [--cases planted,photos,real] [--repeats 3] [--pause 0.3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_graph  # noqa: E402
import diffcut_engine.graph as graph  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", default="16,24,32,24x40")
    ap.add_argument("--cases", default="planted,photos,real")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compat", choices=("official", "clean"), default="official")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds of idle before each timed call (default 0: back to back). The numpy path's BLAS "
                    "workers spin for up to ~0.2 s after its calls, on the cores the native core's threads use next; "
                    "0.3 times each backend as a process running it alone would")
    ap.add_argument("--batch", type=int, default=0,
                    help="instead: the throughput of graph.ncut_trees on this many grids (--grids, cycled over the "
                    "photo cases) with num_threads 1 vs 2 (the native core's batch; OpenBLAS single-threaded "
                    "during a multi-threaded call), then each grid's own time and the ratio two ideal cores could "
                    "reach on these grids (one grid per thread, handed out in order)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="with --batch: alternated blocks of --repeats calls per setting (default 5)")
    ap.add_argument("--against", default="",
                    help="instead: the native core against these graph backends (comma-separated: numpy, auto), "
                    "default solvers, calls alternated, medians; e.g. --grids 48,64 --against numpy,auto decides "
                    "graph.NATIVE_AUTO_MAX_TOKENS")
    ap.add_argument("--families", default="",
                    help="with --against: the case families of bench_graph (default: --cases plus disconnected)")
    args = ap.parse_args(argv)
    if not graph.native_available():
        raise SystemExit("error: diffcut_engine._native is not built (pip install -e . with a C++17 compiler)")
    args.grids = [bench_graph.parse_grid(g) for g in args.grids.split(",")]
    args.tau = args.tau_real = None
    if args.batch:
        return batch(args)
    if args.against:
        return against(args)
    print(f"{'case':18s} {'grid':7s} {'numpy s':>9s} {'dense s':>9s} {'native s':>9s} {'nat-d s':>9s} "
          f"{'np/nat':>7s} {'d/nat-d':>9s}  same labels (numpy vs native, dense vs native-dense)")
    for case in bench_graph.build_cases(args):
        f, tau = case["feats"], case["tau"]

        def call(**kw):
            return lambda: graph.recursive_ncut(f, alpha=10.0, tau=tau, compat=args.compat, **kw)

        out = bench_graph.interleaved({"numpy": call(graph_backend="numpy"),
                                       "dense": call(graph_backend="numpy", solver="dense"),
                                       "native": call(graph_backend="native"),
                                       "native-dense": call(graph_backend="native", solver="dense")}, args.repeats,
                                      args.pause)
        (tn, _, ln), (td, _, ld) = out["numpy"], out["dense"]
        (tc, _, lc), (tcd, _, lcd) = out["native"], out["native-dense"]
        print(f"{case['case']:18s} {case['grid']:7s} {tn:9.4f} {td:9.4f} {tc:9.4f} {tcd:9.4f} {tn / tc:7.2f} "
              f"{td / tcd:9.2f}  {np.array_equal(ln, lc)}, {np.array_equal(ld, lcd)}")
    return 0


def against(args) -> int:
    others = [b for b in args.against.split(",") if b]
    if args.families:
        args.cases = args.families
    elif "disconnected" not in args.cases:
        args.cases += ",disconnected"
    print(f"{'case':18s} {'grid':7s} {'native s':>9s} " + " ".join(f"{b + ' s':>9s} {b + '/nat':>9s}" for b in others)
          + "  same labels")
    for case in bench_graph.build_cases(args):
        f, tau = case["feats"], case["tau"]
        fns = {b: (lambda b=b: graph.recursive_ncut(f, alpha=10.0, tau=tau, compat=args.compat, graph_backend=b))
               for b in ["native", *others]}
        out = bench_graph.interleaved(fns, args.repeats, args.pause)
        tn, _, ln = out["native"]
        cols = " ".join(f"{out[b][0]:9.4f} {out[b][0] / tn:9.2f}" for b in others)
        same = all(np.array_equal(ln, out[b][2]) for b in others)
        print(f"{case['case']:18s} {case['grid']:7s} {tn:9.4f} {cols}  {same}", flush=True)
    return 0


def batch(args) -> int:
    from realistic import FAMILIES

    h, w = args.grids[0]
    names = [(fam, photo) for fam in FAMILIES for photo in ("astronaut", "coffee", "chelsea", "rocket")]
    grids = [FAMILIES[fam](photo, h, w) for fam, photo in (names * args.batch)[:args.batch]]

    def run(threads):
        return lambda: graph.ncut_trees(grids, alpha=10.0, tau_max=0.5, compat=args.compat, num_threads=threads)

    # each setting timed in blocks of consecutive calls, each after a pause and a warm-up, the blocks of the two
    # settings alternated --rounds times (the VM's speed drifts between blocks: one block per setting gave 1.27x and
    # 2.22x in two runs a minute apart); the median over all timed calls of a setting
    samples, results = {1: [], 2: []}, {}
    for _ in range(args.rounds):
        for threads in (1, 2):
            fn = run(threads)
            time.sleep(0.3)
            fn()
            for _ in range(args.repeats):
                start = time.perf_counter()
                results[threads] = fn()
                samples[threads].append(time.perf_counter() - start)
    times = {threads: statistics.median(ts) for threads, ts in samples.items()}
    t1, t2 = times[1], times[2]
    same = all(np.array_equal(a.cut(0.5), b.cut(0.5)) for a, b in zip(results[1], results[2]))
    print(f"{args.batch} grids {h}x{w}: 1 thread {t1:.4f} s, 2 threads {t2:.4f} s, throughput x{t1 / t2:.2f}, "
          f"same labels {same} (OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")
    # what two ideal cores could give these grids: each grid's own one-thread time (median of --repeats after a
    # warm-up), handed out in order to the first free thread as the core's batch does (one grid per thread)
    own = []
    for g in grids:
        graph.ncut_trees([g], alpha=10.0, tau_max=0.5, compat=args.compat, num_threads=1)
        ts = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            graph.ncut_trees([g], alpha=10.0, tau_max=0.5, compat=args.compat, num_threads=1)
            ts.append(time.perf_counter() - start)
        own.append(statistics.median(ts))
    free = [0.0, 0.0]
    for cost in own:
        free[free.index(min(free))] += cost
    print(f"  each grid alone (ms): {', '.join(f'{c * 1e3:.1f}' for c in own)}; two ideal cores handing them out in "
          f"order: x{sum(own) / max(free):.2f} at most")
    return 0


if __name__ == "__main__":
    sys.exit(main())
