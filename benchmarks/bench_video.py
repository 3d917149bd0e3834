"""Frames per second of `diffcut video` on a synthetic clip (moving shapes over a smooth background, AAC audio).

    python benchmarks/bench_video.py [--size-in 1280x720] [--frames 48] [--fps 24] [--background IMAGE]
                                     [--json out.json] [-- `diffcut video` options, e.g. --backbone efficientnet-lite0]

Writes the clip and the output to a temporary folder and prints the run's statistics (frames per second, label
stability); the options after ``--`` go to ``diffcut video`` unchanged (default: the offline lite backbone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np


def make_clip(path: str, *, width: int, height: int, frames: int, fps: int, seed: int = 0, background=None):
    import av

    from diffcut_engine.bench import bench_image

    if background is None:
        background = bench_image(height, width, seed=seed)
    else:
        from PIL import Image

        background = np.asarray(Image.open(background).convert("RGB").resize((width, height), Image.BILINEAR))
    rng = np.random.default_rng(seed)
    shapes = [(rng.uniform(0.1, 0.6) * height, rng.uniform(0.0, 0.5) * width, rng.uniform(-6, 6),
               rng.uniform(4, 12), rng.integers(40, 230, size=3), int(rng.uniform(0.12, 0.25) * height))
              for _ in range(3)]
    out = av.open(path, "w")
    vs = out.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    aus = out.add_stream("aac", rate=44100)
    aus.layout = "mono"
    for i in range(frames):
        img = background.copy()
        for y, x, dy, dx, colour, side in shapes:
            top, left = int(y + dy * i) % (height - side), int(x + dx * i) % (width - side)
            img[top:top + side, left:left + side] = colour
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        for p in vs.encode(frame):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    t = np.arange(int(44100 * frames / fps)) / 44100
    tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    for k in range(0, tone.size, 1024):
        af = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="fltp", layout="mono")
        af.sample_rate, af.pts = 44100, k
        for p in aus.encode(af):
            out.mux(p)
    for p in aus.encode():
        out.mux(p)
    out.close()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else ["--backbone", "efficientnet-lite0"]
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-in", default="1280x720", help="clip size WxH (default 1280x720)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--background", default=None, metavar="IMAGE",
                    help="photo resized to the clip size as background (default: a synthetic image)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from diffcut_engine.cli import main as diffcut
    from diffcut_engine.config import parse_size

    h, w = parse_size(args.size_in)
    with tempfile.TemporaryDirectory() as tmp:
        clip, out, stats = (os.path.join(tmp, n) for n in ("clip.mp4", "out.mp4", "stats.json"))
        make_clip(clip, width=w, height=h, frames=args.frames, fps=args.fps, background=args.background)
        rc = diffcut(["video", clip, "-o", out, "--stats", stats, "-q", *extra])
        report = json.load(open(stats))
    report["command_extra"] = extra
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return rc


if __name__ == "__main__":
    sys.exit(main())
