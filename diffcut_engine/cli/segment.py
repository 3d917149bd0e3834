"""``diffcut segment``: segment images (files, folders, globs) and write label maps, overlays and a summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..outputs import OutputFolder, write_failure
from .options import (EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, add_engine_options, add_run_flags, config_from_args,
                      tau_list)

SEGMENT_EXAMPLES = """examples:
  diffcut segment photo.jpg -o out/                         # DiffCut with SSD-1B (downloads ~5 GB once)
  diffcut segment photos/ 'more/*.png' -o out/ --tau 0.4    # folders and globs
  diffcut segment photo.jpg -o out/ --backbone efficientnet-lite0   # offline backbone, no download
  diffcut segment frame.png -o out/ --size 1024x576 --device cuda --dtype fp16
  diffcut segment photo.jpg -o out/ --backend onnx --engine-dir ssd1b-onnx/   # a `diffcut export` folder
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``segment`` sub-command to the ``diffcut`` parser's sub-parsers and return it."""
    seg = subparsers.add_parser("segment", help="segment images and write label maps and overlays",
                                description="Segment images with DiffCut and write, per image, a label PNG and a "
                                "colour overlay PNG (and optionally the labels as .npy).",
                                epilog=SEGMENT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    seg.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    add_engine_options(seg)
    seg.add_argument("--taus", type=tau_list, default=None, metavar="T1,T2,...",
                     help="several thresholds from one NCut tree per image: writes <name>_tau<T>_labels.png etc. "
                     "for each (replaces --tau)")
    g = seg.add_argument_group("output")
    g.add_argument("--save-npy", action="store_true", help="also write the labels as .npy (int32)")
    g.add_argument("--no-overlay", dest="overlay", action="store_false", help="do not write overlay PNGs")
    add_output_folder_flags(g)
    add_run_flags(g)
    seg.set_defaults(func=cmd_segment)
    return seg


def add_output_folder_flags(group) -> None:
    """``--overwrite`` / ``--resume``: what to do with an output folder that already holds files."""
    m = group.add_mutually_exclusive_group()
    m.add_argument("--overwrite", action="store_true", help="the output folder may hold an earlier run: delete "
                   "the files its summary.json lists, then write (default: refuse a non-empty folder)")
    m.add_argument("--resume", action="store_true", help="the output folder may hold an earlier run: skip the "
                   "inputs it finished, add the others under new names, merge summary.json")


def unique_stem(path_or_name: str, used: set) -> str:
    """The file stem of ``path_or_name``, suffixed ``-1``, ``-2``, ... if already in ``used`` (which it joins)."""
    stem = Path(path_or_name).stem or "image"
    name, k = stem, 1
    while name in used:
        name = f"{stem}-{k}"
        k += 1
    used.add(name)
    return name


def write_outputs(seg, image_view, outdir: Path, stem: str, *, overlay: bool, save_npy: bool) -> list:
    """Write ``<stem>_labels.png`` (uint8, or uint16 above 255 segments), ``<stem>_overlay.png``, ``.npy``."""
    import numpy as np
    from PIL import Image

    from .. import viz

    written = []
    labels = seg.labels
    mode_arr = labels.astype(np.uint8) if labels.max() < 256 else labels.astype(np.uint16)
    p = outdir / f"{stem}_labels.png"
    Image.fromarray(mode_arr).save(p)
    written.append(p)
    if overlay:
        rgb = (image_view.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if rgb.shape[:2] != labels.shape:
            rgb = np.asarray(Image.fromarray(rgb).resize(labels.shape[::-1], Image.BILINEAR))
        p = outdir / f"{stem}_overlay.png"
        Image.fromarray(viz.overlay(rgb, labels)).save(p)
        written.append(p)
    if save_npy:
        p = outdir / f"{stem}_labels.npy"
        np.save(p, labels.astype(np.int32))
        written.append(p)
    return written


def cmd_segment(args) -> int:
    """Run ``diffcut segment``; exit code 0, 1 when some inputs failed, 2 when a write failed (run stopped)."""
    from .. import images

    config = config_from_args(args)
    paths = images.list_image_files(args.inputs)
    if not paths:
        raise InputError("no input images found in " + ", ".join(args.inputs))
    # checked (and locked) before the model loads: a file, unwritable, busy or non-empty folder is one error line
    folder = OutputFolder(args.output, overwrite=args.overwrite, resume=args.resume, inputs=paths)
    try:
        return _segment_into(args, config, paths, folder)
    finally:
        folder.close()


def _segment_into(args, config, paths, folder) -> int:
    from ..engine import Engine

    done_before = len(paths)
    paths = [p for p in paths if not folder.is_done(p)]   # --resume: what the earlier run finished
    if len(paths) < done_before:
        print(f"# resuming: {done_before - len(paths)} inputs already done in {args.output}", file=sys.stderr)
    engine = Engine(config)
    print(f"# {engine!r}", file=sys.stderr)
    used, failed, summary, write_error = set(folder.used_stems), 0, [], None
    taus = args.taus
    extra = {"tau": taus[0], "tree_tau_max": taus[-1], "return_features": True} if taus else {}
    for res in engine.iter_segment(paths, progress=not args.quiet, return_image=args.overlay or bool(taus),
                                   **extra):
        source = str(paths[res.index])
        if not res.ok:
            failed += 1
            print(f"error: {res.error}", file=sys.stderr)
            summary.append({"input": source, "error": str(res.error)})
            continue
        stem = unique_stem(source, used)
        # One tree per image: every further tau is a cut of it plus concept assignment and refinement.
        variants = [(res.segmentation, stem)] if not taus else [
            (res.segmentation if t == taus[0] else engine.at_tau(res.segmentation, t, res.image), f"{stem}_tau{t:g}")
            for t in taus]
        for seg, name in variants:
            try:
                for suffix in ("_labels.png", "_overlay.png", "_labels.npy"):
                    folder.check_target(args.output / f"{name}{suffix}")
                files = write_outputs(seg, res.image, args.output, name, overlay=args.overlay,
                                      save_npy=args.save_npy)
            except InputError as exc:   # an output name that is one of the inputs
                failed += 1
                print(f"error: {exc}", file=sys.stderr)
                summary.append({"input": source, "error": str(exc)})
                continue
            except OSError as exc:      # disk full, folder gone or read-only: stop, keep what is done
                write_error = exc
                break
            print(f"{source}: {seg.num_segments} segments at tau {seg.tau:g} -> {files[0]}")
            summary.append({"input": source, "tau": seg.tau, "num_segments": seg.num_segments, "stem": stem,
                            "outputs": [str(f) for f in files],
                            "timings": {k: round(v, 6) for k, v in seg.timings.items()}})
        if write_error is not None:
            break
    summary_error = None
    try:
        folder.write_summary({"engine": repr(engine), "tau": engine.tau}, summary)
    except OSError as exc:
        summary_error = exc
    if write_error is not None or summary_error is not None:
        done = len({r["input"] for r in summary if "error" not in r})
        print(f"error: {write_failure(write_error or summary_error, args.output, done, len(paths), summary_error)}",
              file=sys.stderr)
        return EXIT_USAGE
    if failed:
        print(f"{failed} of {len(paths)} inputs failed", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK
