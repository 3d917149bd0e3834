"""Which automatic threshold rule for the random-walk NCut (``method="rwncut"``): scored against hand-drawn masks.

The study behind the default of :class:`~diffcut_engine.methods.rwncut_options.RWNCutOptions` ``threshold``
(issue 20). For every photo with a hand-drawn reference mask (``tests/data/make_reference_masks.py``), the
offline ``efficientnet-lite0`` backbone encodes the photo once at the engine's preset size (768 px); then

- **DiffCut** with the backbone's preset tau (0.08) runs through the engine's own stages (trees, concept
  assignment, PAMR): the reference the issue sets;
- **rwncut** runs with every threshold rule on the random walk of the same features
  (:meth:`~diffcut_engine.methods.rwncut.RWNCutPipeline.segment_matrices`: the method's own graph stage, DiffSeg
  pixel labels, PAMR), at the method's defaults otherwise (``min_size`` 16, flow graph, k = 1): ``tree`` (the
  widest gap of the NCut values along the over-split tree, with the blank-image null), ``tree`` without the null,
  ``random`` (expected NCut of a random split: a null model of the graph's size and density), ``mean`` (mean NCut
  along the same Fiedler vector), ``gap`` (spectral eigengap lambda_3 > 2 lambda_2), ``null`` (the random-graph
  lambda_2 of the same effective degree, Alon-Boppana) and ``constant`` at the preset tau.

Each result is scored with the evaluation harness's per-image Hungarian matching
(:func:`~diffcut_engine.eval.metrics.score_image`, two classes: object and background): the **matched IoU** of
an image is the mean of the two classes' IoU after matching; the table gives its mean over the photos, the number
of segments per photo and the **leaves stopped by min_size**: segments the rule never judged because ``min_size``
left them no candidate split (all of them for a superpixel grid, the issue's complaint; a kept segment smaller
than 2 x min_size also counts), with the number of photos that have any. A second table runs the
same rules on structureless inputs (blank black, grey, white and uniform-noise images), where one segment is
the right answer.

Honesty note: the photos are the ones the ``tree`` rule was designed and checked on (and the ones the lite
tau preset 0.08 was chosen on): these figures are not a held-out evaluation.

Command for the table in benchmarks/RESULTS.md and the README (about 5 minutes on 2 busy CPU cores):

    python benchmarks/rwncut_rules.py

Needs the ``[lite]`` extra (weights), scikit-image (photos) and torch; CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
sys.path.insert(0, ROOT)

from make_reference_masks import POLYGONS, photo, reference_mask  # noqa: E402

from diffcut_engine import Engine  # noqa: E402
from diffcut_engine.eval.metrics import score_image  # noqa: E402
from diffcut_engine.graph.tree import preorder  # noqa: E402
from diffcut_engine.methods.rwncut import RWNCutOptions  # noqa: E402

#: (column name, rwncut options) of the compared rules.
RULES = [
    ("tree", dict(threshold="tree")),
    ("tree, no blank null", dict(threshold="tree", blank_null=False)),
    ("random", dict(threshold="random")),
    ("mean", dict(threshold="mean")),
    ("gap", dict(threshold="gap")),
    ("null", dict(threshold="null")),
    ("constant tau", dict(threshold="constant")),
]


def matched_iou(labels: np.ndarray, mask: np.ndarray) -> float:
    """Mean IoU of object and background after the harness's Hungarian matching of segments to the 2 classes."""
    s = score_image(labels, mask.astype(np.int64), 2)
    return float(np.mean(s.tp / np.maximum(s.tp + s.fp + s.fn, 1)))


def min_size_stopped(res) -> int:
    """Leaves of the final hierarchy that the rule never judged (no finite split value: ``min_size`` left them no
    candidate split)."""
    return sum(not nd.is_split and not np.isfinite(nd.value) for nd in preorder(res.tree))


def structureless_inputs(rng):
    yield "black", np.zeros((240, 320, 3), np.uint8)
    yield "grey", np.full((240, 320, 3), 128, np.uint8)
    yield "white", np.full((240, 320, 3), 255, np.uint8)
    yield "noise", rng.integers(0, 256, (240, 320, 3)).astype(np.uint8)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the per-photo figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    eng = Engine.from_pretrained(backbone="efficientnet-lite0", device="cpu")
    rw = Engine(eng.config.replace(method="rwncut"), encoder=eng.encoder).method_pipeline
    print(f"# {eng!r}; rwncut source={rw.source}, min_size={rw.options.min_size}; blank-image null "
          f"{rw.blank_ceiling(eng.config.size):.4f}")
    rows = {name: [] for name in ["DiffCut (preset tau)"] + [r[0] for r in RULES]}
    per_photo = []
    t_all = time.perf_counter()
    for mask_file, (loader, _) in POLYGONS.items():
        mask = reference_mask(mask_file)
        prepared = eng.preprocess(photo(loader), name=loader)
        feats = eng.encode([prepared])
        tree = eng.trees(feats)[0]
        dc = eng.labels(prepared, feats[0], tree)
        rows["DiffCut (preset tau)"].append((matched_iou(dc.labels, mask), dc.num_segments, False))
        P, grid, f = rw.feature_walk(feats)
        entry = {"photo": loader, "DiffCut (preset tau)": [rows["DiffCut (preset tau)"][-1][0], dc.num_segments]}
        for name, opts in RULES:
            seg, res = rw.segment_matrices([prepared], P, grid, f, eng.tau, options=RWNCutOptions(**opts),
                                           return_graph=True)[0]
            rows[name].append((matched_iou(seg.labels, mask), seg.num_segments, min_size_stopped(res)))
            entry[name] = [rows[name][-1][0], seg.num_segments, rows[name][-1][2]]
        per_photo.append(entry)
        print(f"# {loader}: " + ", ".join(f"{k} {v[0]:.3f}/{v[1]}" for k, v in entry.items() if k != "photo"),
              flush=True)

    names = [p["photo"] for p in per_photo]
    print()
    print("| rule | mean matched IoU | segments (" + ", ".join(names) + ") | leaves stopped by min_size "
          "(photos with any) |")
    print("|---|---|---|---|")
    for name, vals in rows.items():
        iou = np.mean([v[0] for v in vals])
        segs = ", ".join(str(v[1]) for v in vals)
        lim = f"{sum(v[2] for v in vals)} of {sum(v[1] for v in vals)} ({sum(v[2] > 0 for v in vals)})"
        print(f"| {name} | {iou:.3f} | {segs} | {lim if name != 'DiffCut (preset tau)' else '-'} |")

    print()
    rng = np.random.default_rng(0)
    blank_rows = []
    for label, image in structureless_inputs(rng):
        prepared = eng.preprocess(image, name=label)
        feats = eng.encode([prepared])
        P, grid, f = rw.feature_walk(feats)
        dc = eng.labels(prepared, feats[0], eng.trees(feats)[0])
        counts = [dc.num_segments] + [
            rw.segment_matrices([prepared], P, grid, f, eng.tau, options=RWNCutOptions(**opts))[0].num_segments
            for _, opts in RULES]
        blank_rows.append((label, counts))
    print("| structureless input | " + " | ".join(rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for label, counts in blank_rows:
        print(f"| {label} | " + " | ".join(str(c) for c in counts) + " |")
    print(f"\n# {time.perf_counter() - t_all:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"photos": per_photo, "structureless": blank_rows}, fh, indent=1)


if __name__ == "__main__":
    main()
