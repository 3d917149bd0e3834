"""``diffcut video`` and ``diffcut bench``: streaming video segmentation and the latency benchmark.

Registered by :func:`diffcut_engine.cli.build_parser` through :func:`add_video_and_bench_parsers`. Results go to
stdout (one summary line; the bench table), progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .cli import add_engine_options, add_run_flags, config_from_args

VIDEO_EXAMPLES = """examples:
  diffcut video clip.mp4 -o clip_seg.mp4 --backbone efficientnet-lite0 --size 512     # offline backbone
  diffcut video clip.mp4 -o out.mp4 --labels-out labels.npz --every 2 --batch-size 8  # labels of every 2nd frame
  diffcut video clip.mkv -o out.mp4 --labels-out labels/ --max-frames 300 --stats stats.json
  diffcut video clip.mp4 -o out.mp4 --model segmind/SSD-1B --size 1024x576 --device cuda

The output keeps the input's frame rate, time base and timestamps, and its audio (copied). Segment ids are matched
from frame to frame, so a region keeps its id and colour; the summary gives the label stability.
"""

BENCH_EXAMPLES = """examples:
  diffcut bench --backbone efficientnet-lite0 --size 512 --iters 20              # offline, CPU or GPU
  diffcut bench --backbone efficientnet-lite0 --input-size 1280x720 --json lite.json
  diffcut bench --model segmind/SSD-1B --device cuda --batch-size 8 --json ssd1b-torch.json
  diffcut bench --backend onnx --engine-dir ssd1b-onnx/ --batch-size 8 --json ssd1b-onnx.json
  diffcut bench --model path/to/random-weight-pipeline --local-files-only        # any local diffusers folder

Every backend writes the same JSON layout (schema diffcut-bench/1), so runs can be compared.
"""


def add_video_and_bench_parsers(subparsers):
    """Add the ``video`` and ``bench`` sub-commands to the ``diffcut`` parser's sub-parsers."""
    p = subparsers.add_parser("video", help="segment a video, streaming, with ids stable across frames",
                              description="Segment every frame (or every N-th) of a video with DiffCut and write "
                              "an overlay video with the input's frame rate, time base and audio. Decoding, the "
                              "encoder, the graph stage and writing run in parallel; segment ids are matched "
                              "between frames so a region keeps its id and colour. Needs the [video] extra.",
                              epilog=VIDEO_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="input video file (anything FFmpeg decodes)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT",
                   help="output video (.mp4, .mkv, .mov, .webm)")
    g = p.add_argument_group("video")
    g.add_argument("--labels-out", type=Path, default=None, metavar="DIR|FILE.npz",
                   help="also write the label maps (tracked ids) of the segmented frames: a folder of 16-bit "
                   "PNGs frame_NNNNNN.png, or one .npz")
    g.add_argument("--every", type=int, default=1, metavar="N",
                   help="segment every N-th frame; the frames between keep the last labels (default 1)")
    g.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N input frames")
    g.add_argument("--no-tracking", dest="tracking", action="store_false",
                   help="keep each frame's own NCut ids (no matching between frames)")
    g.add_argument("--match-threshold", type=float, default=0.8, metavar="COS",
                   help="minimum cosine similarity of segment concepts to keep an id (default 0.8)")
    g.add_argument("--memory", type=int, default=30, metavar="FRAMES",
                   help="frames a vanished segment is remembered, to get its id back (default 30)")
    g.add_argument("--graph-workers", type=int, default=1, metavar="N",
                   help="threads for the graph stage and refinement (default 1)")
    g.add_argument("--no-audio", dest="audio", action="store_false", help="do not copy the audio")
    g.add_argument("--codec", default=None, help="video codec (default libx264, else mpeg4; VP9 for .webm)")
    g.add_argument("--opacity", type=float, default=0.5, help="weight of the segment colours (default 0.5)")
    g.add_argument("--stats", type=Path, default=None, metavar="FILE.json", help="write the run's statistics")
    add_engine_options(p)
    add_run_flags(p)
    p.set_defaults(func=cmd_video)

    b = subparsers.add_parser("bench", help="per-stage latency, throughput and memory of the pipeline",
                              description="Warm up, then time batches end to end and per stage (preprocess, "
                              "encoder, affinity, NCut, graph, assign, refine): p50/p90/p99 latency, throughput, "
                              "peak host and device memory, machine and versions. The same JSON layout for every "
                              "backend.", epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = b.add_argument_group("benchmark")
    g.add_argument("--iters", type=int, default=10, metavar="N", help="timed batches (default 10)")
    g.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed batches first (default 2)")
    g.add_argument("--input", default=None, metavar="IMAGE",
                   help="input image (default: a synthetic image of --input-size)")
    g.add_argument("--input-size", default=None, metavar="WxH",
                   help="size of the synthetic input (default: the network size); labels are computed at it")
    g.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the report as JSON")
    add_engine_options(b, batch_size=1)
    add_run_flags(b)
    b.set_defaults(func=cmd_bench)


def cmd_video(args) -> int:
    from .cli import EXIT_OK, EXIT_SOME_FAILED
    from .engine import Engine
    from .errors import InputError
    from .video import VideoError, probe_video, segment_video, write_video

    if args.output.exists() and args.output.is_dir():
        raise InputError(f"--output {args.output} is a folder; give a video file name such as out.mp4")
    probe_video(args.input)  # an unreadable input fails before the model is loaded
    config = config_from_args(args)
    engine = Engine(config)
    print(f"# {engine!r}", file=sys.stderr)
    video = segment_video(engine, args.input, every=args.every, max_frames=args.max_frames,
                          batch_size=args.batch_size, tracking=args.tracking, match_threshold=args.match_threshold,
                          memory=args.memory, graph_workers=args.graph_workers, progress=not args.quiet)
    info = video.info
    error = None
    try:
        write_video(video, args.output, labels_out=args.labels_out, audio=args.audio, codec=args.codec,
                    opacity=args.opacity)
    except VideoError as exc:  # the stream broke off: what was written is closed properly and kept
        error = exc
    stats = video.stats
    summary = {"input": args.input, "output": str(args.output), "engine": repr(engine),
               "fps_in": float(info.fps), "time_base": str(info.time_base), "size": [info.width, info.height],
               "audio": bool(info.has_audio and args.audio), **stats.as_dict(),
               "error": None if error is None else str(error)}
    if args.stats:
        args.stats.parent.mkdir(parents=True, exist_ok=True)
        args.stats.write_text(json.dumps(summary, indent=1))
    stab = "n/a" if stats.label_stability is None else f"{stats.label_stability:.3f}"
    raw = "n/a" if stats.raw_label_stability is None else f"{stats.raw_label_stability:.3f}"
    print(f"{args.input} -> {args.output}: {stats.frames} frames ({stats.segmented} segmented) in "
          f"{stats.seconds:.1f} s, {stats.fps:.2f} frames/s; {stats.mean_segments:.1f} segments per frame, "
          f"{stats.num_ids} ids; label stability {stab} (per-frame ids {raw})")
    if error is not None:
        print(f"error: {error}; the {stats.frames} frames before it were written to {args.output}",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def cmd_bench(args) -> int:
    from .bench import format_report, run_bench
    from .cli import EXIT_OK
    from .engine import Engine

    t0 = time.perf_counter()
    engine = Engine(config_from_args(args))
    report = run_bench(engine, batch_size=args.batch_size, iters=args.iters, warmup=args.warmup, image=args.input,
                       input_size=args.input_size, load_seconds=time.perf_counter() - t0,
                       progress=not args.quiet)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"report written to {args.json}", file=sys.stderr)
    return EXIT_OK
