"""``diffcut bench``: per-stage latency, throughput and memory of the pipeline; the table goes to stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..outputs import check_output_path, write_text_file
from .options import EXIT_OK, add_engine_options, add_run_flags, config_from_args

BENCH_EXAMPLES = """examples:
  diffcut bench --backbone efficientnet-lite0 --size 512 --iters 20              # offline, CPU or GPU
  diffcut bench --backbone efficientnet-lite0 --input-size 1280x720 --json lite.json
  diffcut bench --model segmind/SSD-1B --device cuda --batch-size 8 --json ssd1b-torch.json
  diffcut bench --backend onnx --engine-dir ssd1b-onnx/ --batch-size 8 --json ssd1b-onnx.json
  diffcut bench --model path/to/random-weight-pipeline --local-files-only        # any local diffusers folder

Every backend writes the same JSON layout (schema diffcut-bench/1), so runs can be compared.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command to the ``diffcut`` parser's sub-parsers and return it."""
    b = subparsers.add_parser("bench", help="per-stage latency, throughput and memory of the pipeline",
                              description="Warm up, then time batches end to end and per stage (preprocess, "
                              "encoder, affinity, NCut, graph, assign, refine): p50/p90/p99 latency, throughput, "
                              "peak host and device memory, machine and versions. The same JSON layout for every "
                              "backend.", epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = b.add_argument_group("benchmark")
    g.add_argument("--iters", type=int, default=10, metavar="N", help="timed batches (default 10)")
    g.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed batches first (default 2)")
    g.add_argument("--input", default=None, metavar="IMAGE",
                   help="input image (default: the scikit-image photo coffee, 600x400)")
    g.add_argument("--input-size", default=None, metavar="WxH",
                   help="resize the default input to this size (default: its own); labels are computed at it")
    g.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the report as JSON")
    add_engine_options(b, batch_size=1)
    add_run_flags(b)
    b.set_defaults(func=cmd_bench)
    return b


def cmd_bench(args) -> int:
    """Run ``diffcut bench``."""
    from ..bench import format_report, run_bench
    from ..engine import Engine

    if args.json:  # a report that cannot be written fails now, not after the run
        check_output_path(args.json, "--json")
    t0 = time.perf_counter()
    engine = Engine(config_from_args(args))
    report = run_bench(engine, batch_size=args.batch_size, iters=args.iters, warmup=args.warmup, image=args.input,
                       input_size=args.input_size, load_seconds=time.perf_counter() - t0,
                       progress=not args.quiet)
    print(format_report(report))
    if args.json:
        write_text_file(args.json, json.dumps(report, indent=1), "--json report")
        print(f"report written to {args.json}", file=sys.stderr)
    return EXIT_OK
