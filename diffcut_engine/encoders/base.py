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

    def check_pixels(self, pixels, dtype=None):
        """Validate a batch of images and return it on ``self.device``.

        Parameters
        ----------
        pixels : torch.Tensor or numpy.ndarray
            (B, 3, H, W) floating point, values in [-1, 1], H and W positive multiples of ``stride``.
        dtype : torch.dtype, optional
            Dtype of the returned tensor; float32 by default.

        Raises
        ------
        InputError
            On a wrong type, rank, channel count or size, an empty batch, or NaN/inf values.
        """
        import torch

        from ..errors import InputError

        if not isinstance(pixels, torch.Tensor):
            try:
                pixels = torch.as_tensor(pixels)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputError(f"pixels must be a (B, 3, H, W) tensor, got {type(pixels).__name__}") from exc
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InputError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise InputError(f"pixels must be floating point with values in [-1, 1], got dtype {pixels.dtype}")
        b, _, h, w = pixels.shape
        if b == 0:
            raise InputError("pixels is an empty batch (B = 0)")
        if h == 0 or w == 0 or h % self.stride or w % self.stride:
            raise InputError(f"pixels height and width must be positive multiples of {self.stride} "
                             f"(one token per {self.stride} px), got {h}x{w} (height x width)")
        pixels = pixels.to(device=self.device, dtype=torch.float32)
        if not bool(torch.isfinite(pixels).all()):
            raise InputError("pixels contain NaN or infinite values")
        return pixels if dtype is None else pixels.to(dtype)

    def grid_size(self, height: int, width: int) -> tuple:
        return height // self.stride, width // self.stride

    def describe(self) -> dict:
        """A small dict of facts for logs and ``diffcut info``."""
        return {"name": self.name, "family": self.family, "stride": self.stride, "device": str(self.device)}

    @property
    def default_tau(self) -> Optional[float]:
        from ..config import TAU_PRESETS
        return TAU_PRESETS.get(self.family)
