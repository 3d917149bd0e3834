"""Feature encoders: every way to turn images into L2-normalised feature grids, behind one interface.

:class:`FeatureEncoder` and the device/dtype helpers are in :mod:`.base`; the diffusion encoder is
:mod:`.diffusion` (with :mod:`.loading`, :mod:`.conditioning`, :mod:`.truncated_unet` and :mod:`.speed`), the
offline backbone :mod:`.lite`, the exported runtimes :mod:`.onnx` and :mod:`.tensorrt`.
"""

from __future__ import annotations

from .base import FeatureEncoder, resolve_device, resolve_dtype

__all__ = ["FeatureEncoder", "load_encoder", "resolve_device", "resolve_dtype", "DiffusionEncoder", "LiteEncoder",
           "OnnxEncoder", "TensorRTEncoder"]

# Imported on first use: each pulls in its own optional dependencies (diffusers, onnxruntime, TensorRT).
_LAZY = {"DiffusionEncoder": ".diffusion", "LiteEncoder": ".lite", "OnnxEncoder": ".onnx",
         "TensorRTEncoder": ".tensorrt"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_encoder(config) -> FeatureEncoder:
    """Build the encoder an :class:`~diffcut_engine.config.EngineConfig` asks for (loads weights once)."""
    if config.backend in ("onnx", "tensorrt"):
        # An exported folder: no diffusers weights are loaded; the folder must match the configuration.
        expect = {"model": config.model, "size": config.size, "timestep": config.timestep, "seed": config.seed,
                  "dtype": config.dtype}
        if config.backend == "onnx":
            from .onnx import OnnxEncoder

            return OnnxEncoder(config.engine_dir, device=config.device, expect=expect)
        from .tensorrt import TensorRTEncoder

        return TensorRTEncoder(config.engine_dir, device=config.device, expect=expect)
    if config.backbone == "efficientnet-lite0":
        from .lite import LiteEncoder

        return LiteEncoder.from_pretrained(device=config.device, dtype=config.dtype)
    from .diffusion import DiffusionEncoder

    encoder = DiffusionEncoder.from_pretrained(config.model, revision=config.revision, device=config.device,
                                               dtype=config.dtype, timestep=config.timestep, seed=config.seed,
                                               local_files_only=config.local_files_only,
                                               vae_tf32=config.vae_tf32)
    return encoder.configure_speed(compile=config.compile, channels_last=config.channels_last,
                                   attention=config.attention, cuda_graphs=config.cuda_graphs)
