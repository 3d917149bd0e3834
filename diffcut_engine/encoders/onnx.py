"""The ``onnx`` backend: run an exported encoder folder with onnxruntime.

The folder comes from ``diffcut export --format onnx`` (:mod:`~diffcut_engine.encoders.onnx_export`); neither
diffusers nor the model weights are loaded. The manifest is checked first (every file present with its recorded
size and SHA-256, and the model, size, timestep and seed the caller expects), so a wrong or damaged folder fails
with a :class:`~diffcut_engine.errors.ModelLoadError` instead of producing wrong features.

Providers: ``CPUExecutionProvider`` on the CPU. On CUDA (needs ``onnxruntime-gpu``) ``CUDAExecutionProvider``,
and ``TensorrtExecutionProvider`` first when asked for with ``providers``; the pixels are bound from the torch
CUDA tensor and the features written into a torch CUDA tensor (I/O binding), so nothing goes through the host.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

from ..errors import BackendUnavailableError, InputError, ModelLoadError
from ..utils.imports import require
from . import artifacts
from .base import FeatureEncoder, resolve_device, torch

logger = logging.getLogger(__name__)

#: ``graph_optimization`` names -> onnxruntime.GraphOptimizationLevel member names.
GRAPH_OPTIMIZATION = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                      "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}

#: Short provider names accepted in ``providers``.
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}


class OnnxEncoder(FeatureEncoder):
    """DiffCut features from an exported ONNX folder, run by onnxruntime.

    Parameters
    ----------
    engine_dir : str
        Folder written by ``diffcut export --format onnx``.
    device : {"auto", "cpu", "cuda", "cuda:N"}
        ``auto``: CUDA when torch sees a GPU and onnxruntime has the CUDA provider, else the CPU.
    providers : sequence of str, optional
        Execution providers in order of preference (``"tensorrt"``, ``"cuda"``, ``"cpu"`` or onnxruntime's full
        names); default from ``device``. The CPU provider is always appended as onnxruntime's fallback.
    threads : int, optional
        Intra-op threads of the CPU provider (onnxruntime's default: one per physical core).
    graph_optimization : {"all", "extended", "basic", "disable"}
        onnxruntime graph optimisation level.
    expect : dict, optional
        What the folder must have been exported for (``model``, ``size``, ``timestep``, ``seed``, ``dtype``);
        see :func:`~diffcut_engine.encoders.artifacts.load_manifest`.
    verify_hashes : bool
        Compare every file's SHA-256 with the manifest (sizes are always compared).
    manifest : dict, optional
        An already checked manifest (used by the exporter before the manifest is written); skips the checks.

    Raises
    ------
    ModelLoadError
        If the folder is missing, incomplete, damaged, or exported for another configuration, or onnxruntime
        cannot load the graph.
    BackendUnavailableError
        If onnxruntime is not installed, or CUDA is asked for and ``onnxruntime-gpu`` is not.
    """

    def __init__(self, engine_dir: str, *, device="auto", providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, graph_optimization: str = "all", expect: Optional[dict] = None,
                 verify_hashes: bool = True, manifest: Optional[dict] = None):
        ort = require("onnxruntime", "the onnx backend")
        self.engine_dir = os.fspath(engine_dir)
        if manifest is None:
            manifest = artifacts.load_manifest(self.engine_dir, expect=expect, verify_hashes=verify_hashes)
        self.manifest = manifest
        self.size = tuple(manifest["input"]["size"])
        self.family = manifest["model"]["family"]
        self.stride = manifest["model"]["stride"] or self.stride
        self.model = manifest["model"]["id"]
        available = ort.get_available_providers()
        self.device = _pick_device(device, available)
        self.providers = _providers(providers, self.device, available)
        options = ort.SessionOptions()
        if graph_optimization not in GRAPH_OPTIMIZATION:
            raise InputError(f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATION)}, "
                             f"got {graph_optimization!r}")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[graph_optimization])
        if threads is not None:
            if not (isinstance(threads, int) and threads >= 1):
                raise InputError(f"threads must be a positive integer, got {threads!r}")
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: onnxruntime's warnings go to stderr, not to logging
        provider_options = [_provider_options(p, self.device) for p in self.providers]
        path = os.path.join(self.engine_dir, artifacts.ONNX_NAME)
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=self.providers,
                                                provider_options=provider_options)
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own untyped errors)
            raise ModelLoadError(f"onnxruntime could not load {path!r}: {str(exc).strip().splitlines()[0]}") \
                from exc
        self._check_signature()
        self._constants = self._load_constants()
        dtype = manifest.get("dtype") or "?"
        self.name = f"{self.model or 'exported encoder'} (onnx, {dtype}, {self.providers[0]})"
        logger.info("loaded %s from %s", self.name, self.engine_dir)

    # --------------------------------------------------------------------------------------------------------
    def encode(self, pixels) -> "torch.Tensor":
        """Encode images into DiffCut features (see :meth:`FeatureEncoder.encode`).

        Raises
        ------
        InputError
            On a bad batch, or pixels of another size than the folder was exported for.
        """
        pixels = self.check_pixels(pixels)
        if tuple(pixels.shape[-2:]) != self.size:
            h, w = self.size
            raise InputError(f"this engine folder was exported for {w}x{h} px input (width x height), got "
                             f"{pixels.shape[-1]}x{pixels.shape[-2]}; export again with --size or set size to "
                             f"{w}x{h}")
        if self.device.type == "cuda":
            return self._run_cuda(pixels.contiguous())
        feeds = {"pixels": pixels.cpu().numpy()}
        feeds.update(self._constants)
        (features,) = self.session.run(["features"], feeds)
        return torch.from_numpy(features)

    def describe(self) -> dict:
        info = super().describe()
        info.update({"backend": "onnx", "model": self.model, "engine_dir": self.engine_dir,
                     "providers": list(self.session.get_providers()), "dtype": self.manifest.get("dtype"),
                     "size": self.size, "constants": self.manifest.get("constants")})
        return info

    # --------------------------------------------------------------------------------------------------------
    def _run_cuda(self, pixels):
        # I/O binding: onnxruntime reads the torch tensor and writes the torch output tensor in place.
        import numpy as np

        b, _, h, w = pixels.shape
        out_shape = (b, h // self.stride, w // self.stride, self._channels)
        features = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input("pixels", "cuda", index, np.float32, tuple(pixels.shape), pixels.data_ptr())
        for name, value in self._constants.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("features", "cuda", index, np.float32, out_shape, features.data_ptr())
        # onnxruntime runs on its own stream: make sure the pixels are written before it reads them.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return features

    def _check_signature(self):
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "pixels" not in inputs or "features" not in outputs:
            raise ModelLoadError(f"{self.engine_dir!r}: the graph has inputs {sorted(inputs)} and outputs "
                                 f"{sorted(outputs)}, not pixels -> features; export again")
        shape = list(inputs["pixels"].shape)
        if shape[1:] != [3, self.size[0], self.size[1]]:
            raise ModelLoadError(f"{self.engine_dir!r}: the graph takes pixels of shape {shape} but the manifest "
                                 f"says {self.size}; the folder mixes files of different exports")
        out = list(outputs["features"].shape)
        expected = self.manifest.get("output", {}).get("shape")
        self._channels = out[-1] if isinstance(out[-1], int) else (expected or [None])[-1]
        if expected and any(isinstance(d, int) and d != e for d, e in zip(out[1:], expected[1:])):
            raise ModelLoadError(f"{self.engine_dir!r}: the graph returns features of shape {out} but the manifest "
                                 f"says {expected}; the folder mixes files of different exports")
        self._input_names = list(inputs)

    def _load_constants(self) -> dict:
        extra = [n for n in self._input_names if n != "pixels"]
        if not extra:
            return {}
        import numpy as np

        path = os.path.join(self.engine_dir, artifacts.CONSTANTS_NAME)
        try:
            with np.load(path) as data:
                values = {name: data[name] for name in extra}
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{self.engine_dir!r}: the graph takes {', '.join(extra)} as inputs but "
                                 f"{artifacts.CONSTANTS_NAME} is missing or lacks them: {exc}") from exc
        types = {i.name: i.type for i in self.session.get_inputs()}
        return {name: v.astype(np.float16 if types[name] == "tensor(float16)" else np.float32)
                for name, v in values.items()}


def _pick_device(device, available) -> "torch.device":
    if device in (None, "auto"):
        cuda = torch.cuda.is_available() and "CUDAExecutionProvider" in available
        return torch.device("cuda" if cuda else "cpu")
    dev = resolve_device(device)
    if dev.type == "cuda" and "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(f"the onnx backend on {device!r} needs onnxruntime's CUDA provider, which "
                                      f"this onnxruntime lacks (providers: {', '.join(available)}); install it "
                                      "with: pip install onnxruntime-gpu")
    return dev


def _providers(requested, device, available) -> list:
    if requested is None:
        requested = ["cuda"] if device.type == "cuda" else []
    names = [PROVIDER_NAMES.get(p, p) for p in requested]
    missing = [p for p in names if p not in available]
    if missing:
        raise BackendUnavailableError(f"onnxruntime lacks the provider(s) {', '.join(missing)} (available: "
                                      f"{', '.join(available)}); for CUDA and TensorRT install onnxruntime-gpu")
    if device.type == "cpu" and any(p != "CPUExecutionProvider" for p in names):
        raise InputError(f"providers {names} need device='cuda'")
    return list(dict.fromkeys(names + ["CPUExecutionProvider"]))


def _provider_options(provider, device) -> dict:
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        # No trt_fp16_enable: TensorRT would then run the VAE in float16, where the SDXL VAE overflows. An
        # --fp16 export already carries float16 types for the UNet and float32 for the VAE.
        return {"device_id": str(device.index or 0)}
    return {}


__all__ = ["OnnxEncoder", "GRAPH_OPTIMIZATION", "PROVIDER_NAMES"]
