"""``diffcut export``: the encoder as one ONNX graph (and optionally a TensorRT engine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_MODEL
from .options import EXIT_OK, add_run_flags

EXPORT_EXAMPLES = """examples:
  diffcut export --model segmind/SSD-1B --format onnx --out ssd1b-onnx/                # fp32, 1024 px
  diffcut export --model SSD-1B --format onnx --out ssd1b-fp16/ --fp16 --batch 1..8 --device cuda
  diffcut export --model SSD-1B --format tensorrt --out ssd1b-fp16/ --fp16 --batch 8  # + build the engine
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command to the ``diffcut`` parser's sub-parsers and return it."""
    exp = subparsers.add_parser("export", help="export the encoder to ONNX (and build a TensorRT engine)",
                                description="Export the DiffCut encoder (VAE + noise + truncated UNet + L2 "
                                "normalisation) as one ONNX graph from pixels in [-1, 1] to features (B, h, w, C), "
                                "with the empty-prompt conditioning and the seeded noise baked in, a dynamic batch "
                                "axis and a manifest.json. Run it with `diffcut segment --backend onnx "
                                "--engine-dir DIR`.",
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
    add_run_flags(exp)  # --quiet (the loading bars and warnings of diffusers/transformers too) and --debug
    exp.set_defaults(func=cmd_export)
    return exp


def cmd_export(args) -> int:
    """Run ``diffcut export``."""
    from ..encoders.onnx_export import export_onnx

    if args.format == "tensorrt":  # what the engine build needs, checked before the model loads and exports
        from ..encoders.tensorrt import require_engine_build

        require_engine_build()
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
        from ..encoders.tensorrt import TensorRTEncoder

        encoder = TensorRTEncoder(str(args.out), device="cuda" if args.device == "cpu" else args.device)
        print(f"{args.out}: TensorRT engine {encoder.spec.key} in {encoder.cache.root}")
    return EXIT_OK
