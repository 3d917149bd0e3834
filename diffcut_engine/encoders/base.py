"""The one small interface every feature encoder implements, and the device and dtype helpers they share.

Every encoder module takes ``torch``, :func:`resolve_device` and :func:`resolve_dtype` from here.
"""

from __future__ import annotations

import abc
from typing import Optional

from ..errors import InputError
from ..utils.imports import require

torch = require("torch", "the feature encoders")

__all__ = ["FeatureEncoder", "DTYPE_NAMES", "resolve_device", "resolve_dtype", "dtype_name", "torch"]

#: Accepted names for ``dtype``.
DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device="auto") -> "torch.device":
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` into a ``torch.device``.

    ``"auto"`` picks CUDA when it is available, else the CPU.

    Raises
    ------
    InputError
        If the value is not a device name, or CUDA is asked for but not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was requested but CUDA is not available "
                         f"(torch {torch.__version__})")
    return dev


def resolve_dtype(dtype="auto", device: "torch.device" = None) -> "torch.dtype":
    """Turn ``"auto"``, ``"fp32"``, ``"fp16"``, ``"bf16"`` or a ``torch.dtype`` into a ``torch.dtype``.

    ``"auto"`` is float16 on CUDA (as the official code) and float32 elsewhere.

    Raises
    ------
    InputError
        If the value is not one of the accepted names or dtypes.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise InputError(f"dtype must be one of auto, {', '.join(DTYPE_NAMES)}, got {dtype}")
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in DTYPE_NAMES:
        raise InputError(f"dtype must be one of auto, {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    return DTYPE_NAMES[dtype]


def dtype_name(dtype) -> str:
    """``"fp32"``, ``"fp16"`` or ``"bf16"`` for a torch dtype (``str(dtype)`` for any other)."""
    return {v: k for k, v in DTYPE_NAMES.items()}.get(dtype, str(dtype))


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
