"""``diffcut export --format onnx``: the whole DiffCut encoder as one ONNX graph, with a manifest.

The graph computes exactly what :meth:`DiffusionEncoder.encode` returns, from one input to one output:

``pixels`` (B, 3, H, W) float32 in [-1, 1]
    -> VAE posterior mean x scaling factor (float32 always: the SDXL VAE overflows in float16)
    -> ``sqrt(abar_t) z + sqrt(1 - abar_t) noise`` (DDIM ``add_noise`` at the raw timestep ``t``)
    -> the UNet truncated after DiffCut's hooked ``attn1`` (:class:`TruncatedUNet`), in float32 or float16
    -> ``features`` (B, H/32, W/32, C) float32, L2-normalised over C.

**Constants.** The empty-prompt conditioning (prompt embeddings, SDXL pooled embeddings and ``time_ids``), the
timestep and the seeded noise do not depend on the image, so by default they are baked into the graph as
constants: the text encoders are not part of the export and a runtime needs nothing but the pixels. The noise is
the one the PyTorch encoder draws on the export device (a CPU generator when exporting on the CPU, CUDA's Philox
generator when exporting on CUDA, exactly as :class:`DiffusionEncoder` does), and the manifest records which.
With ``constants="inputs"`` they become graph inputs instead (``noise`` (1, 4, H/8, W/8), ``prompt_embeds``
(1, 77, D), and for SDXL-type models ``pooled_prompt_embeds`` (1, P) and ``time_ids`` (1, 6)); their export-time
values are saved in ``constants.npz`` and fed by the onnxruntime backend, so another noise draw can be tried
without exporting again. The batch axis is dynamic; the spatial size is fixed at export.

**Precision.** ``fp16=True`` exports the UNet part in float16 and keeps the VAE and the final normalisation in
float32 (inputs and outputs stay float32); this is the graph the TensorRT backend builds its fp16 engine from
(as a strongly typed network, so TensorRT keeps the VAE in float32). Every export, fp16 included, must pass
``onnx.checker.check_model(..., full_check=True)`` and load and run in onnxruntime (the CPU provider is enough),
or :func:`export_onnx` raises and writes nothing; the fp16 graph's features stay within ``TOLERANCES["fp16"]``
of the PyTorch fp16 encoder (measured at export, recorded in the manifest).

**Manifest.** ``manifest.json`` records the model (hub id and revision or commit, or the SHA-256 of a local
folder), input/output shapes, batch range, dtype, opset, the versions of every tool involved, the size and
SHA-256 of every file, and the features' distance to the PyTorch encoder measured on seeded random pixels at
export time (see :mod:`diffcut_engine.encoders.artifacts`).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
from typing import Optional, Tuple, Union

from ..config import parse_size
from ..errors import ExportError, InputError
from ..utils.imports import require
from . import artifacts
from .base import dtype_name, torch
from .diffusion import DiffusionEncoder
from .loading import looks_like_path

logger = logging.getLogger(__name__)

#: Default ONNX opset: the torch exporter's own default, read by onnxruntime >= 1.14 and TensorRT >= 8.6.
DEFAULT_OPSET = 18

#: Exporters: ``dynamo`` (``torch.export``, PyTorch's default and recommended one) and ``torchscript`` (the
#: legacy tracer, deprecated by PyTorch but about ten times faster on small models).
EXPORTERS = ("dynamo", "torchscript")

#: Weights above this many bytes go to ``model.onnx.data`` (a protobuf file cannot exceed 2 GiB).
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3 - 64 * 1024 ** 2

#: Largest allowed distance (max |torch - onnx| over all normalised feature values) at export, per dtype.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2}

#: Names of the constant inputs, in graph order, when they are kept as inputs (SD 1.x models have the first two).
CONSTANT_INPUTS = ("noise", "prompt_embeds", "pooled_prompt_embeds", "time_ids")


class ExportableEncoder(torch.nn.Module):
    """:meth:`DiffusionEncoder.encode` at one fixed image size, as a traceable ``nn.Module``.

    Parameters
    ----------
    encoder : DiffusionEncoder
        Its VAE, UNet and cached conditioning are used (shared, not copied).
    size : (int, int)
        (height, width) in pixels, multiples of ``encoder.stride``.
    constants_as_inputs : bool
        If False (default), ``forward(pixels)`` uses the noise and conditioning held as buffers; if True,
        ``forward(pixels, noise, prompt_embeds[, pooled_prompt_embeds, time_ids])`` takes them as arguments.
    """

    def __init__(self, encoder: DiffusionEncoder, size: Tuple[int, int], *, constants_as_inputs: bool = False):
        super().__init__()
        height, width = size
        self.vae = encoder.vae
        self.truncated_unet = encoder.truncated_unet
        self.unet_dtype = encoder.dtype
        self.constants_as_inputs = constants_as_inputs
        self.family = encoder.family
        vae_factor = 2 ** (len(encoder.vae.config.block_out_channels) - 1)
        latent_size = (height // vae_factor, width // vae_factor)
        hidden, added = encoder.conditioning(height, width, 1)
        scheduler = encoder.scheduler
        abar = scheduler.alphas_cumprod.to(torch.float32)[encoder.timestep]
        constants = {
            "noise": encoder.noise(latent_size).contiguous(),
            "prompt_embeds": hidden.contiguous(),
        }
        if added is not None:
            constants["pooled_prompt_embeds"] = added["text_embeds"].contiguous()
            constants["time_ids"] = added["time_ids"].contiguous()
        for name, value in constants.items():
            self.register_buffer(name, value.clone(), persistent=False)
        self.constant_names = tuple(constants)
        # DDIM add_noise's coefficients, computed with the same float32 ops as DDIMScheduler.add_noise.
        self.register_buffer("sqrt_alpha", abar ** 0.5, persistent=False)
        self.register_buffer("sqrt_one_minus_alpha", (1 - abar) ** 0.5, persistent=False)
        self.register_buffer("timestep", torch.tensor([encoder.timestep], dtype=torch.long), persistent=False)
        self.scaling_factor = float(encoder.vae.config.scaling_factor)

    def constant_values(self) -> dict:
        """The baked constants as float32/float16 tensors, by input name (for ``constants.npz``)."""
        return {name: getattr(self, name) for name in self.constant_names}

    def forward(self, pixels, noise=None, prompt_embeds=None, pooled_prompt_embeds=None, time_ids=None):
        if not self.constants_as_inputs:
            noise, prompt_embeds = self.noise, self.prompt_embeds
            pooled_prompt_embeds = getattr(self, "pooled_prompt_embeds", None)
            time_ids = getattr(self, "time_ids", None)
        batch = pixels.shape[0]
        # 1. VAE posterior mean in float32.
        latents = self.vae.encode(pixels).latent_dist.mean * self.scaling_factor
        # 2. DDIM add_noise with the one noise tensor shared by the batch.
        noisy = self.sqrt_alpha * latents + self.sqrt_one_minus_alpha * noise.to(latents.dtype)
        # 3. The truncated UNet with the empty-prompt conditioning, expanded to the batch.
        hidden = prompt_embeds.to(self.unet_dtype).expand(batch, -1, -1)
        text_embeds = ids = None
        if pooled_prompt_embeds is not None:
            # The UNet concatenates the pooled embeddings with float32 sinusoidal time-id embeddings; eager
            # PyTorch promotes that Concat to float32, the exporters do not (an fp16 graph would join float16
            # with float32, which the ONNX checker and every runtime refuse). Rounding through the UNet dtype
            # and back to float32 gives the promoted values exactly, and a well-typed float32 Concat.
            text_embeds = pooled_prompt_embeds.to(self.unet_dtype).float().expand(batch, -1)
            ids = time_ids.to(self.unet_dtype).expand(batch, -1)
        tokens = self.truncated_unet(noisy.to(self.unet_dtype), self.timestep, hidden, text_embeds, ids)
        # 4. L2 over channels in float32.
        return torch.nn.functional.normalize(tokens.float(), dim=-1)


def parse_batch_range(value: Union[int, str, Tuple[int, int], None]) -> Tuple[int, int]:
    """``8`` -> (1, 8); ``"2..8"`` or ``"2-8"`` -> (2, 8); ``None`` -> (1, 1).

    Raises
    ------
    InputError
        If the value is not a positive integer or an increasing range of them.
    """
    if value is None:
        return (1, 1)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, int) and not isinstance(value, bool):
        lo, hi = 1, value
    elif isinstance(value, str):
        text = value.replace("..", "-").strip()
        try:
            lo, hi = (int(t) for t in text.split("-")) if "-" in text else (1, int(text))
        except ValueError:
            raise InputError(f"batch must look like 8 or 1..8, got {value!r}") from None
    else:
        raise InputError(f"batch must look like 8 or 1..8, got {value!r}")
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise InputError(f"batch range must satisfy 1 <= min <= max, got {value!r}")
    return (lo, hi)


def export_onnx(model: Optional[str], out_dir: str, *, size: Union[int, str, Tuple[int, int]] = 1024,
                batch: Union[int, str, Tuple[int, int], None] = None, fp16: bool = False,
                constants: str = "baked", opset: int = DEFAULT_OPSET, device="cpu",
                revision: Optional[str] = None, local_files_only: bool = False, timestep: int = 50,
                seed: int = 42, external_data: Optional[bool] = None, exporter: str = "dynamo",
                verify: bool = True, overwrite: bool = False,
                encoder: Optional[DiffusionEncoder] = None) -> dict:
    """Export the DiffCut encoder of a diffusers pipeline to an ONNX folder.

    Parameters
    ----------
    model : str
        Hub id or local diffusers folder (as for :meth:`DiffusionEncoder.from_pretrained`); may be ``None``
        when ``encoder`` is given.
    out_dir : str
        Folder to create: ``model.onnx`` (+ ``model.onnx.data``), ``constants.npz`` if kept as inputs, and
        ``manifest.json``. Written to a temporary sibling folder first, then renamed, so a failed export never
        leaves a folder that looks complete.
    size : int, str or (int, int)
        Input size, ``1024``, ``"WxH"`` or ``(height, width)``; a multiple of the encoder's stride (32).
    batch : int, str or (int, int), optional
        Batch range ``(min, max)`` the folder is meant for (``8`` is 1..8): recorded for the TensorRT
        optimisation profile; the ONNX batch axis itself is dynamic. Default 1..1.
    fp16 : bool
        UNet in float16 (VAE and normalisation stay float32).
    constants : {"baked", "inputs"}
        Bake the noise and empty-prompt conditioning into the graph, or keep them as inputs (module notes).
    opset : int
        ONNX opset (>= 17).
    device : str
        Where the model is loaded and traced, and the tolerance check runs; it also decides the noise
        generator (see the module notes).
    revision, local_files_only, timestep, seed
        As for :meth:`DiffusionEncoder.from_pretrained`.
    external_data : bool, optional
        Store the weights in ``model.onnx.data``; ``None`` does so only when the weights exceed 2 GB
        (protobuf's limit).
    exporter : {"dynamo", "torchscript"}
        PyTorch's ONNX exporter (see :data:`EXPORTERS`); recorded in the manifest.
    verify : bool
        Run the exported graph with onnxruntime on seeded random pixels (batch 1 and 2) and compare with the
        PyTorch encoder; raise if onnxruntime cannot load or run it (on any provider, fp16 included) or if the
        distance exceeds :data:`TOLERANCES`. The measured figures go to the manifest either way
        (``{"measured": false}`` when skipped). The ONNX checker's full check (types and shapes inferred
        through every node) runs regardless, and its failure is an :class:`ExportError`.
    overwrite : bool
        Replace an existing ``out_dir`` that holds an earlier export (its ``manifest.json``); a non-empty folder
        without one is never deleted.
    encoder : DiffusionEncoder, optional
        An already loaded encoder (then ``model``, ``device``, ``timestep``, ``seed`` and ``fp16`` come from it).

    Returns
    -------
    dict
        The manifest that was written.

    Raises
    ------
    InputError
        On a bad size, batch range, opset or ``constants`` value, or an existing ``out_dir`` without
        ``overwrite``.
    ExportError
        If tracing, saving, the ONNX full check, loading in onnxruntime or the tolerance check fails; nothing
        is left at ``out_dir`` then.
    BackendUnavailableError
        If ``onnx`` (or ``onnxruntime`` with ``verify``) is not installed.
    """
    onnx = require("onnx", "ONNX export")
    if exporter not in EXPORTERS:
        raise InputError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if constants not in ("baked", "inputs"):
        raise InputError(f"constants must be 'baked' or 'inputs', got {constants!r}")
    newest = int(onnx.defs.onnx_opset_version())
    if not (isinstance(opset, int) and not isinstance(opset, bool) and 17 <= opset <= newest):
        raise InputError(f"opset must be an integer in [17, {newest}] (17: LayerNormalization; {newest}: the "
                         f"newest the installed onnx {onnx.__version__} knows), got {opset!r}")
    batch_range = parse_batch_range(batch)
    parse_size(size, name="size")  # its form now; the multiple of the model's stride once it is loaded
    if encoder is None and not (isinstance(timestep, int) and not isinstance(timestep, bool) and 0 <= timestep < 1000):
        raise InputError(f"timestep must be an integer in [0, 999], got {timestep!r}")
    out_dir = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
    if os.path.islink(out_dir):  # a link to a folder: that folder is the output (the link keeps pointing at it)
        target = os.path.realpath(out_dir)
        if not os.path.isdir(target):
            raise InputError(f"output {out_dir!r} is a symbolic link to {target!r}, which is not a folder; give a "
                             "folder name")
        out_dir = target
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"output {out_dir!r} is an existing file, not a folder; give a folder name")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise InputError(f"output folder {out_dir!r} exists and is not empty; pass overwrite=True (--overwrite)")
        if not os.path.isfile(os.path.join(out_dir, artifacts.MANIFEST_NAME)):
            # overwrite replaces an earlier export only: never delete a folder of other files
            raise InputError(f"output folder {out_dir!r} is not empty and holds no {artifacts.MANIFEST_NAME}, so it "
                             "is not an earlier export; overwrite replaces only an export folder: choose another "
                             "--out")
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the parent folder of {out_dir!r} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {parent!r} (permission denied); choose another --out")
    if verify:
        require("onnxruntime", "checking the exported ONNX graph")
    if exporter == "dynamo":
        require("onnxscript", "the dynamo ONNX exporter (exporter='torchscript' works without it)")

    # 1. The PyTorch encoder (the reference the graph is checked against).
    if encoder is None:
        if not model:
            raise InputError("export_onnx needs a model id or folder")
        encoder = DiffusionEncoder.from_pretrained(model, revision=revision, device=device,
                                                   dtype="fp16" if fp16 else "fp32", timestep=timestep,
                                                   seed=seed, local_files_only=local_files_only)
    dtype = dtype_name(encoder.dtype)
    if dtype not in TOLERANCES:
        raise InputError(f"ONNX export supports fp32 and fp16 UNets, got {dtype}")
    hw = parse_size(size, name="size", multiple=encoder.stride)
    module = ExportableEncoder(encoder, hw, constants_as_inputs=constants == "inputs").eval()

    # 2. Trace with a batch of 2 (a batch of 1 would be specialised) and export with a dynamic batch axis.
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".partial-", dir=parent)
    try:
        example = _seeded_pixels(2, hw, encoder.device)
        args = (example,) + (tuple(module.constant_values().values()) if constants == "inputs" else ())
        input_names = ["pixels"] + (list(module.constant_names) if constants == "inputs" else [])
        onnx_path = os.path.join(work, artifacts.ONNX_NAME)
        output_shape = encoder.grid_size(*hw) + (_channels(encoder),)
        _export_graph(module, args, input_names, opset, exporter, onnx_path, external_data, output_shape)
        if constants == "inputs":
            import numpy as np

            np.savez(os.path.join(work, artifacts.CONSTANTS_NAME),
                     **{k: v.detach().float().cpu().numpy() for k, v in module.constant_values().items()})
        _full_check(onnx, onnx_path)
        graph = _graph_facts(onnx, onnx_path)

        # 3. Features of the graph vs the PyTorch encoder, on seeded random pixels (batch 1 and 2).
        tolerance = _measure(encoder, work, hw, dtype, module) if verify else {"measured": False}
        if verify and tolerance.get("measured") and not tolerance["passed"]:
            raise ExportError(f"the exported graph's features differ from the PyTorch encoder's by "
                              f"{tolerance['max_abs']:.3g} (bound {tolerance['bound']:g}); not writing {out_dir!r}")

        # 4. Manifest, then move the finished folder into place.
        files = sorted(os.listdir(work))
        manifest = _manifest(encoder, hw, batch_range, dtype, constants, opset, graph, tolerance,
                             artifacts.describe_files(work, files), revision, exporter)
        artifacts.write_manifest(work, manifest)
        _default_permissions(work)
        if os.path.exists(out_dir):
            if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, artifacts.MANIFEST_NAME)):
                raise InputError(f"output folder {out_dir!r} was filled during the export and is not an export "
                                 "folder; not replacing it")
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("exported %s to %s (%s, %dx%d, opset %d)", encoder.model, out_dir, dtype, hw[1], hw[0], opset)
    return manifest


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------

def _seeded_pixels(batch: int, hw: Tuple[int, int], device) -> "torch.Tensor":
    g = torch.Generator().manual_seed(1234)
    return (torch.rand(batch, 3, hw[0], hw[1], generator=g) * 2 - 1).to(device)


def _export_graph(module, args, input_names, opset, exporter, path, external_data, output_shape):
    """Trace ``module`` with ``exporter`` and save the graph to ``path`` with a dynamic batch axis.

    Returns the number of bytes of weights. Above :data:`EXTERNAL_DATA_THRESHOLD` (or with ``external_data``)
    they go to ``<path>.data``. ``output_shape`` (h, w, C) is written into the graph's output type where the
    exporter left symbolic sizes, so runtimes (TensorRT) see a static feature shape.
    """
    onnx = require("onnx", "ONNX export")
    location = os.path.basename(path) + ".data"
    try:
        with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=4096)
                dynamic_shapes = tuple([{0: batch}] + [None] * (len(args) - 1))
                program = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                            input_names=input_names, output_names=["features"],
                                            dynamic_shapes=dynamic_shapes, verbose=False)
                weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                              if v.const_value is not None)
                external = weights > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
                program.save(path, external_data=external)
            else:
                # The TorchScript exporter writes one file per tensor above 2 GB: load it back whole.
                raw = os.path.join(tmp, "raw.onnx")
                torch.onnx.export(module, args, raw, dynamo=False, opset_version=opset, input_names=input_names,
                                  output_names=["features"],
                                  dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
                proto = onnx.load(raw, load_external_data=True)
                for dim, value in zip(proto.graph.output[0].type.tensor_type.shape.dim[1:], output_shape):
                    dim.dim_value = value  # replaces the exporter's symbolic name
                weights = sum(len(t.raw_data) for t in proto.graph.initializer)
                external = weights > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
                onnx.save_model(proto, path, save_as_external_data=external, all_tensors_to_one_file=True,
                                location=location, size_threshold=1024)
    except Exception as exc:  # noqa: BLE001  (torch.export and protobuf raise many unrelated types)
        raise ExportError(f"ONNX export ({exporter} exporter) failed: {type(exc).__name__}: "
                          f"{_first_line(exc)}") from exc
    return weights


def _full_check(onnx, onnx_path) -> None:
    """``onnx.checker.check_model(path, full_check=True)``: structure, then types and shapes inferred through
    every node in strict mode (a node joining float16 with float32 fails here). Raises :class:`ExportError`."""
    try:
        # By path, so that external data (and models above protobuf's 2 GiB limit) are checked too.
        onnx.checker.check_model(onnx_path, full_check=True)
    except Exception as exc:  # noqa: BLE001  (ValidationError, InferenceError, protobuf errors)
        raise ExportError(f"the exported graph fails the ONNX full check: {type(exc).__name__}: "
                          f"{_first_line(exc)}") from exc


def _graph_facts(onnx, onnx_path) -> dict:
    # Read the structure back (without the weights) to record the graph's real I/O signature.
    proto = onnx.load(onnx_path, load_external_data=False)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    def etype(value):
        return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name

    inits = {i.name for i in proto.graph.initializer}
    return {
        "inputs": [{"name": v.name, "shape": dims(v), "dtype": etype(v)} for v in proto.graph.input
                   if v.name not in inits],
        "outputs": [{"name": v.name, "shape": dims(v), "dtype": etype(v)} for v in proto.graph.output],
        "nodes": len(proto.graph.node),
        "ir_version": proto.ir_version,
    }


def _measure(encoder, folder, hw, dtype, module) -> dict:
    """Distance between the PyTorch encoder and the exported graph run by onnxruntime (batch 1, then 2)."""
    from .onnx import OnnxEncoder

    device = "cuda" if encoder.device.type == "cuda" else "cpu"
    worst_abs, worst_mean, worst_cos = 0.0, 0.0, 1.0
    try:
        runner = OnnxEncoder(folder, device=device, manifest=_provisional_manifest(folder, hw, module))
        for batch in (1, 2):
            pixels = _seeded_pixels(batch, hw, encoder.device)
            ref = encoder.encode(pixels).float()
            got = runner.encode(pixels).float().to(ref.device)
            if got.shape != ref.shape:
                raise ExportError(f"the exported graph returns {tuple(got.shape)} for batch {batch}, the "
                                  f"PyTorch encoder {tuple(ref.shape)}")
            diff = (got - ref).abs()
            worst_abs = max(worst_abs, float(diff.max()))
            worst_mean = max(worst_mean, float(diff.mean()))
            worst_cos = min(worst_cos, float((got * ref).sum(-1).min()))
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own untyped errors)
        # No exception for fp16: onnxruntime's CPU provider runs float16 graphs (it inserts casts around the
        # few ops without float16 kernels), so a graph it refuses is broken, not merely untested.
        raise ExportError(f"onnxruntime could not run the exported {dtype} graph: {_first_line(exc)}") from exc
    bound = TOLERANCES[dtype]
    return {"measured": True, "batches": [1, 2], "provider": runner.providers[0], "metric": "max |onnx - torch| "
            "over normalised features; min cosine per token", "max_abs": worst_abs, "mean_abs": worst_mean,
            "min_cosine": worst_cos, "bound": bound, "passed": bool(worst_abs <= bound)}


def _provisional_manifest(folder, hw, module) -> dict:
    # Just enough for OnnxEncoder to run the graph before the real manifest exists.
    return {"input": {"size": list(hw)}, "constants": "inputs" if module.constants_as_inputs else "baked",
            "model": {"id": "", "family": module.family, "stride": None}, "dtype": "",
            "output": {}, "files": {}}


def _model_facts(encoder, revision) -> dict:
    facts = {"id": encoder.model, "revision": revision, "commit": None, "path": None, "folder_sha256": None,
             "family": encoder.family, "hook_path": encoder.hook_path, "stride": encoder.stride,
             "channels": _channels(encoder),
             "latent_channels": encoder.latent_channels,
             "vae_scaling_factor": float(encoder.vae.config.scaling_factor)}
    if encoder.model and os.path.isdir(encoder.model):
        facts["path"] = os.path.abspath(encoder.model)
        used = [n for n in ("model_index.json", "vae", "unet", "scheduler", "text_encoder", "text_encoder_2",
                            "tokenizer", "tokenizer_2") if os.path.exists(os.path.join(encoder.model, n))]
        facts["folder_sha256"] = artifacts.folder_digest(encoder.model, used)
    elif encoder.model and not looks_like_path(encoder.model):
        facts["commit"] = _hub_commit(encoder.model, revision)
    return facts


def _channels(encoder) -> int:
    # The hooked attn1's output projection gives C.
    return int(encoder.hooked_module.to_out[0].out_features)


def _default_permissions(folder):
    # mkdtemp makes the folder private (0700) and onnx may write 0600 files: use the umask's defaults instead.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def _hub_commit(repo_id: str, revision: Optional[str]) -> Optional[str]:
    # The snapshot folder of the cached model_index.json is named after the commit it came from.
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    except Exception:  # noqa: BLE001  (no hub library, odd cache): the revision alone is recorded
        return None
    if isinstance(path, str) and "snapshots" in path.replace(os.sep, "/").split("/"):
        parts = path.replace(os.sep, "/").split("/")
        return parts[parts.index("snapshots") + 1]
    return None


def _versions(exporter) -> dict:
    from importlib import metadata

    from .._version import __version__

    out = {"diffcut-engine": __version__}
    for dist in ("torch", "diffusers", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    out["method"] = f"torch.onnx.export(dynamo={exporter == 'dynamo'})"
    return out


def _manifest(encoder, hw, batch_range, dtype, constants, opset, graph, tolerance, files, revision,
              exporter) -> dict:
    grid = encoder.grid_size(*hw)
    model = _model_facts(encoder, revision)
    return {
        "format": artifacts.FORMAT,
        "format_version": artifacts.FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "method": {"timestep": encoder.timestep, "seed": encoder.seed, "prompt": "", "guidance_scale": 1.0,
                   "noise_generator": "cuda" if encoder.device.type == "cuda" else "cpu",
                   "scheduler": "DDIMScheduler(timestep_spacing='trailing').add_noise",
                   "vae": "posterior mean x scaling_factor, float32"},
        "input": {"name": "pixels", "shape": ["batch", 3, hw[0], hw[1]], "dtype": "float32", "range": [-1, 1],
                  "size": list(hw)},
        "output": {"name": "features", "shape": ["batch", grid[0], grid[1], model["channels"]],
                   "dtype": "float32", "normalized": "L2 over the last axis"},
        "batch": {"min": batch_range[0], "opt": batch_range[1], "max": batch_range[1], "dynamic_axis": 0},
        "dtype": dtype,
        "precision": {"vae": "fp32", "unet": dtype, "normalize": "fp32"},
        "constants": constants,
        "constant_inputs": [g for g in graph["inputs"] if g["name"] != "pixels"],
        "opset": opset,
        "exporter": _versions(exporter),
        "external_data": any(name != artifacts.ONNX_NAME and name.startswith(artifacts.ONNX_NAME)
                             for name in files),
        "files": files,
        "graph": graph,
        "tolerance": tolerance,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["ExportableEncoder", "export_onnx", "parse_batch_range", "DEFAULT_OPSET", "EXPORTERS", "TOLERANCES"]
