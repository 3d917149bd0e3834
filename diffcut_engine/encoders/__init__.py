"""Feature encoders: every way to turn images into L2-normalised feature grids, behind one interface."""

from __future__ import annotations

from .base import FeatureEncoder

__all__ = ["FeatureEncoder", "load_encoder"]


def load_encoder(config) -> FeatureEncoder:
    """Build the encoder an :class:`~diffcut_engine.config.EngineConfig` asks for (loads weights once)."""
    if config.backbone == "efficientnet-lite0":
        from .lite import LiteEncoder

        return LiteEncoder.from_pretrained(device=config.device, dtype=config.dtype)
    from .diffusion import DiffusionEncoder

    return DiffusionEncoder.from_pretrained(config.model, revision=config.revision, device=config.device,
                                            dtype=config.dtype, timestep=config.timestep, seed=config.seed,
                                            local_files_only=config.local_files_only)
