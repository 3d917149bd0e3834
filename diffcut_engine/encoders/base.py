"""The one small interface every feature encoder implements."""

from __future__ import annotations

import abc
from typing import Optional


class FeatureEncoder(abc.ABC):
    """Turns a batch of preprocessed images into a grid of L2-normalised feature tokens.

    Attributes
    ----------
    name : str
        Human-readable description (model id and backend), shown in logs and ``diffcut info``.
    family : str
        Feature family used to pick presets (tau): ``"sdxl"``, ``"sd"`` or ``"efficientnet-lite0"``.
    stride : int
        Pixels per feature token along each side (32 for every built-in encoder).
    device : torch.device
        Where the encoder runs and where ``encode`` returns its features.
    """

    name: str = "encoder"
    family: str = "generic"
    stride: int = 32
    device = None

    @abc.abstractmethod
    def encode(self, pixels):
        """Encode images into normalised features.

        Parameters
        ----------
        pixels : torch.Tensor
            (B, 3, H, W) float tensor with values in [-1, 1]; H and W are multiples of ``stride``.

        Returns
        -------
        torch.Tensor
            (B, H // stride, W // stride, C) float32 features, L2-normalised over C, on ``self.device``.
        """

    def grid_size(self, height: int, width: int) -> tuple:
        return height // self.stride, width // self.stride

    def describe(self) -> dict:
        """A small dict of facts for logs and ``diffcut info``."""
        return {"name": self.name, "family": self.family, "stride": self.stride, "device": str(self.device)}

    @property
    def default_tau(self) -> Optional[float]:
        from ..config import TAU_PRESETS
        return TAU_PRESETS.get(self.family)
