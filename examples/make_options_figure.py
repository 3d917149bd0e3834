"""Make the README figure of the granularity and overlay options: one NCut tree, several segment counts.

Runs offline with the efficientnet-lite0 backbone on scikit-image's coffee photo (examples/coffee.jpg):

    python examples/make_options_figure.py [--image examples/coffee.jpg] [--out docs/example_options.png]

The image is encoded once and its NCut tree built once (``segments=K`` of the finest panel, ``return_tree``);
the coarser panels are cuts of the same tree (``granularity.tau_for_segments`` + ``Engine.at_tau``), drawn with
the ``blend`` and ``contour`` overlay styles of ``diffcut segment --overlay``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from diffcut_engine import Engine
from diffcut_engine.granularity import tau_for_segments
from diffcut_engine.viz import render

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=os.path.join(HERE, "coffee.jpg"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "docs", "example_options.png"))
    ap.add_argument("--segments", default="3,6,12", help="segment counts of the panels, coarse to fine")
    ap.add_argument("--width", type=int, default=300, help="width of each panel in pixels")
    args = ap.parse_args(argv)
    counts = sorted(int(k) for k in args.segments.split(","))

    engine = Engine.from_pretrained(backbone="efficientnet-lite0", device="cpu")
    finest = engine.segment(args.image, segments=counts[-1], return_tree=True, return_features=True)
    segs = [engine.at_tau(finest, tau_for_segments(finest.tree, k)[0], args.image) for k in counts[:-1]]
    segs.append(finest)
    photo = finest.image_rgb(args.image)
    h, w = photo.shape[:2]
    size = (args.width, round(h * args.width / w))
    panels = [(Image.fromarray(photo), "input (scikit-image coffee)")]
    for k, seg, style in zip(counts, segs, ["blend", "contour", "blend", "contour"] * 4):
        picture = render(photo, seg.labels, style, opacity=0.55 if style == "blend" else 1.0)
        panels.append((Image.fromarray(picture),
                       f"--segments {k}: {seg.num_segments} at tau {seg.tau:.3f} ({style})"))
    pad, top = 6, 18
    canvas = Image.new("RGB", (len(panels) * (size[0] + pad) + pad, size[1] + top + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(panels):
        x = pad + i * (size[0] + pad)
        canvas.paste(panel.resize(size, Image.LANCZOS), (x, top))
        draw.text((x, 4), title, fill="black")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"{args.out}: {os.path.getsize(args.out) / 1024:.0f} KB")
    for k, seg in zip(counts, segs):
        print(f"segments={k}: {seg.num_segments} segments at tau {seg.tau:.4f}")
    # the scale of tau for this backbone: segment counts of the same tree at a few taus
    probe = [t for t in (0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3) if t <= finest.tree.tau_max]
    print("tau -> segments:", ", ".join(f"{t:g}: {finest.tree.num_segments(t)}" for t in probe),
          f"(default tau {engine.tau:g}; tree built to {finest.tree.tau_max:g})")
    return np.asarray(canvas).shape


if __name__ == "__main__":
    main()
