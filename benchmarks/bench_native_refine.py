"""Native refinement (the C++ core) against the torch CPU refinement and the numba fast path, in the same run.

    python benchmarks/bench_native_refine.py                     # 1024x1024, K = 10 and 100, best of 3
    python benchmarks/bench_native_refine.py --size 512 --ks 10 --repeats 2 --json out.json

The skimage astronaut photo is resized to ``--size`` (bilinear). Two families of labels:

- ``voronoi``: a Voronoi label map with K cells on the 32x32 grid, nearest-upsampled to the photo's size (labels at
  the output size, as concept assignment gives them); timed: PAMR + 3x3 median at the output size (the ``full``
  preset: 10 iterations, dilations 1, 2, 4, 8), i.e. ``refine.refine_at(view, labels, backend=be)`` for ``torch``
  and ``fast`` and ``kernels.pamr_native.pamr`` for ``native``;
- ``cut``: a real cut: Lab colour + position features of the photo on the 32x32 grid, their recursive NCut tree
  (numpy graph path) cut at the tau whose number of segments is closest to K; timed: the whole refinement from the
  grid labels (concept assignment at the output size, PAMR, median): ``concept_assign`` + ``refine_at`` in Python,
  ``kernels.pamr_native.refine`` in one C++ call.

Per case the backends run alternately (one call each per round, the order rotated every round); the best wall
time of each is printed with the ratios torch / native and fast / native (> 1: native faster) and the share of
pixels where native's labels equal torch's. All three use the machine's threads (torch's intra-op threads, numba's
and the native core's ``num_threads=0``: all cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from diffcut_engine import refine  # noqa: E402
from diffcut_engine.graph import ncut_tree  # noqa: E402
from diffcut_engine.kernels import pamr_cpu, pamr_native  # noqa: E402

GRID = 32
ITERS, DILATIONS = 10, (1, 2, 4, 8)


def photo(size):
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(img, size=size, mode="bilinear", align_corners=False)[0].contiguous()


def voronoi(k, seed, size):
    g = np.random.default_rng(seed)
    pts = g.uniform(0, GRID, (k, 2))
    yy, xx = np.mgrid[0:GRID, 0:GRID] + 0.5
    cells = ((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2).argmin(-1)
    lab = F.interpolate(torch.from_numpy(cells)[None, None].float(), size=size, mode="nearest")[0, 0].long()
    present = torch.unique(lab)
    return torch.searchsorted(present, lab), len(present)           # ids 0 .. K-1, all present


def lab_features(img):
    """(32, 32, 5) L2-normalised features: CIE Lab of the photo at the grid size plus the cell position."""
    from skimage.color import rgb2lab

    small = F.interpolate(img[None], size=(GRID, GRID), mode="area")[0].permute(1, 2, 0).numpy()
    lab = rgb2lab(small) / np.array([100.0, 60.0, 60.0])
    yy, xx = np.mgrid[0:GRID, 0:GRID] / GRID
    f = np.concatenate([lab, 0.7 * yy[..., None], 0.7 * xx[..., None]], -1).astype(np.float32)
    return f / np.linalg.norm(f, axis=-1, keepdims=True)


def real_cut(feats, k):
    tree = ncut_tree(feats, tau_max=1.0, graph_backend="numpy")
    best = None
    for tau in np.linspace(0.02, 1.0, 50):
        grid = tree.cut(float(tau))
        n = int(grid.max()) + 1
        if best is None or abs(n - k) < abs(best[1] - k):
            best = (grid, n, float(tau))
    return best


def interleaved(fns, repeats):
    best = {name: np.inf for name in fns}
    out = {}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            out[name] = np.asarray(fns[name]())
            best[name] = min(best[name], time.perf_counter() - t)
    return best, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="square photo size")
    ap.add_argument("--ks", default="10,100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--families", default="voronoi,cut")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if not pamr_native.available():
        raise SystemExit("diffcut_engine._native is not built: pip install -e . (a C++17 compiler)")
    size = (args.size, args.size)
    img = photo(size)
    view = img.numpy()
    have_fast = pamr_cpu.available()
    if have_fast:   # compile the numba kernels outside the timings
        refine.refine_at(photo((40, 40)), voronoi(3, 0, (40, 40))[0], backend="fast")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| family | K | native (s) | torch (s) | torch / native | fast (s) | fast / native | = torch |")
    print("|---|---|---|---|---|---|---|---|")
    feats = lab_features(img)
    rows = []
    for family in args.families.split(","):
        for k_req in (int(v) for v in args.ks.split(",")):
            if family == "voronoi":
                labels, k = voronoi(k_req, k_req, size)
                lab32 = labels.numpy().astype(np.int32)
                fns = {"native": lambda: pamr_native.pamr(view, lab32, k, iters=ITERS, dilations=DILATIONS),
                       "torch": lambda: refine.refine_at(img, labels, num_segments=k, iters=ITERS,
                                                         dilations=DILATIONS, backend="torch")}
                if have_fast:
                    fns["fast"] = lambda: refine.refine_at(img, labels, num_segments=k, iters=ITERS,
                                                           dilations=DILATIONS, backend="fast")
                name = "voronoi, PAMR + median"
            else:
                grid, k, tau = real_cut(feats, k_req)
                ft = torch.from_numpy(feats)
                gt = torch.from_numpy(grid.astype(np.int64))

                def python(backend, gt=gt, ft=ft, k=k):
                    assigned = refine.concept_assign(ft, gt, size, num_segments=k)
                    return refine.refine_at(img, assigned, num_segments=k, iters=ITERS, dilations=DILATIONS,
                                            backend=backend)

                fns = {"native": lambda grid=grid, k=k: pamr_native.refine(feats, grid, k, view, iters=ITERS,
                                                                           dilations=DILATIONS),
                       "torch": lambda: python("torch")}
                if have_fast:
                    fns["fast"] = lambda: python("fast")
                name = f"cut (tau {tau:.2f}), concept assignment + PAMR + median"
            best, out = interleaved(fns, args.repeats)
            same = float((out["native"] == out["torch"]).mean())
            fast = (f"{best['fast']:.3f} | {best['fast'] / best['native']:.2f}x" if have_fast else "- | -")
            print(f"| {name} | {k} | {best['native']:.3f} | {best['torch']:.3f} | "
                  f"{best['torch'] / best['native']:.1f}x | {fast} | {100 * same:.3f} % |", flush=True)
            rows.append({"family": family, "k": k, "seconds": best, "same_as_torch": same, "size": args.size})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "load": os.getloadavg()[0], "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
