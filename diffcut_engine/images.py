"""Decode, validate and resize input images.

Accepted inputs: a path (``str`` or ``pathlib.Path``), a ``PIL.Image.Image``, a numpy array (H, W, 3) / (H, W, 4)
/ (H, W) as uint8 in [0, 255] or float in [0, 1], or a torch tensor (3, H, W) float in [0, 1] or uint8.
Everything becomes a float32 torch tensor (3, H, W) in [0, 1]; bad input raises :class:`InputError` naming the
item and the reason, so nothing downstream sees a wrong shape or NaN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


@dataclass
class LoadedImage:
    """A decoded RGB image.

    Attributes
    ----------
    pixels : torch.Tensor
        (3, H, W) float32 in [0, 1], on the CPU.
    name : str
        File name or ``"<array 0>"``-style description, used in messages and output names.
    path : pathlib.Path or None
        Source file, if any.
    """

    pixels: torch.Tensor
    name: str
    path: Optional[Path] = None

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.pixels.shape[-2:])


def describe(source, index: int) -> str:
    """How messages and results name an input: the path, else ``"<ndarray 3>"``-style (type and position)."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__} {index}>"


def from_array(arr: np.ndarray, name: str) -> torch.Tensor:
    """(3, H, W) float32 [0, 1] tensor of an (H, W), (H, W, 3) or (H, W, 4) uint8 or float [0, 1] array.

    Raises
    ------
    InputError
        For another shape or dtype (the message starts with ``name``). Values are not range-checked here
        (:func:`load_image` does that).
    """
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"{name}: an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        out = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)
    elif np.issubdtype(arr.dtype, np.floating):
        out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    else:
        raise InputError(f"{name}: image arrays must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    return out


def _from_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
    t = t.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise InputError(f"{name}: an image tensor must be (3, H, W) or (1, H, W), got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
    else:
        raise InputError(f"{name}: image tensors must be uint8 or float in [0, 1], got {t.dtype}")
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t.contiguous()


def load_image(source, index: int = 0) -> LoadedImage:
    """Decode one image source into a :class:`LoadedImage`.

    Raises
    ------
    InputError
        If the file is missing or cannot be decoded, or the array/tensor has a wrong shape, dtype, range, or
        contains NaN.
    """
    name = describe(source, index)
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{name}: file not found")
        if path.is_dir():
            raise InputError(f"{name}: is a directory, not an image")
        try:
            with Image.open(path) as im:
                im.load()
                pixels = from_array(np.array(im.convert("RGB")), name)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        except Image.DecompressionBombError as exc:
            raise InputError(f"{name}: image too large to decode safely ({exc})") from exc
    elif isinstance(source, Image.Image):
        pixels = from_array(np.array(source.convert("RGB")), name)
    elif isinstance(source, np.ndarray):
        pixels = from_array(source, name)
    elif isinstance(source, torch.Tensor):
        pixels = _from_tensor(source, name)
    else:
        raise InputError(f"{name}: unsupported image type {type(source).__name__}; pass a path, a PIL image, "
                         "a numpy array or a torch tensor")
    h, w = pixels.shape[-2:]
    if h < 2 or w < 2:
        raise InputError(f"{name}: image is too small ({w}x{h} px)")
    if not torch.isfinite(pixels).all():
        raise InputError(f"{name}: image contains NaN or infinite values")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{name}: float image values must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    return LoadedImage(pixels=pixels, name=name if path is None else path.name, path=path)


def center_crop_box(height: int, width: int) -> Tuple[int, int, int, int]:
    """(top, left, side, side) of the official evaluation crop: the centred square of side ``min(H, W) - 1``.

    Offsets are rounded as ``torchvision.transforms.CenterCrop`` rounds them.
    """
    side = max(min(height, width) - 1, 1)
    top = int(round((height - side) / 2.0))
    left = int(round((width - side) / 2.0))
    return top, left, side, side


def crop(pixels: torch.Tensor, box: Tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return pixels[..., top:top + h, left:left + w]


def resize(pixels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (3, H, W) or (B, 3, H, W) to (height, width), no antialiasing (as the official code)."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    batched = pixels.ndim == 4
    x = pixels if batched else pixels[None]
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return x if batched else x[0]


def prepare(image: LoadedImage, size: Tuple[int, int], mode: str):
    """Apply the resize mode to one image.

    Returns
    -------
    net_input : torch.Tensor
        (3, size[0], size[1]) float32 in [-1, 1], the encoder input.
    view : torch.Tensor
        (3, h, w) float32 in [0, 1]: the part of the original image the labels describe (the crop in
        ``center_crop`` mode, the whole image in ``resize`` mode).
    box : tuple
        (top, left, h, w) of ``view`` in the original image.
    """
    h, w = image.size
    box = center_crop_box(h, w) if mode == "center_crop" else (0, 0, h, w)
    view = crop(image.pixels, box)
    net_input = resize(view, size) * 2.0 - 1.0
    return net_input, view, box


def list_image_files(inputs) -> list:
    """Expand files, folders (their images, sorted, not recursive) and glob patterns into a list of paths.

    Non-existing plain paths are kept so that the caller reports them as missing; a glob pattern that matches
    nothing adds nothing.
    """
    import glob

    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS))
        elif any(ch in str(item) for ch in "*?[") and not p.exists():
            out.extend(Path(m) for m in sorted(glob.glob(str(item), recursive=True)) if Path(m).is_file())
        else:
            out.append(p)
    return out
