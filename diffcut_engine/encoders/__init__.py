"""Feature encoders: every way to turn images into L2-normalised feature grids, behind one interface."""

from __future__ import annotations

from .base import FeatureEncoder

__all__ = ["FeatureEncoder", "load_encoder"]


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
                                               local_files_only=config.local_files_only)
    return encoder.configure_speed(compile=getattr(config, "compile", None),
                                   channels_last=getattr(config, "channels_last", False),
                                   attention=getattr(config, "attention", "auto"),
                                   cuda_graphs=getattr(config, "cuda_graphs", False))
