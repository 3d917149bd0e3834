"""``diffcut video``: streaming video segmentation with segment ids kept stable across frames.

One summary line goes to stdout, progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from ..outputs import check_output_path, write_text_file
from .options import (EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, add_engine_options, add_run_flags, config_from_args,
                      positive_int)

VIDEO_EXAMPLES = """examples:
  diffcut video clip.mp4 -o clip_seg.mp4 --backbone efficientnet-lite0 --size 512     # offline backbone
  diffcut video clip.mp4 -o out.mp4 --labels-out labels.npz --every 2 --batch-size 8  # labels of every 2nd frame
  diffcut video clip.mkv -o out.mp4 --labels-out labels/ --max-frames 300 --stats stats.json
  diffcut video clip.mp4 -o out.mp4 --model segmind/SSD-1B --size 1024x576 --device cuda

The output keeps the input's frame rate, time base and timestamps, and its audio (copied). Segment ids are matched
from frame to frame, so a region keeps its id and colour; the summary gives the label stability.
"""

def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``video`` sub-command to the ``diffcut`` parser's sub-parsers and return it."""
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
    g.add_argument("--every", type=positive_int, default=1, metavar="N",
                   help="segment every N-th frame; the frames between keep the last labels (default 1)")
    g.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="stop after N input frames")
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
    return p


def cmd_video(args) -> int:
    """Run ``diffcut video``; exit code 0, or 1 when the stream broke off (what was written is kept)."""
    from ..engine import Engine
    from ..video import VideoError, check_output, probe_video, segment_video, write_video

    if args.output.exists() and args.output.is_dir():
        raise InputError(f"--output {args.output} is a folder; give a video file name such as out.mp4")
    probe_video(args.input)  # an unreadable input fails before the model is loaded
    # not the input, a known container, writable; the codec and opacity valid
    check_output(args.output, args.input, labels_out=args.labels_out, codec=args.codec, opacity=args.opacity)
    if args.stats:
        check_output_path(args.stats, "--stats")
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
    except VideoError as exc:  # the stream broke off, or a write failed: what was written is closed and kept
        error = exc
    stats = video.stats
    summary = {"input": args.input, "output": str(args.output), "engine": repr(engine),
               "fps_in": float(info.fps), "time_base": str(info.time_base), "size": [info.width, info.height],
               "audio": bool(info.has_audio and args.audio), **stats.as_dict(),
               "error": None if error is None else str(error)}
    if args.stats:
        write_text_file(args.stats, json.dumps(summary, indent=1), "--stats file")
    stab = "n/a" if stats.label_stability is None else f"{stats.label_stability:.3f}"
    raw = "n/a" if stats.raw_label_stability is None else f"{stats.raw_label_stability:.3f}"
    print(f"{args.input} -> {args.output}: {stats.frames} frames ({stats.segmented} segmented) in "
          f"{stats.seconds:.1f} s, {stats.fps:.2f} frames/s; {stats.mean_segments:.1f} segments per frame, "
          f"{stats.num_ids} ids; label stability {stab} (per-frame ids {raw})")
    if error is not None:
        if error.frames_done and args.output.is_file():
            print(f"error: {error}; the {error.frames_done} frames before it were written to {args.output}",
                  file=sys.stderr)
        else:
            print(f"error: {error}; no frame was written", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_SOME_FAILED
    return EXIT_OK
