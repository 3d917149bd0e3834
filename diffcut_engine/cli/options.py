"""What the ``diffcut`` commands share: exit codes, argparse value types, the engine options, ``--quiet``/``--debug``.

Each command module (``segment``, ``video``, ``bench``, ``eval``, ``export``, ``info``) builds its parser from these
pieces, so that options keep one name, one default and one help text everywhere.
"""

from __future__ import annotations

import argparse
import math

from ..config import (ATTENTION_MODES, BACKBONES, BACKENDS, COMPAT_MODES, COMPILE_MODES, DEFAULT_MODEL, DTYPES,
                      GRAPH_DEVICES, METHODS, RESIZE_MODES, EngineConfig, RWNCutOptions)
from ..graph.validation import GRAPH_BACKENDS

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "positive_float", "positive_int", "int_list", "tau_list",
           "add_engine_options", "add_method_arguments", "add_run_flags", "rwncut_options_from_args",
           "config_from_args"]


# ------------------------------------------------------------------------------------------------------------
# argparse value types
# ------------------------------------------------------------------------------------------------------------

def positive_float(text: str) -> float:
    """A number > 0 (``--tau``, ``--alpha``)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1 (``--segments``)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return v


def int_list(text: str) -> tuple:
    """Comma-separated integers such as ``1,2,4,8``."""
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def tau_list(text: str) -> tuple:
    """Comma-separated positive thresholds, returned sorted and without duplicates."""
    try:
        vals = tuple(sorted({float(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):  # (NaN compares False with everything)
        raise argparse.ArgumentTypeError(f"expected positive finite numbers, got {text!r}")
    return vals


# ------------------------------------------------------------------------------------------------------------
# Option groups
# ------------------------------------------------------------------------------------------------------------

def add_run_flags(parser) -> None:
    """``--quiet`` and ``--debug`` (shared by ``segment``, ``eval``, ``video`` and ``bench``)."""
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar (also DIFFCUT_NO_PROGRESS=1)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


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
    g.add_argument("--no-vae-tf32", dest="vae_tf32", action="store_false",
                   help="IEEE float32 convolutions in the VAE on CUDA (default: TF32 allowed, as PyTorch and the "
                   "official code)")
    g = parser.add_argument_group("method")
    g.add_argument("--tau", type=positive_float, default=None,
                   help="NCut threshold; larger gives more segments. Its scale depends on the backbone: "
                   "defaults 0.5 SDXL-type (SSD-1B), 0.2 SD 1.x, 0.08 efficientnet-lite0 (useful range about "
                   "0.03-0.3 there); or ask for --segments K")
    g.add_argument("--alpha", type=positive_float, default=10.0, help="affinity exponent (default 10)")
    g.add_argument("--size", default=None, help="network input size, 1024 or WxH such as 1024x576; "
                   "multiples of 32 (default: 1024 for diffusion models, 768 for efficientnet-lite0)")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="resize",
                   help="resize: squash the whole image (default); center_crop: the evaluation protocol")
    g.add_argument("--compat", choices=COMPAT_MODES, default="official",
                   help="official (default): the official partitions on the fast solvers; official-float32: "
                   "the official float32 computation (slow); clean: plain index sets (no zero-row rule)")
    g.add_argument("--graph-device", choices=GRAPH_DEVICES, default="auto",
                   help="where the NCut runs: device (CuPy on the GPU, a whole batch at once; needs "
                   "pip install 'diffcut-engine[gpu]'; not with --compat official-float32), host (the CPU: numpy "
                   "or the C++ core, see --graph-backend), or auto (default: device when the features are on CUDA "
                   "and CuPy is available)")
    g.add_argument("--graph-backend", choices=GRAPH_BACKENDS, default="auto",
                   help="which implementation runs the NCut (same labels): native (the C++ core, built by pip "
                   "install), numpy, cupy (the device path), or auto (default: cupy on the device, else native "
                   "where built and applicable, else numpy)")
    g.add_argument("--graph-threads", type=int, default=1, metavar="N",
                   help="solve the grids of a batch that take the native core on N threads (default 1)")
    g.add_argument("--refine", choices=("demo", "eval", "full", "none"), default="demo",
                   help="PAMR + median preset (docs/REFINE.md): demo (default, the official notebook at the network "
                   "size), eval (10 iterations at 128x128), full (10 iterations at the output size), none")
    g.add_argument("--no-refine", dest="refine", action="store_const", const="none", help="same as --refine none")
    g.add_argument("--refine-iters", "--pamr-iters", dest="pamr_iters", type=int, default=None,
                   help="PAMR iterations (default: the preset's)")
    g.add_argument("--refine-dilations", "--pamr-dilations", dest="pamr_dilations", type=int_list, default=None,
                   help="PAMR dilations such as 1,2,4,8 (default: the preset's)")
    g.add_argument("--refine-backend", choices=("auto", "torch", "fast", "native"), default="auto",
                   help="PAMR implementation: fast (numba on the CPU, Triton on CUDA), native (C++ core, CPU), "
                        "torch (reference), auto")
    g.add_argument("--output-size", default=None, help="label size WxH (default: each image's own size)")
    add_method_arguments(parser)


def add_method_arguments(parser) -> None:
    """``--method`` and the ``--rw-*`` options of the random-walk NCut (shared by ``segment`` and ``eval``)."""
    d = RWNCutOptions()
    g = parser.add_argument_group("random-walk NCut (--method rwncut; see docs/ALGORITHM.md)")
    g.add_argument("--method", choices=METHODS, default="diffcut",
                   help="diffcut (default), rwncut: random-walk NCut on the UNet self-attention, or "
                   "autosc: one-shot spectral clustering, K and alpha by the eigengap (ignores --tau)")
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
    g.add_argument("--rw-threshold", choices=("tree", "random", "mean", "gap", "null", "constant"),
                   default=d.threshold, help="split acceptance: parameter-free tree (default; cut of the hierarchy "
                   "at the widest gap of its NCut values), random, mean, gap, null, or constant (uses --tau)")
    g.add_argument("--rw-min-size", type=int, default=d.min_size, help=f"smallest segment in grid nodes "
                   f"(default {d.min_size})")
    g.add_argument("--rw-subgraph", choices=("restrict", "renormalize"), default=d.subgraph)
    g.add_argument("--rw-labels", choices=("diffseg", "concept"), default=d.labels,
                   help="pixel labels: DiffSeg soft maps (default) or DiffCut concept assignment")
    g.add_argument("--rw-factors", type=int_list, default=None, metavar="F1,F2",
                   help="attention layers at these latent downsampling factors only (default all)")
    g.add_argument("--rw-grid-factor", type=int, default=None, help="target grid factor (default: finest)")


# ------------------------------------------------------------------------------------------------------------
# Arguments -> configuration
# ------------------------------------------------------------------------------------------------------------

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
    from ..encoders.artifacts import apply_manifest_defaults

    options = dict(model=args.model, backbone=args.backbone, revision=args.revision, size=args.size,
                   resize_mode=args.resize_mode, timestep=args.timestep, seed=args.seed, alpha=args.alpha,
                   tau=args.tau, compat=args.compat, refine=args.refine, pamr_iters=args.pamr_iters,
                   pamr_dilations=args.pamr_dilations, refine_backend=args.refine_backend,
                   output_size=args.output_size, device=args.device,
                   dtype=args.dtype, batch_size=args.batch_size, local_files_only=args.local_files_only,
                   graph_device=args.graph_device, graph_backend=args.graph_backend,
                   graph_threads=args.graph_threads, backend=args.backend,
                   engine_dir=args.engine_dir,
                   compile=args.compile, channels_last=args.channels_last, attention=args.attention,
                   cuda_graphs=args.cuda_graphs, vae_tf32=args.vae_tf32)
    # An engine folder supplies the model, size, timestep and seed that were not given.
    options = apply_manifest_defaults(options)
    for key, default in (("model", DEFAULT_MODEL), ("timestep", 50), ("seed", 42)):
        if options[key] is None:
            options[key] = default
    options["method"], options["rwncut"] = rwncut_options_from_args(args)
    return EngineConfig(**options)
