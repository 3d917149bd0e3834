"""Per-stage time of the whole pipeline, offline (efficientnet-lite0 backbone) on the bundled photos.

    python benchmarks/bench_pipeline.py [--repeats 3] [--no-refine] [--json out.json]

Prints the median seconds per stage (load, preprocess, encode, graph, assign, refine, total) per image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import torch

from diffcut_engine import Engine

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = [os.path.join(HERE, "..", "examples", n) for n in ("chelsea.jpg", "coffee.jpg")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default=None, help="network input size (default: the backbone's preset)")
    ap.add_argument("--no-refine", dest="refine", action="store_false")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    engine = Engine.from_pretrained(backbone="efficientnet-lite0", device="cpu", size=args.size,
                                    refine=args.refine)
    engine.segment(IMAGES[0])  # warm-up
    rows = {}
    for path in IMAGES:
        runs = [engine.segment(path) for _ in range(args.repeats)]
        stages = runs[0].timings.keys()
        rows[os.path.basename(path)] = {
            "size": list(runs[0].labels.shape), "num_segments": runs[0].num_segments,
            "median_s": {k: statistics.median(r.timings[k] for r in runs) for k in stages},
        }
    print(f"{engine!r}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    for name, row in rows.items():
        cells = "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in row["median_s"].items())
        print(f"{name} ({row['size'][1]}x{row['size'][0]}, {row['num_segments']} segments): {cells}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"engine": repr(engine), "torch": torch.__version__, "results": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
