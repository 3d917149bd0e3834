"""Graph stage speed: the engine's recursive NCut against the official cost structure, features to labels.

    python benchmarks/bench_graph.py                      # all grids, planted and real features, 3 repeats
    python benchmarks/bench_graph.py --quick              # smoke run: 16x16 and 32x32, 1 repeat
    python benchmarks/bench_graph.py --grids 32,64 --cases planted --repeats 5 --json graph.json
    python benchmarks/bench_graph.py --device cuda        # reference on the GPU (engine gets CuPy input if
                                                          # CuPy is installed; --engine-input numpy to keep host)
    python benchmarks/bench_graph.py --engine-input cupy  # engine on the GPU, reference on the CPU
    python benchmarks/bench_graph.py --device cuda --engine-input cuda-tensor   # both on the GPU; the engine gets
                                                          # a CUDA torch tensor (Triton affinity, DLPack to CuPy)

For every case it times, per image and from features to labels (affinity construction included on both sides):

- the reference, ``reference_official.official_recursive_ncut(...)``: float32 torch, a full ``torch.linalg.eigh``
  per subgraph and a Python loop with a host sync per threshold, the official painting recursion (zero-row rule
  included), i.e. the official code's cost structure and partitions, which the engine's default
  ``compat="official"`` promises (``--compat clean``: the index-set variant against ``compat="clean"``);
- where the reference's float32 partition is in question (it failed, or an engine call's labels differ from it;
  ``--exact-reference always`` for every case), the **exact-decision reference**,
  ``official_recursive_ncut(..., decisions="float64")``: the same float32 work on every subgraph of the recursion
  the float64 rule takes, its float64 decisions not timed. On nearly disconnected graphs the official float32
  ``eigh`` returns an arbitrary vector of a cluster of eigenvalues ~1e-8 apart, so which split comes first, or
  whether the recursion stops at once (K = 1), follows the CPU's LAPACK rounding; this row gives the official
  cost of the partition the engine promises, and whether the engine's labels are that partition's;
- the engine, ``diffcut_engine.graph.recursive_ncut(features, alpha=..., tau=...)``, once per solver named in
  ``diffcut_engine.graph.SOLVERS`` when the package has it (passed as ``solver=name``), else the default call.
  With a device input (``--engine-input cupy``: a CuPy array; ``cuda-tensor``: a CUDA torch tensor) the engine
  runs its device path (``graph/device.py``: affinity on the GPU, batched level-synchronous recursion), which
  takes ``solver="auto"`` only, so that is the one timed unless ``--solvers`` says otherwise. The engine's time
  then includes the host-to-device copy of the features and the read-back of the labels.

Each time is the median of ``--repeats`` runs after one untimed warm-up of every function; the reference runs
``--reference-repeats`` times (default: ``--repeats``, but once on grids above 2048 nodes, where one run takes
tens of seconds on a 2-core CPU). When the reference and the engine run the same number of times, their calls
alternate (reference, each solver, reference, ...), so a slow phase of a shared machine slows both sides alike
instead of biasing the ratio. The table gives the case, grid, the reference's number of segments K and time,
then per solver the engine time, the ratio reference / engine, the engine's K, whether the two label maps are the
same partition (up to renumbering), whether the labels are identical, and how many nodes would have to move to
turn one partition into the other (after an optimal one-to-one matching of segments).

Cases:

- ``planted``: C = 1280 features, 6-10 regions of various shapes (Voronoi cells, ellipses, rectangles, a band,
  a diagonal stripe), each token its region's centre plus Gaussian noise, centres along a chain so that
  neighbouring regions are similar (see ``planted_case``); tau 0.5 (the paper's value). Both sides recover
  the planted regions exactly on every grid here.
- ``disconnected`` (issue 22): mutually unrelated regions, ``disconnected_case``: Voronoi cells whose centres are
  independent random unit vectors in C = 1280 plus Gaussian noise, for each (region count, noise) in
  ``DISCONNECTED``; the graph is nearly disconnected and the top of its spectrum clustered. tau 0.5.
- ``photos`` (issue 22): ``tests/realistic.py`` features of scikit-image photos (Lab colour + position + noise,
  a filter bank + noise), ``PHOTO_CASES``, tau 0.7.
- ``real``: the offline backbone's features (``LiteEncoder``, EfficientNet-Lite0, stride 32, **C = 320**, not
  the 1280 of SSD-1B) of scikit-image's ``chelsea`` and ``coffee`` photos, resized (torch bilinear, squashed to
  the grid's aspect) to 32 px per grid cell (a 64x64 grid is a 2048 px input); tau 0.08, the lite preset.

``--baseline DIR`` also times another checkout's graph stage (e.g. the previous commit, ``git worktree add DIR
main``), imported beside this one in the same process, as solver ``base:NAME``, its calls alternated with this
checkout's; a final table gives baseline seconds / these seconds and whether the labels are identical. With
``--reference-repeats`` different from ``--repeats`` the reference runs on its own first and the engine calls
(this checkout's and the baseline's) alternate among themselves. The baseline runs its own C++ core (its
``diffcut_engine/_native*.so``, built in DIR); both cores' helper threads live in the one process, so a change
inside ``csrc/`` is better compared in separate processes.

``--tau`` overrides tau for all cases, ``--tau-real`` for the real ones only. At the lite preset the real
features give few segments (1-3 on these grids: the preset was chosen at 768 px, and the NCut values grow with
the grid), so those cases time little more than the root solve; ``--tau-real 0.2`` gives about 3-16 segments and
``0.3`` about 8-32. Grids: ``--grids 16,32,64,48x85`` (``N`` means N x N; ``HxW`` rows by
columns). ``--json FILE`` writes every number, the versions and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import diffcut_engine  # noqa: E402
import diffcut_engine.graph as graph  # noqa: E402
from reference_official import official_recursive_ncut  # noqa: E402

DEFAULT_GRIDS = "16,32,64,48x85"
QUICK_GRIDS = "16,32"
PLANTED_CHANNELS = 1280
PLANTED_TAU = 0.5
LITE_TAU = getattr(__import__("diffcut_engine.config", fromlist=["TAU_PRESETS"]), "TAU_PRESETS",
                   {}).get("efficientnet-lite0", 0.08)
REAL_IMAGES = ("chelsea", "coffee")
#: The nearly disconnected family (issue 22): (region count, noise norm) per case, tau PLANTED_TAU.
DISCONNECTED = ((4, 0.5), (8, 0.5), (12, 0.5), (8, 0.3))
#: The realistic family (tests/realistic.py): Lab colour + position + noise and filter-bank features of photos.
PHOTO_CASES = (("lab", "astronaut"), ("filters", "coffee"))
PHOTO_TAU = 0.7
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


# ------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------

def parse_grid(text: str) -> tuple:
    """"32" -> (32, 32); "48x85" -> (48, 85)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    h, w = (int(p) for p in parts)
    if h < 2 or w < 2:
        raise argparse.ArgumentTypeError(f"grid {text!r} is too small")
    return h, w


def planted_scene(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w) int region map with 6-10 regions of various shapes, each at least 3% of the grid."""
    rng = np.random.default_rng(seed)
    n = h * w
    min_area = max(6, int(0.03 * n))
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    yy, xx = yy / h, xx / w  # unit square coordinates
    target = int(rng.integers(6, 11))
    # Background: 3 anisotropic Voronoi cells.
    seeds = rng.uniform(0.1, 0.9, size=(3, 2))
    dist = [(yy - sy) ** 2 * 2.0 + (xx - sx) ** 2 for sy, sx in seeds]
    regions = np.argmin(np.stack(dist), axis=0)
    shapes = ("ellipse", "ellipse", "rectangle", "band", "stripe", "ellipse")
    label = 3
    attempts = 0
    while len(np.unique(regions)) < target and attempts < 200:
        attempts += 1
        kind = shapes[int(rng.integers(len(shapes)))]
        cy, cx = rng.uniform(0.15, 0.85, size=2)
        if kind == "ellipse":
            ry, rx = rng.uniform(0.08, 0.25, size=2)
            angle = rng.uniform(0, np.pi)
            u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
            v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
            shape = (u / ry) ** 2 + (v / rx) ** 2 < 1
        elif kind == "rectangle":
            ry, rx = rng.uniform(0.06, 0.2, size=2)
            shape = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        elif kind == "band":
            shape = np.abs(yy - cy) < rng.uniform(0.05, 0.12)
        else:  # a diagonal stripe
            shape = np.abs((yy - cy) + rng.uniform(-1.5, 1.5) * (xx - cx)) < rng.uniform(0.04, 0.1)
        trial = np.where(shape, label, regions)
        _, counts = np.unique(trial, return_counts=True)
        if counts.min() >= min_area:
            regions = trial
            label += 1
    _, regions = np.unique(regions, return_inverse=True)
    return regions.reshape(h, w)


def planted_case(h: int, w: int, seed: int) -> tuple:
    """C = 1280 features: each token its region's centre plus Gaussian noise.

    The centres lie along a chain (angles 0, 0.35, 0.7, ... rad in a random plane, in random order, plus an
    independent unit part per region with weight 0.7), so neighbouring regions on the chain are similar and far
    ones are not, as in real features. Regions that are all equally unrelated would be numerically
    disconnected in float32 (cross weights ~1e-11 of the within-region ones after the power alpha = 10): the
    reference's float32 eigensolver then returns a one-signed "Fiedler" vector whose all-nodes "split" has
    NCut ~ 0 < tau, and the official recursion never ends.
    """
    regions = planted_scene(h, w, seed)
    rng = np.random.default_rng(seed + 1000)
    k = int(regions.max()) + 1
    plane, _ = np.linalg.qr(rng.normal(size=(PLANTED_CHANNELS, 2)))
    angle = rng.permutation(k) * 0.35
    own = rng.normal(size=(k, PLANTED_CHANNELS))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    centres = np.sqrt(0.51) * (np.cos(angle)[:, None] * plane[:, 0] + np.sin(angle)[:, None] * plane[:, 1])
    centres += 0.7 * own
    noise = 0.5 / np.sqrt(PLANTED_CHANNELS) * rng.normal(size=regions.shape + (PLANTED_CHANNELS,))
    return (centres[regions] + noise).astype(np.float32), regions


def disconnected_case(h: int, w: int, regions: int, noise: float, seed: int) -> tuple:
    """Mutually unrelated regions (issue 22): C = 1280 features, ``regions`` Voronoi cells of random seed points
    on the grid, each region's centre an independent random unit vector (so the centres are nearly orthogonal:
    think sky, road and car), each token its centre plus Gaussian noise of norm about ``noise``. After min-max
    scaling and the power alpha the graph is nearly disconnected and the top of the spectrum of
    D^-1/2 W D^-1/2 is a cluster (one eigenvalue near 1 per region)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    seeds = rng.uniform(0, 1, size=(regions, 2)) * (h, w)
    labels = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    centres = rng.normal(size=(regions, PLANTED_CHANNELS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    feats = centres[labels] + noise / np.sqrt(PLANTED_CHANNELS) * rng.normal(size=(h, w, PLANTED_CHANNELS))
    return feats.astype(np.float32), labels


class RealFeatures:
    """Features of scikit-image photos from the offline EfficientNet-Lite0 backbone (built on first use)."""

    def __init__(self):
        self.encoder = None

    def __call__(self, name: str, h: int, w: int) -> np.ndarray:
        import skimage.data
        from diffcut_engine.encoders.lite import LiteEncoder

        if self.encoder is None:
            self.encoder = LiteEncoder.from_pretrained(device="cpu")
        image = getattr(skimage.data, name)()
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        pixels = torch.nn.functional.interpolate(pixels, size=(32 * h, 32 * w), mode="bilinear",
                                                 align_corners=False)
        feats = self.encoder.encode(pixels)[0]
        if tuple(feats.shape[:2]) != (h, w):
            raise RuntimeError(f"expected a {h}x{w} grid, got {tuple(feats.shape)}")
        return feats.cpu().numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# Timing and comparison
# ------------------------------------------------------------------------------------------------------------

def engine_solvers(requested, device_input: bool = False) -> list:
    """Solver names to time: ``graph.SOLVERS`` if the package has it (None = the default call otherwise); only
    ``auto`` for a device input unless others are requested (the device path rejects named host solvers)."""
    available = getattr(graph, "SOLVERS", None)
    if available is None:
        if requested:
            print(f"note: this diffcut_engine has no graph.SOLVERS; ignoring --solvers {','.join(requested)}",
                  file=sys.stderr)
        return [None]
    names = list(available)
    if requested:
        unknown = [s for s in requested if s not in names]
        if unknown:
            raise SystemExit(f"error: unknown solver(s) {unknown}; available: {names}")
        names = [s for s in names if s in requested]
    elif device_input and "auto" in names:
        names = ["auto"]
    return names


def to_numpy(labels) -> np.ndarray:
    if hasattr(labels, "get") and not isinstance(labels, np.ndarray):  # CuPy
        labels = labels.get()
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    return np.asarray(labels)


def load_baseline(path: str):
    """The ``diffcut_engine.graph`` of another checkout (e.g. the previous commit: ``git worktree add DIR main``),
    imported beside this one as the package ``diffcut_engine_baseline``, so that both run in one process with
    their calls alternated."""
    import importlib.util

    init = os.path.join(path, "diffcut_engine", "__init__.py")
    if not os.path.isfile(init):
        raise SystemExit(f"error: --baseline {path} holds no diffcut_engine/__init__.py")
    spec = importlib.util.spec_from_file_location("diffcut_engine_baseline", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["diffcut_engine_baseline"] = module
    spec.loader.exec_module(module)
    import importlib

    graph = importlib.import_module("diffcut_engine_baseline.graph")
    # its own C++ core: checkouts before 2026-12-07 name the extension "diffcut_engine._native" outright, which is
    # this checkout's (already imported), so a baseline's native graph stage ran this checkout's core
    base_native = sys.modules.get("diffcut_engine_baseline.graph.native")
    if base_native is not None and hasattr(base_native, "NATIVE_MODULE"):
        base_native.NATIVE_MODULE = "diffcut_engine_baseline._native"
    return graph


def make_engine_call(solver, engine_input: str, module=None, compat: str = "official"):
    graph_module = graph if module is None else module
    kwargs = {} if solver is None else {"solver": solver}
    if compat != "official":
        kwargs["compat"] = compat
    if engine_input == "cupy":
        import cupy

        def call(feats, alpha, tau):
            labels = graph_module.recursive_ncut(cupy.asarray(feats), alpha=alpha, tau=tau, **kwargs)
            return to_numpy(labels)
    elif engine_input == "cuda-tensor":
        def call(feats, alpha, tau):
            labels = graph_module.recursive_ncut(torch.from_numpy(feats).cuda(), alpha=alpha, tau=tau, **kwargs)
            return to_numpy(labels)
    else:
        def call(feats, alpha, tau):
            return to_numpy(graph_module.recursive_ncut(feats, alpha=alpha, tau=tau, **kwargs))
    return call


def same_partition(a, b) -> bool:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def moved_nodes(a, b) -> int:
    """Nodes outside the optimal one-to-one matching of segments (0 iff same partition)."""
    from scipy.optimize import linear_sum_assignment

    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return int(a.size - table[rows, cols].sum())


# ------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------

def build_cases(args) -> list:
    cases = []
    real = RealFeatures()
    for h, w in args.grids:
        grid = f"{h}x{w}"
        if "disconnected" in args.cases:
            for regions, noise in DISCONNECTED:
                feats, _ = disconnected_case(h, w, regions, noise, seed=h * 1000 + w + regions)
                cases.append({"case": f"disc/{regions}/{noise:g}", "grid": grid, "feats": feats,
                              "channels": PLANTED_CHANNELS, "tau": args.tau if args.tau is not None else PLANTED_TAU,
                              "planted_regions": regions})
        if "photos" in args.cases:
            from realistic import FAMILIES

            for family, photo in PHOTO_CASES:
                feats = FAMILIES[family](photo, h, w)
                cases.append({"case": f"{family}/{photo}", "grid": grid, "feats": feats,
                              "channels": feats.shape[-1], "tau": args.tau if args.tau is not None else PHOTO_TAU})
        if "planted" in args.cases:
            feats, regions = planted_case(h, w, seed=h * 1000 + w)
            cases.append({"case": "planted", "grid": grid, "feats": feats, "channels": PLANTED_CHANNELS,
                          "tau": args.tau if args.tau is not None else PLANTED_TAU,
                          "planted_regions": int(regions.max()) + 1})
        if "real" in args.cases:
            for name in REAL_IMAGES:
                try:
                    feats = real(name, h, w)
                except ImportError as exc:
                    print(f"note: skipping real features ({exc})", file=sys.stderr)
                    break
                cases.append({"case": f"real/{name}", "grid": grid, "feats": feats, "channels": feats.shape[-1],
                              "tau": args.tau_real if args.tau_real is not None else
                              args.tau if args.tau is not None else LITE_TAU})
    return cases


def interleaved(fns: dict, repeats: int, pause: float = 0.0) -> dict:
    """Time ``repeats`` calls of each function, the calls alternating (A B C A B C ...), so that the slow phases of
    a shared machine fall on all of them alike: {name: (median seconds, all times, last result)}; a function that
    raises is reported as {name: exception} and dropped from the rotation. ``pause``: seconds of idle before each
    timed call (the BLAS worker threads of the previous call go on spinning for up to ~0.2 s after it, on the cores
    the next call's own threads need: a pause times each call as in a process that runs that one alone)."""
    times = {name: [] for name in fns}
    results, failed = {}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in failed:
                continue
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            try:
                results[name] = fn()
            except Exception as exc:
                failed[name] = exc
                continue
            times[name].append(time.perf_counter() - start)
    out = {name: (statistics.median(t), t, results[name]) for name, t in times.items() if name not in failed}
    out.update(failed)
    return out


def run_case(case, args, solvers, calls) -> dict:
    feats, tau = case["feats"], case["tau"]
    n = feats.shape[0] * feats.shape[1]
    ref_repeats = args.reference_repeats or (args.repeats if n <= 2048 else 1)
    row = {k: v for k, v in case.items() if k != "feats"}
    row.update({"nodes": n, "alpha": args.alpha, "reference_repeats": ref_repeats, "engine": {},
                "interleaved": ref_repeats == args.repeats})

    def reference():
        return official_recursive_ncut(feats, alpha=args.alpha, tau=tau, device=args.device,
                                       index_sets=args.compat == "clean", return_info=True)

    fns = {"reference": reference}
    fns.update({solver: (lambda solver=solver: calls[solver](feats, args.alpha, tau)) for solver in calls})
    if row["interleaved"]:  # reference and engine calls alternate
        runs = interleaved(fns, args.repeats, args.pause)
    else:  # the reference on its own, then the engine calls alternating among themselves
        runs = interleaved({"reference": reference}, ref_repeats, args.pause)
        runs.update(interleaved({k: fn for k, fn in fns.items() if k != "reference"}, args.repeats, args.pause))
    try:
        if isinstance(runs["reference"], Exception):
            raise runs["reference"]
        ref_s, ref_times, (ref_labels, info) = runs["reference"]
        row.update({"reference_s": ref_s, "reference_times": ref_times, "reference_segments": info["segments"],
                    "reference_solves": info["solves"]})
    except Exception as exc:  # e.g. DegenerateSplitError: the official code would not finish this input
        ref_labels = None
        row["reference_error"] = f"{type(exc).__name__}: {exc}"
    for solver in calls:
        name = solver if isinstance(solver, str) and solver.startswith("base:") else (solver or "default")
        if isinstance(runs[solver], Exception):  # a solver this input/machine cannot run: report it, go on
            exc = runs[solver]
            row["engine"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        eng_s, eng_times, labels = runs[solver]
        result = {"seconds": eng_s, "times": eng_times, "segments": int(len(np.unique(labels)))}
        if ref_labels is not None:
            result.update({"ratio": row["reference_s"] / eng_s,
                           "same_partition": same_partition(ref_labels, labels),
                           "same_labels": bool(np.array_equal(ref_labels, labels)),
                           "moved_nodes": moved_nodes(ref_labels, labels)})
        base = runs.get("base:" + name)
        if base is not None and not isinstance(base, Exception):
            result.update({"baseline_s": base[0], "speedup_vs_baseline": base[0] / eng_s,
                           "same_labels_as_baseline": bool(np.array_equal(base[2], labels))})
        row["engine"][name] = result
    exact_reference(row, runs, feats, tau, args, ref_labels)
    dense = row["engine"].get("dense")
    if dense is not None and "error" not in dense:  # the float64 rule solved densely: the exact partition
        for name, result in row["engine"].items():
            if "error" not in result and not name.startswith("base:"):
                result["same_as_dense"] = bool(np.array_equal(runs[name][2], runs["dense"][2]))
    return row


def exact_reference(row, runs, feats, tau, args, ref_labels) -> None:
    """Time the exact-decision reference (``official_recursive_ncut(..., decisions="float64")``: the official
    float32 work on every subgraph of the float64 rule's recursion, less the float64 decisions) where the official
    float32 computation's own partition is in question: ``--exact-reference always``, or ``auto`` where it failed
    or any engine call's labels differ from it. Adds ``row["exact_reference"]`` and, per engine call,
    ``exact_ratio``, ``same_labels_as_exact`` and ``moved_vs_exact``."""
    engines = {name: runs[name] for name in runs if name != "reference" and not isinstance(runs[name], Exception)}
    if args.exact_reference == "never" or not engines:
        return
    if args.exact_reference == "auto" and ref_labels is not None and all(
            np.array_equal(ref_labels, result[2]) for result in engines.values()):
        return
    times, labels, info = [], None, None
    for _ in range(row["reference_repeats"]):
        if args.pause:
            time.sleep(args.pause)
        start = time.perf_counter()
        labels, info = official_recursive_ncut(feats, alpha=args.alpha, tau=tau, device=args.device,
                                               index_sets=args.compat == "clean", return_info=True,
                                               decisions="float64")
        times.append(time.perf_counter() - start - info["decision_seconds"])
    seconds = statistics.median(times)
    row["exact_reference"] = {"seconds": seconds, "times": times, "segments": info["segments"],
                              "solves": info["solves"]}
    for name, (eng_s, _, eng_labels) in engines.items():
        key = name if isinstance(name, str) and name.startswith("base:") else (name or "default")
        row["engine"][key].update({"exact_ratio": seconds / eng_s,
                                   "same_labels_as_exact": bool(np.array_equal(labels, eng_labels)),
                                   "moved_vs_exact": moved_nodes(labels, eng_labels)})


def print_row(row):
    if "reference_error" in row:
        print(f"{row['case']:<14} {row['grid']:>6}  reference failed: {row['reference_error'][:90]}")
        lead = f"{row['case']:<14} {row['grid']:>6} {'-':>4} {'-':>9}"
    else:
        lead = f"{row['case']:<14} {row['grid']:>6} {row['reference_segments']:>4} {row['reference_s']:>9.3f}"
    blank = " " * len(lead)
    for i, (name, r) in enumerate(row["engine"].items()):
        prefix = lead if i == 0 else blank
        if "error" in r:
            print(f"{prefix}  {name:<8} n/a ({r['error'][:70]})")
        elif "ratio" not in r:
            print(f"{prefix}  {name:<8} {r['seconds']:>9.4f} {'-':>9} {r['segments']:>4}")
        else:
            print(f"{prefix}  {name:<8} {r['seconds']:>9.4f} {r['ratio']:>8.1f}x {r['segments']:>4}  "
                  f"{'yes' if r['same_partition'] else 'NO':>9} {'yes' if r['same_labels'] else 'NO':>6} "
                  f"{r['moved_nodes']:>5}")
    exact = row.get("exact_reference")
    if exact:
        parts = [f"{name} {r['exact_ratio']:.1f}x labels {'identical' if r['same_labels_as_exact'] else 'DIFFER'}"
                 + ("" if r["same_labels_as_exact"] else f" ({r['moved_vs_exact']} moved)")
                 for name, r in row["engine"].items() if "exact_ratio" in r]
        print(f"{blank}  exact-decision reference: K {exact['segments']}, {exact['seconds']:.3f} s; "
              + "; ".join(parts))
    sys.stdout.flush()


def environment(args, solvers) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except Exception:
        commit = ""
    env = {"diffcut_engine": getattr(diffcut_engine, "__version__", "?"), "commit": commit,
           "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "machine": f"{platform.machine()} {platform.processor()}".strip(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "device": args.device, "engine_input": args.engine_input,
           "solvers": [s or "default" for s in solvers]}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", default=None, help=f"comma-separated grids, N or HxW (default {DEFAULT_GRIDS})")
    ap.add_argument("--cases", default="planted,real,disconnected,photos",
                    help="comma-separated: planted, real, disconnected, photos")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per engine call (default 3)")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds of idle before each timed call, the reference's and the engine's (default 0: back "
                    "to back; the thread pools of one call, torch's OpenMP or OpenBLAS's, go on spinning for a while "
                    "after it on the cores the next call's threads use: 0.3 times each as a process running it alone)")
    ap.add_argument("--reference-repeats", type=int, default=None,
                    help="timed runs of the reference (default: --repeats, 1 above 2048 nodes)")
    ap.add_argument("--tau", type=float, default=None,
                    help=f"tau for every case (default {PLANTED_TAU} planted, {LITE_TAU} real)")
    ap.add_argument("--tau-real", type=float, default=None,
                    help="tau for the real cases only (overrides --tau there)")
    ap.add_argument("--exact-reference", choices=("auto", "always", "never"), default="auto",
                    help="also time the exact-decision reference (the official float32 work along the float64 "
                    "rule's recursion; reference_official.py, decisions='float64'): auto (default) where the "
                    "official float32 reference fails or its labels differ from an engine call's")
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--compat", choices=("official", "clean"), default="official",
                    help="official (default): the engine's default against the official painting recursion; "
                    "clean: compat='clean' against the reference's index-set variant")
    ap.add_argument("--solvers", default=None, help="comma-separated subset of diffcut_engine.graph.SOLVERS")
    ap.add_argument("--device", default="cpu", help="torch device of the reference (cpu, cuda)")
    ap.add_argument("--engine-input", choices=("auto", "numpy", "cupy", "cuda-tensor"), default="auto",
                    help="array type given to the engine (auto: cupy when --device is cuda and CuPy imports; "
                    "cupy / cuda-tensor: the engine's device path, whatever --device the reference uses)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: grids {QUICK_GRIDS}, 1 repeat")
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument("--baseline", help="another checkout's root (e.g. the previous commit): its graph stage is "
                                       "timed in the same process, calls alternated, as solver 'base:NAME'")
    args = ap.parse_args(argv)

    args.grids = [parse_grid(g) for g in (args.grids or (QUICK_GRIDS if args.quick else DEFAULT_GRIDS)).split(",")]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if set(args.cases) - {"planted", "real", "disconnected", "photos"}:
        ap.error(f"unknown case(s) in --cases: {args.cases}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.engine_input == "auto":
        args.engine_input = "numpy"
        if args.device.startswith("cuda"):
            try:
                import cupy  # noqa: F401
                args.engine_input = "cupy"
            except ImportError:
                pass

    device_input = args.engine_input in ("cupy", "cuda-tensor")
    if device_input and not graph.cupy_available():
        raise SystemExit(f"error: --engine-input {args.engine_input} needs CuPy with a CUDA device "
                         f"(pip install 'diffcut-engine[gpu]')")
    solvers = engine_solvers([s for s in (args.solvers or "").split(",") if s], device_input)
    calls = {s: make_engine_call(s, args.engine_input, compat=args.compat) for s in solvers}
    if args.baseline:
        base_graph = load_baseline(args.baseline)
        calls.update({"base:" + (s or "default"): make_engine_call(s, args.engine_input, base_graph, args.compat)
                      for s in solvers})
    env = environment(args, solvers)
    print(f"diffcut_engine {env['diffcut_engine']} ({env['commit'] or 'no git'}), torch {env['torch']}, "
          f"numpy {env['numpy']}, {env['torch_threads']} torch threads, {env['machine']}; reference on "
          f"{args.device}, engine input {args.engine_input}; solvers: {', '.join(env['solvers'])}")

    # Warm-up (untimed): first calls pay for lazy imports, allocator and solver initialisation.
    warm, _ = planted_case(16, 16, seed=1)
    official_recursive_ncut(warm, alpha=args.alpha, tau=PLANTED_TAU, device=args.device,
                            index_sets=args.compat == "clean")
    for s in solvers:
        try:
            calls[s](warm, args.alpha, PLANTED_TAU)
        except Exception:
            pass  # reported per case below

    cases = build_cases(args)
    print(f"times in seconds per image (features to labels), median of {args.repeats} "
          f"(reference: {args.reference_repeats or 'same, 1 above 2048 nodes'}); ratio = reference / engine")
    print(f"{'case':<14} {'grid':>6} {'K':>4} {'ref s':>9}  {'solver':<8} {'engine s':>9} {'ratio':>9} "
          f"{'K':>4}  {'partition':>9} {'labels':>6} {'moved':>5}")
    rows = []
    for case in cases:
        row = run_case(case, args, solvers, calls)
        rows.append(row)
        print_row(row)
    mismatched = [(r["case"], r["grid"], n) for r in rows for n, e in r["engine"].items()
                  if "same_partition" in e and not e["same_partition"]]
    if mismatched:
        print("partitions differ from the reference in: "
              + ", ".join(f"{c} {g} ({n})" for c, g, n in mismatched))
    for r in rows:
        for name, e in r["engine"].items():
            if "same_as_dense" in e:
                print(f"{r['case']:<14} {r['grid']:>6}  {name:<8} labels identical to the dense float64 solve: "
                      f"{'yes' if e['same_as_dense'] else 'NO'}")
    worst = {}
    for r in rows:
        for name, e in r["engine"].items():
            if name.startswith("base:"):
                continue
            if "exact_ratio" in e:  # the official float32 partition is rounding's: its exact-decision cost
                ratio, same, against = e["exact_ratio"], e["same_labels_as_exact"], "exact-decision"
            elif "ratio" in e:
                ratio, same, against = e["ratio"], e["same_labels"], "official"
            else:
                continue
            key = (r["case"].split("/")[0], r["grid"], name)
            if key not in worst or ratio < worst[key][0]:
                worst[key] = (ratio, r["case"], same, against)
    if worst:
        print("\nworst case per family and grid (lowest ratio reference / engine; against the exact-decision "
              "reference where it ran):")
        for (family, grid, name), (ratio, case, same, against) in sorted(worst.items()):
            labels = "identical" if same else "DIFFER"
            print(f"{family:<14} {grid:>6}  {name:<8} {ratio:>8.1f}x  {case}  labels {labels} ({against})")
    if args.baseline:
        print(f"\nthis checkout vs --baseline {args.baseline} (same run, calls alternated): baseline s / this s")
        for r in rows:
            for name, e in r["engine"].items():
                if "speedup_vs_baseline" in e:
                    print(f"{r['case']:<14} {r['grid']:>6}  {name:<8} {e['baseline_s']:>9.4f} {e['seconds']:>9.4f} "
                          f"{e['speedup_vs_baseline']:>6.2f}x  labels "
                          f"{'identical' if e['same_labels_as_baseline'] else 'DIFFER'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "repeats": args.repeats, "results": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
