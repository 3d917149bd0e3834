"""``diffcut eval``: run a benchmark with the official DiffCut protocol (docs/EVAL.md).

The summary table goes to stdout, progress and logs to stderr; results, the per-image cache, a confusion matrix
PNG per tau and a few example overlays go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import BACKBONES, COMPAT_MODES, DEFAULT_MODEL, DTYPES, EngineConfig
from ..errors import InputError
from ..outputs import check_output_path
from .options import (EXIT_OK, EXIT_SOME_FAILED, add_method_arguments, add_run_flags, int_list, positive_float,
                      positive_int, rwncut_options_from_args, tau_list)

EVAL_EXAMPLES = """examples:
  diffcut eval --dataset voc --root datasets/VOCdevkit/VOC2012 --out runs/voc/          # the paper's setting
  diffcut eval --dataset coco-stuff --root datasets/coco --tau 0.3,0.4,0.5,0.6 --out runs/coco.json
  diffcut eval --dataset cityscapes --root datasets/cityscapes --limit 50 --out runs/cs/  # first 50 images
  diffcut eval --dataset cityscapes --root datasets/cityscapes --out runs/cs/             # resumes, adds the rest
  diffcut eval --dataset voc --root datasets/pascal_voc_d2 --open-vocab --out runs/voc-ov/  # CLIP-named segments

datasets: voc (VOC 2012 val), context (Pascal Context 59), coco-stuff (COCO-Stuff-27, curated 2,175 images),
coco-object, cityscapes, ade20k; folder layouts in docs/EVAL.md. A killed run resumes from the cache in --out.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to the ``diffcut`` parser's sub-parsers and return it."""
    from ..eval.datasets import DATASETS
    from ..eval.metrics import FP_COUNTING

    p = subparsers.add_parser("eval", help="benchmark on VOC, Context, COCO-Stuff/Object, Cityscapes, ADE20K",
                              description="Evaluate zero-shot segmentation on a benchmark with the protocol of "
                              "DiffCut's eval_diffcut.py: centre crop, prediction at 128x128, background merge "
                              "(VOC, Context, COCO-Object), PAMR, per-image Hungarian matching, dataset mIoU.",
                              epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, metavar="NAME",
                   help=f"benchmark: {', '.join(DATASETS)} (official names such as VOC20 also accepted)")
    g.add_argument("--root", required=True, type=Path, metavar="DIR", help="dataset folder (see docs/EVAL.md)")
    g.add_argument("--split-file", type=Path, default=None, metavar="FILE",
                   help="text file of image ids to evaluate instead of the official list (for COCO: instead "
                   "of Coco164kFull_Stuff_Coarse_7.txt)")
    g.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate the first N images only")
    g = p.add_argument_group("method")
    g.add_argument("--tau", type=tau_list, default=None, metavar="T[,T2,...]",
                   help="NCut threshold(s); several are evaluated from one NCut tree per image "
                   "(default: the backbone's, 0.5 for SSD-1B)")
    g.add_argument("--alpha", type=positive_float, default=10.0, help="affinity exponent (default 10)")
    g.add_argument("--compat", choices=COMPAT_MODES, default="official",
                   help="official (default): the official partitions on the fast solvers; official-float32: "
                   "the official float32 computation (slow); clean: plain index sets (no zero-row rule)")
    g.add_argument("--no-refine", dest="refine", action="store_false",
                   help="skip PAMR and the median filter (the paper's numbers use them)")
    g.add_argument("--refine-iters", "--pamr-iters", dest="pamr_iters", type=int, default=10,
                   help="PAMR iterations (default 10, the official evaluation's)")
    g.add_argument("--refine-dilations", "--pamr-dilations", dest="pamr_dilations", type=int_list,
                   default=(1, 2, 4, 8), help="PAMR dilations (default 1,2,4,8)")
    g.add_argument("--refine-backend", choices=("auto", "torch", "fast", "native"), default="auto",
                   help="PAMR implementation (same labels): fast (numba on the CPU, Triton on CUDA), native (C++ "
                        "core, CPU), torch (reference), auto")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local diffusers folder (default "
                   f"{DEFAULT_MODEL})")
    g.add_argument("--backbone", choices=BACKBONES, default="diffusion", help="feature extractor")
    g.add_argument("--revision", default=None, help="hub revision of --model")
    g.add_argument("--local-files-only", action="store_true", help="never download; use the local cache only")
    g.add_argument("--size", default=None, help="network input size, square (default: 1024 for diffusion "
                   "models, as the paper)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--dtype", choices=DTYPES, default="auto", help="network precision (default: fp16 on CUDA)")
    g.add_argument("--batch-size", type=int, default=5, help="images per encoder call (default 5, as the "
                   "official eval)")
    g.add_argument("--timestep", type=int, default=50, help="noise timestep (default 50)")
    g.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
    g = p.add_argument_group("protocol and output")
    g.add_argument("--out", required=True, type=Path, metavar="PATH",
                   help="output folder, or a .json file path; the cache, confusion matrix and overlays go beside it")
    g.add_argument("--eval-size", type=int, default=128, help="side of the scored label maps (default 128)")
    g.add_argument("--fp-counting", choices=FP_COUNTING, default="official",
                   help="official: as the paper (absent classes may be matched and charged FP); present: match "
                   "only the classes present in each image")
    g.add_argument("--overlays", type=int, default=4, metavar="N", help="example strips for the first N images")
    g.add_argument("--restart", action="store_true", help="discard a cache made with other settings")
    g.add_argument("--json", action="store_true", help="print the results JSON instead of the table")
    add_run_flags(g)
    g = p.add_argument_group("open-vocabulary evaluation (eval_diffcut_openvoc.py; voc, context, coco-object)")
    g.add_argument("--open-vocab", action="store_true",
                   help="name each segment with CLIP among the dataset's official class list and score the mean "
                   "per-image Jaccard index (prediction at the network size, PAMR 15 iterations with dilations "
                   "1..64; --eval-size, --pamr-*, --fp-counting, --overlays and the cache do not apply)")
    g.add_argument("--clip-model", default=None, metavar="MODEL",
                   help="CLIP for --open-vocab (default: the official open_clip ConvNeXt-Large; extra [openvocab])")
    add_method_arguments(p)  # --method diffcut|rwncut and the --rw-* options
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args) -> int:
    """Run ``diffcut eval``; exit code 0, or 1 when some images could not be scored."""
    from ..engine import Engine
    from ..eval.datasets import get_dataset
    from ..eval.runner import evaluate, format_table, output_paths

    paths = output_paths(args.out)  # a folder, or a .json beside its cache: writable, checked before the model
    check_output_path(paths["folder"], "--out folder", folder=True)
    if paths["results"].is_dir():
        raise InputError(f"--out {paths['results']} is a folder; give a folder or a .json file name")
    dataset = get_dataset(args.dataset, args.root, split_file=args.split_file)
    tau = args.tau[0] if args.tau else None
    config = EngineConfig(model=args.model, backbone=args.backbone, revision=args.revision, size=args.size,
                          resize_mode="center_crop", timestep=args.timestep, seed=args.seed, alpha=args.alpha,
                          tau=tau, compat=args.compat, refine=args.refine, pamr_iters=args.pamr_iters,
                          pamr_dilations=args.pamr_dilations, refine_backend=args.refine_backend,
                          device=args.device, dtype=args.dtype,
                          batch_size=args.batch_size, local_files_only=args.local_files_only,
                          **dict(zip(("method", "rwncut"), rwncut_options_from_args(args))))
    if args.clip_model is not None:
        config = config.replace(clip_model=args.clip_model)
    if args.open_vocab:
        from ..openvocab.clip import check_clip_backend

        check_clip_backend(config.clip_model)  # fail before the diffusion model is loaded
    engine = Engine(config)
    print(f"# {dataset!r}", file=sys.stderr)
    print(f"# {engine!r}", file=sys.stderr)
    if args.open_vocab:
        return _open_vocab(args, dataset, engine)
    results = evaluate(dataset, engine, taus=args.tau, eval_size=args.eval_size, fp_counting=args.fp_counting,
                       out=args.out, limit=args.limit, overlays=args.overlays, restart=args.restart,
                       progress=not args.quiet, method=args.method)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(format_table(results))
        print(f"results written to {output_paths(args.out)['results']}", file=sys.stderr)
    for f in results["failed"]:
        print(f"error: {f['name']}: {f['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if results["failed"] else EXIT_OK


def _open_vocab(args, dataset, engine) -> int:
    """``diffcut eval --open-vocab``: the official protocol of :mod:`diffcut_engine.openvocab.evaluate`."""
    from ..openvocab.evaluate import evaluate_open_vocab

    results = evaluate_open_vocab(dataset, engine, limit=args.limit, out=args.out, progress=not args.quiet)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        miou = "n/a" if results["miou"] is None else f"{100 * results['miou']:.2f}"
        print(f"{dataset.key} open-vocabulary mIoU (mean per-image Jaccard): {miou} over {results['num_images']} "
              f"images")
        print(f"results written to {results['file']}", file=sys.stderr)
    for f in results["failed"]:
        print(f"error: {f['name']}: {f['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if results["failed"] else EXIT_OK
