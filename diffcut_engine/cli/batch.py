"""``diffcut batch``: segment a whole dataset (images, and videos split into frame ranges) on Ray Data, locally or
on a cluster, resumably, with a Parquet manifest. Needs the ``[ray]`` extra."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import EXIT_OK, EXIT_SOME_FAILED, add_engine_options, add_run_flags, config_from_args

BATCH_EXAMPLES = """examples:
  diffcut batch photos/ 'more/*.jpg' -o out/ --backbone efficientnet-lite0 --num-workers 2   # local Ray
  diffcut batch /data/clips/ -o /shared/out --address auto --num-workers 8 --gpus-per-worker 1 --device cuda
  diffcut batch photos/ -o out/ ...      # again: items done with the same configuration are skipped

Writes <name>_labels.png per image, <name>_frame_NNNNNN_labels.png per video frame, and out/manifest.parquet
(input, outputs, status, error, segment counts, per-stage timings, configuration hash). A killed run resumes.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``batch`` sub-command to the ``diffcut`` parser's sub-parsers and return it."""
    p = subparsers.add_parser("batch", help="segment a dataset on Ray (local or cluster), resumable",
                              description="Segment images and video frames with a pool of Ray actors (one engine "
                              "each, loaded once) and write label PNGs and a Parquet manifest. Items already done "
                              "with the same engine configuration are skipped; failing items are retried, then "
                              "recorded with their error. Needs pip install 'diffcut-engine[ray]'.",
                              epilog=BATCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR",
                   help="output folder (on a cluster: a file system every node sees)")
    g = p.add_argument_group("ray")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join (auto, HOST:PORT or ray://HOST:10001); default: a local Ray started "
                   "in this process")
    g.add_argument("--num-workers", type=int, default=1, metavar="N", help="actors, one engine each (default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per actor (default 0)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs per actor (default 1)")
    g.add_argument("--frames-per-item", type=int, default=64, metavar="N",
                   help="video frames per work item (default 64)")
    g.add_argument("--retries", type=int, default=2, metavar="N",
                   help="further attempts of a failing item; unreadable inputs fail at once (default 2)")
    add_engine_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--save-npy", action="store_true", help="also write the labels as .npy (int32)")
    g.add_argument("--overlay", action="store_true", help="also write colour overlay PNGs")
    add_run_flags(g)
    p.set_defaults(func=cmd_batch)
    return p


def cmd_batch(args) -> int:
    """Run ``diffcut batch``; exit code 0, or 1 when some items failed (they are in the manifest)."""
    from ..distributed import run_batch

    config = config_from_args(args)
    summary = run_batch(args.inputs, args.output, config, address=args.address, num_workers=args.num_workers,
                        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                        frames_per_item=args.frames_per_item, retries=args.retries, overlay=args.overlay,
                        save_npy=args.save_npy, progress=not args.quiet, log=sys.stderr)
    print(summary.line())
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK
