"""``diffcut segment``: segment images (files, folders, globs) and write label maps, overlays and a summary."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from ..errors import InputError
from ..graph.validation import tau_name
from ..outputs import OUTPUT_SUFFIXES, OutputFolder, is_written_output, write_failure
from ..utils.progress import write_line
from .classes import add_class_arguments, vocabulary_from_args, write_class_map
from .options import (EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, add_engine_options, add_run_flags, config_from_args,
                      positive_int, tau_list)

#: What ``--format`` writes per image: the label map PNG, or the segments as COCO-style JSON (RLE masks).
FORMATS = ("labels", "masks")
#: ``--overlay`` styles (``none``: no overlay; the same as ``--no-overlay``).
OVERLAYS = ("blend", "contour", "side-by-side", "none")

SEGMENT_EXAMPLES = """examples:
  diffcut segment photo.jpg -o out/                         # DiffCut with SSD-1B (downloads ~5 GB once)
  diffcut segment photos/ 'more/*.png' -o out/ --tau 0.4    # folders and globs
  diffcut segment photo.jpg -o out/ --backbone efficientnet-lite0   # offline backbone, no download
  diffcut segment frame.png -o out/ --size 1024x576 --device cuda --dtype fp16
  diffcut segment photo.jpg -o out/ --backend onnx --engine-dir ssd1b-onnx/   # a `diffcut export` folder
  diffcut segment photo.jpg -o out/ --classes 'person|people,sky,tree,grass'   # name segments with CLIP
  diffcut segment photo.jpg -o out/ --backbone efficientnet-lite0 --segments 8  # about 8 segments per image
  diffcut segment photos/ -o out/ --recursive --format labels,masks --overlay contour  # + COCO-style JSON
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
    seg.add_argument("--segments", type=positive_int, default=None, metavar="K",
                     help="the number of segments wanted, instead of a tau: each image gets the tau whose cut of "
                     "its NCut tree has the number of segments closest to K (ties to fewer segments)")
    seg.add_argument("--recursive", "-r", action="store_true", help="also take the images in sub-folders of "
                     "the folders given")
    g.add_argument("--format", type=format_list, default=("labels",), metavar="labels[,masks]",
                   help="per image: labels (<name>_labels.png, the label map; default) and/or masks "
                   "(<name>_masks.json: one COCO-style RLE mask per segment with its area, box, id and the tau "
                   "at which it appears)")
    g.add_argument("--save-npy", action="store_true", help="also write the labels as .npy (int32)")
    g.add_argument("--overlay", choices=OVERLAYS, default="blend",
                   help="overlay PNG style: blend (colours mixed in, default), contour (outlines), side-by-side "
                   "(image | labels), none")
    g.add_argument("--opacity", type=float, default=None, metavar="A",
                   help="weight of the segment colours in the overlay, 0..1 (default 0.5 blend, 1 contour)")
    g.add_argument("--no-overlay", dest="overlay", action="store_const", const="none",
                   help="do not write overlay PNGs (as --overlay none)")
    add_output_folder_flags(g)
    add_run_flags(g)
    add_class_arguments(seg)
    seg.set_defaults(func=cmd_segment)
    return seg


def format_list(text: str) -> tuple:
    """``--format``: comma-separated names of :data:`FORMATS`."""
    import argparse

    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected labels, masks or labels,masks, got {text!r}")
    return names


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


def write_outputs(seg, image_view, outdir: Path, stem: str, *, overlay, save_npy: bool,
                  formats=("labels",), opacity=None) -> list:
    """Write ``<stem>_labels.png`` (uint8, or uint16 above 255 segments) and/or ``<stem>_masks.json``
    (``formats``), ``<stem>_overlay.png`` (``overlay``: a style of :data:`OVERLAYS`, ``True`` for blend),
    ``.npy``."""
    import numpy as np
    from PIL import Image

    from .. import viz

    written = []
    labels = seg.labels

    def write(p: Path, save) -> None:
        # A failed write is an OSError, which stops the run (Segmentation.save words it as an InputError: its
        # cause is raised); a partly written file is removed, as no summary lists it
        try:
            save(p)
        except (OSError, InputError) as exc:
            failure = exc if isinstance(exc, OSError) else exc.__cause__
            if not isinstance(failure, OSError):
                raise
            if os.path.isfile(p):
                with contextlib.suppress(OSError):
                    os.remove(p)
            raise failure from None
        written.append(Path(p))

    if "labels" in formats:
        write(outdir / f"{stem}_labels.png", seg.save)
    if "masks" in formats:
        write(outdir / f"{stem}_masks.json", seg.save)
    style = "blend" if overlay is True else (overlay or "none")
    if style != "none":
        rgb = (image_view.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if rgb.shape[:2] != labels.shape:
            rgb = np.asarray(Image.fromarray(rgb).resize(labels.shape[::-1], Image.BILINEAR))
        if opacity is None:
            opacity = 1.0 if style == "contour" else 0.5
        write(outdir / f"{stem}_overlay.png",
              lambda p: Image.fromarray(viz.render(rgb, labels, style, opacity=opacity)).save(p))
    if save_npy:
        write(outdir / f"{stem}_labels.npy", lambda p: np.save(p, labels.astype(np.int32)))
    return written


def expand_recursive(inputs) -> list:
    """``inputs`` with every folder followed by its sub-folders (sorted, hidden ones skipped), for
    ``--recursive``; files and glob patterns are kept as they are."""
    out = []
    for item in inputs:
        out.append(item)
        p = Path(item)
        if p.is_dir():
            out.extend(str(d) for d in sorted(p.rglob("*"))
                       if d.is_dir() and not any(part.startswith(".") for part in d.relative_to(p).parts))
    return out


def run_header(engine, args) -> tuple:
    """The ``# ...`` line printed before a run and the tau fields of ``summary.json``: the taus really used."""
    if args.segments is not None:
        return f"# {engine!r}; --segments {args.segments}: tau chosen per image", {"segments": args.segments}
    if args.taus:
        return (f"# {engine!r}; taus {','.join(f'{t:g}' for t in args.taus)}",
                {"taus": list(args.taus)})
    if not engine.uses_tau:
        return f"# {engine!r}", {"tau": None}
    return f"# {engine!r}", {"tau": engine.tau}


def result_line(source: str, seg, engine, files, segments=None) -> str:
    """One stdout line per written result: segments, the tau (where the method uses one), the first file."""
    n = seg.num_segments
    text = f"{source}: {n} segment{'s' if n != 1 else ''}"
    if segments is not None:
        text += f" (asked {segments})"
    if engine.uses_tau:
        text += f" at tau {seg.tau:.4g}"
    text += f" -> {files[0]}" if files else ""
    if n == 1 and segments is None:
        text += (" (a single segment: raise --tau or ask for --segments K)" if engine.uses_tau
                 else " (a single segment)")
    return text


def cmd_segment(args) -> int:
    """Run ``diffcut segment``; exit code 0, 1 when some inputs failed, 2 when a write failed (run stopped)."""
    from .. import images

    if args.segments is not None and (args.taus or args.tau is not None):
        raise InputError("--segments K picks the tau itself; give it without --tau or --taus")
    if args.opacity is not None and not 0.0 <= args.opacity <= 1.0:
        raise InputError(f"--opacity must lie in [0, 1], got {args.opacity:g}")
    config = config_from_args(args)
    if config.method != "diffcut" and (args.taus or args.segments is not None):  # known before the model loads
        raise InputError(f"{'--taus' if args.taus else '--segments'} cuts the NCut tree of --method diffcut; "
                         f"--method {config.method} builds none")
    vocab = vocabulary_from_args(args)
    if args.clip_model is not None:
        config = config.replace(clip_model=args.clip_model)
    if vocab is not None:
        from ..openvocab.clip import check_clip_backend

        check_clip_backend(config.clip_model)  # fail before the diffusion model is loaded
    paths = images.list_image_files(expand_recursive(args.inputs) if args.recursive else args.inputs)
    # what an earlier run wrote into an output folder that is also an input folder is not an input (files named
    # on the command line stay)
    named = {os.path.realpath(i) for i in args.inputs if os.path.isfile(i)}
    ours = [p for p in paths if is_written_output(p, args.output) and os.path.realpath(p) not in named]
    if ours:
        paths = [p for p in paths if p not in ours]
        print(f"# {len(ours)} files in {args.output} are this command's outputs, not inputs: skipped",
              file=sys.stderr)
    if not paths:
        raise InputError("no input images found in " + ", ".join(args.inputs))
    # Inputs that do not exist are reported before the model is loaded (and not loaded at all if none is left).
    missing = {i: why for i, why in ((i, _not_a_file(p)) for i, p in enumerate(paths)) if why is not None}
    if len(missing) == len(paths):
        detail = "; ".join(missing[i] for i in sorted(missing)[:3])
        raise InputError(f"no input image exists ({detail}{'; ...' if len(missing) > 3 else ''})")
    # checked (and locked) before the model loads: a file, unwritable, busy or non-empty folder is one error line
    folder = OutputFolder(args.output, overwrite=args.overwrite, resume=args.resume, inputs=paths)
    try:
        return _segment_into(args, config, vocab, paths, missing, folder)
    finally:
        folder.close()


def _not_a_file(path: Path):
    """Why ``path`` is not an image file to read (a folder, missing, a dangling link or a link loop, a FIFO,
    socket or device: images.check_regular_file's one-line reasons), or None."""
    from .. import images

    try:
        images.check_regular_file(path, str(path))
    except InputError as exc:
        return str(exc)
    return None


def _segment_into(args, config, vocab, paths, missing: dict, folder) -> int:
    from ..engine import Engine

    summary = []
    for i in sorted(missing):
        print(f"error: {missing[i]}", file=sys.stderr)
        summary.append({"input": str(paths[i]), "error": missing[i]})
    todo = [p for i, p in enumerate(paths) if i not in missing]
    before = len(todo)
    todo = [p for p in todo if not folder.is_done(p)]   # --resume: what the earlier run finished
    if len(todo) < before:
        print(f"# resuming: {before - len(todo)} inputs already done in {args.output}", file=sys.stderr)
    engine = Engine(config)
    header, tau_fields = run_header(engine, args)
    print(header, file=sys.stderr)
    used, failed, write_error = set(folder.used_stems), len(missing), None
    taus = args.taus
    want_masks = "masks" in args.format
    extra = {"tau": taus[0], "tree_tau_max": taus[-1], "return_features": True} if taus else {}
    if args.segments is not None:
        extra["segments"] = args.segments
    if want_masks and not taus and engine.method_pipeline is None:
        # DiffCut: the tau at which each segment appears (the tree is built anyway); AutoSC and the random-walk
        # NCut keep no such tree, so their masks carry no tau range (null)
        extra["return_tree"] = True
    progress = not args.quiet
    namer = engine.namer(vocab) if vocab is not None else None
    h, w = engine.config.size
    head = {"engine": repr(engine), "size": f"{w}x{h}", **tau_fields}
    if namer is not None:
        head.update(clip_model=namer.clip.name, classes=list(namer.vocabulary.names))
    summary_error = None
    try:
        write_error, failed = _segment_loop(args, engine, todo, extra, namer, folder, summary, used, failed,
                                            progress)
    finally:
        # also when interrupted (Ctrl-C) or on an unexpected error: what was finished is recorded, so --resume
        # skips it (that exception then goes on; a failed summary write is reported only after a whole run)
        try:
            folder.write_summary(head, summary)
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


def _segment_loop(args, engine, todo, extra, namer, folder, summary: list, used: set, failed: int, progress):
    """Segment ``todo`` and write each result's files, appending to ``summary`` as they finish: (the write error
    that stopped the run or None, the number of failed inputs)."""
    taus, write_error = args.taus, None
    for res in engine.iter_segment(todo, progress=progress, classes=namer,
                                   return_image=args.overlay != "none" or bool(taus) or namer is not None,
                                   **extra):
        source = str(todo[res.index])
        if not res.ok:
            failed += 1
            write_line(f"error: {res.error}", progress=progress)
            summary.append({"input": source, "error": str(res.error)})
            continue
        stem = unique_stem(source, used)
        # One tree per image: every further tau is a cut of it plus concept assignment and refinement.
        variants = [(res.segmentation, stem)] if not taus else [
            (res.segmentation if t == taus[0] else engine.at_tau(res.segmentation, t, res.image),
             f"{stem}_tau{tau_name(t)}") for t in taus]
        for seg, name in variants:
            try:
                for suffix in OUTPUT_SUFFIXES:
                    folder.check_target(args.output / f"{name}{suffix}")
                files = write_outputs(seg, res.image, args.output, name, overlay=args.overlay,
                                      save_npy=args.save_npy, formats=args.format, opacity=args.opacity)
                entry = {"input": source, "num_segments": seg.num_segments, "stem": stem}
                if engine.uses_tau:
                    entry["tau"] = seg.tau
                if namer is not None:
                    if seg.naming is None:  # a further tau of --taus
                        seg = seg.replace(naming=namer.name(res.image, seg.labels))
                    files.append(write_class_map(seg, res.image, args.output, name))
                    entry["segments"] = seg.naming.as_dicts()
            except InputError as exc:   # an output name that is one of the inputs
                failed += 1
                write_line(f"error: {exc}", progress=progress)
                summary.append({"input": source, "error": str(exc)})
                continue
            except OSError as exc:      # disk full, folder gone or read-only: stop, keep what is done
                write_error = exc
                break
            if namer is not None:
                write_line(f"{source}: " + ", ".join(f"{d['segment']}={d['class']} ({d['score']:.2f})"
                                                     for d in entry["segments"]), progress=progress, file=sys.stdout)
            write_line(result_line(source, seg, engine, files, args.segments), progress=progress, file=sys.stdout)
            summary.append({**entry, "outputs": [str(f) for f in files],
                            "timings": {k: round(v, 6) for k, v in seg.timings.items()}})
        if write_error is not None:
            break
    return write_error, failed
