"""Which EfficientNet-Lite0 features, at which input size and tau: scored against hand-drawn masks.

This is the study behind the feature choice, :data:`~diffcut_engine.encoders.lite.DEFAULT_SIZE` and the tau
preset of the ``efficientnet-lite0`` backbone (the table in :class:`~diffcut_engine.encoders.lite.LiteEncoder`).
It runs the real graph stage (:func:`~diffcut_engine.graph.recursive_ncut`, alpha 10, the engine's default
``compat``) on the feature grid of each photo that has a hand-drawn reference mask
(``tests/data/make_reference_masks.py``: cat, espresso cup with saucer, astronaut, cameraman, motorcycle),
for every input size x feature representation x tau, and scores the segments against the mask:

- **best IoU**: the IoU with the mask of the single segment that matches it best;
- **union IoU**: the IoU with the mask of the union of the segments lying mostly (more than half) inside it;
- **segments**: the number of segments K.

The grid labels are upsampled to the photo's own size by nearest neighbour (no concept assignment or
refinement, so only the cut itself is judged). Each photo is prepared as the engine prepares it in its
default ``resize`` mode (the whole photo squashed to size x size, plain bilinear; ``--antialias`` uses an
antialiased resize instead) and encoded once per size and representation; the features are reused across
taus.

For each (size, representation) the script prints the sweep (per tau: mean best IoU, mean union IoU, range
of K over the photos), then a summary: the one tau shared by all photos that maximises the mean best IoU
(ties broken by the mean union IoU, then by the smaller tau), with both means and the K range at that tau;
and the per-photo figures at the engine's preset (``DEFAULT_SIZE``, ``TAU_PRESETS["efficientnet-lite0"]``,
``DEFAULT_FEATURES``: 768 px, tau 0.08, ``"s32"``). The "grid bound" is the IoU of the best mask a grid of
that size can draw (cells mostly inside the object), an upper limit for both scores.

Command for the table in ``diffcut_engine/encoders/lite.py`` (about 4 minutes on 2 CPU cores):

    python benchmarks/lite_feature_choice.py --sizes 512,768,1024 --features s32,head,s16+s32

and for the size sweep of ``s32``:

    python benchmarks/lite_feature_choice.py --sizes 512,640,768,896,1024 --features s32

Needs the ``[lite]`` extra (weights), scikit-image (photos) and torch; runs on the CPU with 2 threads
(``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
sys.path.insert(0, ROOT)

from make_reference_masks import POLYGONS, photo, reference_mask  # noqa: E402

from diffcut_engine.config import TAU_PRESETS  # noqa: E402
from diffcut_engine.encoders.lite import DEFAULT_FEATURES, DEFAULT_SIZE, FEATURE_CHOICES, LiteEncoder  # noqa: E402
from diffcut_engine.graph import recursive_ncut  # noqa: E402
from diffcut_engine.images import load_image, prepare  # noqa: E402

#: Default tau sweep: fine steps where the Lite0 features change their segment count, coarse beyond.
DEFAULT_TAUS = (0.005, 0.01, 0.015, 0.02) + tuple(round(0.03 + 0.01 * i, 3) for i in range(13)) + (
    0.175, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
PRESET = (DEFAULT_SIZE, TAU_PRESETS["efficientnet-lite0"], DEFAULT_FEATURES)
ALPHA = 10.0


def upsample_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour upsampling of an (h, w) grid to (height, width): pixel i takes cell i * h // height."""
    h, w = labels.shape
    return labels[(np.arange(height) * h // height)[:, None], (np.arange(width) * w // width)[None, :]]


def score(grid_labels: np.ndarray, mask: np.ndarray):
    """(best single-segment IoU, IoU of the union of the segments mostly inside the mask) for one photo."""
    labels = upsample_nearest(grid_labels, *mask.shape)
    best, union = 0.0, np.zeros_like(mask)
    for k in range(int(grid_labels.max()) + 1):
        segment = labels == k
        inter = int((segment & mask).sum())
        best = max(best, inter / int((segment | mask).sum()))
        if inter > segment.sum() / 2:
            union |= segment
    return best, int((union & mask).sum()) / max(int((union | mask).sum()), 1)


def grid_bound(mask: np.ndarray, grid: int) -> float:
    """IoU with the mask of the cells of a grid x grid partition that lie mostly inside it."""
    cells = upsample_nearest(np.arange(grid * grid).reshape(grid, grid), *mask.shape).ravel()
    inside = np.bincount(cells, weights=mask.ravel(), minlength=grid * grid) / np.bincount(cells, minlength=grid * grid)
    drawn = (inside > 0.5)[cells].reshape(mask.shape)
    return float((drawn & mask).sum() / (drawn | mask).sum())


def net_input(image: np.ndarray, size: int, antialias: bool) -> torch.Tensor:
    """(1, 3, size, size) pixels in [-1, 1], as the engine's ``resize`` mode builds them (or antialiased)."""
    if not antialias:
        pixels, _, _ = prepare(load_image(image), (size, size), "resize")
        return pixels[None]
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 127.5 - 1
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


def parse_list(text: str, kind):
    return [kind(v) for v in text.split(",") if v.strip()]


def choose_tau(rows):
    """The row (one tau, all photos) with the highest mean best IoU; ties: higher mean union IoU, smaller tau."""
    return max(rows, key=lambda r: (r["mean_best"], r["mean_union"], -r["tau"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,768,1024", help="square input sizes, multiples of 32 (comma list)")
    ap.add_argument("--features", default=",".join(FEATURE_CHOICES),
                    help=f"representations, from {', '.join(FEATURE_CHOICES)} (comma list)")
    ap.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS), help="NCut thresholds (comma list)")
    ap.add_argument("--max-segments", type=int, default=80,
                    help="stop a photo's sweep after a tau that gives more segments than this (default 80); "
                         "taus not run for every photo are left out of the summary")
    ap.add_argument("--antialias", action="store_true",
                    help="antialiased bilinear resize instead of the engine's plain bilinear resize")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--json", help="write every per-photo record and the summary to this file")
    args = ap.parse_args(argv)

    sizes = parse_list(args.sizes, int)
    features = parse_list(args.features, str)
    taus = sorted(set(parse_list(args.taus, float)))
    for f in features:
        if f not in FEATURE_CHOICES:
            ap.error(f"unknown feature representation {f!r}; choose from {', '.join(FEATURE_CHOICES)}")
    for s in sizes:
        if s <= 0 or s % 32:
            ap.error(f"sizes must be positive multiples of 32, got {s}")
    torch.set_num_threads(args.threads)

    photos = [(name, loader, photo(loader), reference_mask(name)) for name, (loader, _) in POLYGONS.items()]
    names = [loader for _, loader, _, _ in photos]
    needed = {f for f in features} | {PRESET[2]}
    encoders = {f: LiteEncoder.from_pretrained(device="cpu", dtype="fp32", features=f) for f in sorted(needed)}

    # (size, feature) -> list of per-photo dicts of tau -> (K, best, union)
    runs = [(s, f, taus) for s in sizes for f in features]
    if not any(s == PRESET[0] and f == PRESET[2] and PRESET[1] in taus for s, f, _ in runs):
        runs.append((PRESET[0], PRESET[2], [PRESET[1]]))
    records, bounds = [], {}
    t_start = time.perf_counter()
    for size, feat, run_taus in runs:
        t0 = time.perf_counter()
        for name, loader, image, mask in photos:
            bounds.setdefault(size, {})[loader] = grid_bound(mask, size // 32)
            grid = encoders[feat].encode(net_input(image, size, args.antialias))[0].numpy()
            for tau in run_taus:
                labels = recursive_ncut(grid, alpha=ALPHA, tau=tau)
                k = int(labels.max()) + 1
                best, union = score(labels, mask)
                records.append({"size": size, "features": feat, "tau": tau, "photo": loader, "segments": k,
                                 "best_iou": best, "union_iou": union})
                if k > args.max_segments:
                    break
        print(f"# size {size}, {feat}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    def rows_for(size, feat):
        rows = []
        for tau in taus:
            r = [x for x in records if x["size"] == size and x["features"] == feat and x["tau"] == tau]
            if len(r) != len(photos):
                continue
            r.sort(key=lambda x: names.index(x["photo"]))
            ks = [x["segments"] for x in r]
            rows.append({"tau": tau, "mean_best": float(np.mean([x["best_iou"] for x in r])),
                         "mean_union": float(np.mean([x["union_iou"] for x in r])),
                         "segments_min": min(ks), "segments_max": max(ks), "photos": r})
        return rows

    summary = []
    print(f"EfficientNet-Lite0 features vs hand-drawn masks ({', '.join(names)}); recursive_ncut alpha {ALPHA:g}; "
          f"resize {'antialiased' if args.antialias else 'plain bilinear (engine)'}")
    for size in sizes:
        print(f"\n== {size} px ({size // 32} x {size // 32} grid); grid bound IoU: "
              + " ".join(f"{n}={bounds[size][n]:.2f}" for n in names))
        for feat in features:
            rows = rows_for(size, feat)
            print(f"  {feat}")
            print("    tau     mean best  mean union  K range   K per photo")
            for r in rows:
                print(f"    {r['tau']:<7g} {r['mean_best']:9.3f}  {r['mean_union']:10.3f}  "
                      f"{r['segments_min']:3d}-{r['segments_max']:<4d}  "
                      + ",".join(f"{x['segments']}" for x in r["photos"]))
            if rows:
                b = choose_tau(rows)
                summary.append({"size": size, "features": feat, "tau": b["tau"], "mean_best": b["mean_best"],
                                "mean_union": b["mean_union"], "segments_min": b["segments_min"],
                                "segments_max": b["segments_max"]})

    print("\nBest shared tau per (size, features): mean best-segment IoU (mean union IoU), K range at that tau")
    print(f"  {'size':<8}" + "".join(f"{f:<30}" for f in features))
    for size in sizes:
        cells = []
        for feat in features:
            s = next((x for x in summary if x["size"] == size and x["features"] == feat), None)
            cells.append("-" if s is None else f"{s['mean_best']:.2f} ({s['mean_union']:.2f}) tau {s['tau']:g} "
                         f"K {s['segments_min']}-{s['segments_max']}")
        print(f"  {str(size) + ' px':<8}" + "".join(f"{c:<30}" for c in cells))

    p_size, p_tau, p_feat = PRESET
    preset = sorted((x for x in records if (x["size"], x["tau"], x["features"]) == PRESET),
                    key=lambda x: names.index(x["photo"]))
    print(f"\nEngine preset ({p_size} px, tau {p_tau:g}, {p_feat}):")
    print(f"  {'photo':<18} {'K':>3}  {'best IoU':>8}  {'union IoU':>9}  {'grid bound':>10}")
    for x in preset:
        print(f"  {x['photo']:<18} {x['segments']:3d}  {x['best_iou']:8.3f}  {x['union_iou']:9.3f}  "
              f"{bounds[p_size][x['photo']]:10.3f}")
    print(f"  {'mean':<18} {'':>3}  {np.mean([x['best_iou'] for x in preset]):8.3f}  "
          f"{np.mean([x['union_iou'] for x in preset]):9.3f}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", file=sys.stderr)

    if args.json:
        result = {"benchmark": "EfficientNet-Lite0 feature choice vs hand-drawn masks",
                  "alpha": ALPHA, "antialias": args.antialias, "sizes": sizes, "features": features, "taus": taus,
                  "max_segments": args.max_segments, "photos": names, "grid_bound": bounds,
                  "summary": summary, "preset": {"size": p_size, "tau": p_tau, "features": p_feat, "photos": preset},
                  "records": records, "torch": torch.__version__, "threads": args.threads,
                  "machine": platform.platform()}
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
