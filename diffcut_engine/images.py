"""Decode, validate and resize input images.

Accepted inputs: a path (``str`` or ``pathlib.Path``), a ``PIL.Image.Image``, a numpy array (H, W, 3) / (H, W, 4)
/ (H, W) as uint8 in [0, 255], uint16 in [0, 65535] or float in [0, 1], or a torch tensor (3, H, W) float in
[0, 1], uint8 or uint16. Everything becomes a float32 torch tensor (3, H, W) in [0, 1]; bad input raises
:class:`InputError` naming the item and the reason, so nothing downstream sees a wrong shape or NaN.

Files are read as viewers show them: the EXIF orientation is applied (as ``PIL.ImageOps.exif_transpose`` does);
16-bit images are scaled by 65535 (not clipped at 255); 32-bit float images (TIFF) are kept when their values lie
in [0, 1] and otherwise scaled from their own minimum and maximum to [0, 1] (32-bit integer images likewise);
of an animated or multi-page file (GIF, APNG, WebP, TIFF) only the first frame is read, with a warning
(``diffcut video`` segments every frame of an animated GIF). Only regular files are opened: a FIFO, socket or
device is refused at once instead of blocking the run.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import InputError

logger = logging.getLogger("diffcut_engine")

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
    """(3, H, W) float32 [0, 1] tensor of an (H, W), (H, W, 3) or (H, W, 4) uint8, uint16 or float [0, 1] array.

    Raises
    ------
    InputError
        For another shape or dtype (the message starts with ``name``). Values are not range-checked here
        (:func:`load_image` does that).
    """
    if not arr.flags.writeable:  # e.g. np.asarray(PIL image): torch.from_numpy warns on read-only memory
        arr = arr.copy()
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"{name}: an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        out = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)
    elif arr.dtype == np.uint16:
        out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).div_(65535.0)
    elif np.issubdtype(arr.dtype, np.floating):
        out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    else:
        raise InputError(f"{name}: image arrays must be uint8, uint16 or float in [0, 1], got dtype {arr.dtype}")
    return out


def _from_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
    t = t.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise InputError(f"{name}: an image tensor must be (3, H, W) or (1, H, W), got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == getattr(torch, "uint16", None):
        t = t.to(torch.int32).float() / 65535.0
    elif t.is_floating_point():
        t = t.float()
    else:
        raise InputError(f"{name}: image tensors must be uint8, uint16 or float in [0, 1], got {t.dtype}")
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t.contiguous()


def check_regular_file(path: Path, name: str) -> None:
    """:class:`InputError` unless ``path`` is a regular file (after symbolic links), with the precise reason.

    A FIFO, socket or device is refused without opening it (opening a FIFO blocks until a writer comes); a
    symbolic link loop and a dangling link are named as such rather than "file not found".
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"{name}: broken symbolic link (its target {os.readlink(path)!r} does not exist)") \
                from None
        raise InputError(f"{name}: file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{name}: symbolic link loop (too many levels of symbolic links)") from None
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name}: is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{name}: not a regular file (a FIFO, socket or device); give an image file")


def pil_to_tensor(im: Image.Image, name: str) -> torch.Tensor:
    """(3, H, W) float32 [0, 1] tensor of a PIL image, as a viewer shows it.

    The EXIF orientation is applied; 16-bit modes (``I;16*``) are divided by 65535, 32-bit integer (``I``) and
    float (``F``) modes are kept when already in [0, 1] (``F``) or 16-bit range (``I``) and otherwise scaled from
    their own minimum and maximum; every other mode is converted to RGB (8-bit) by PIL.
    """
    from PIL import ImageOps

    try:
        im = ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 (a damaged EXIF block: keep the stored orientation)
        logger.warning("%s: EXIF orientation not applied (%s)", name, exc)
    mode = im.mode
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16)
        return from_array(arr, name)
    if mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: image contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if mode == "I" and lo >= 0 and hi <= 65535:
            arr = arr / 65535.0
        elif not (mode == "F" and lo >= 0.0 and hi <= 1.0):
            arr = (arr - lo) / (hi - lo) if hi > lo else np.clip(arr, 0.0, 1.0)
        return from_array(arr.astype(np.float32), name)
    return from_array(np.array(im.convert("RGB")), name)


def _16bit_colour(im, path) -> bool:
    """Whether a PNG or TIFF file holds 16 bits per sample with colour or alpha, which Pillow decodes to 8 bits
    (only 16-bit grayscale keeps its precision there): the PNG header's bit depth and colour type (2, 4, 6), or
    the TIFF's BitsPerSample tag."""
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        return isinstance(bits, tuple) and len(bits) >= 2 and max(bits) == 16
    if im.format != "PNG":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)


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
        check_regular_file(path, name)
        try:
            with Image.open(path) as im:
                frames = getattr(im, "n_frames", 1)
                if frames > 1:  # (FFmpeg, behind `diffcut video`, decodes animated GIF and APNG, not WebP)
                    logger.warning("%s: %s with %d frames; only the first is segmented%s", name,
                                   "an animated image" if im.format != "TIFF" else "a TIFF", frames,
                                   " (`diffcut video` segments every frame)" if im.format in ("GIF", "PNG") else "")
                if _16bit_colour(im, path):
                    logger.warning("%s: a 16-bit colour %s, which Pillow decodes at 8 bits per channel; for the "
                                   "full 16 bits pass the image as a uint16 array (e.g. from tifffile.imread or "
                                   "imageio)", name, im.format)
                im.load()
                pixels = pil_to_tensor(im, name)
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        except Image.DecompressionBombError as exc:
            raise InputError(f"{name}: image too large to decode safely ({exc})") from exc
    elif isinstance(source, Image.Image):
        try:  # PIL decodes lazily: a truncated or closed file given as an Image fails only here
            pixels = pil_to_tensor(source, name)
        except InputError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    elif isinstance(source, np.ndarray):
        pixels = from_array(source, name)
    elif isinstance(source, torch.Tensor):
        pixels = _from_tensor(source, name)
    else:
        raise InputError(f"{name}: unsupported image type {type(source).__name__}; pass a path, a PIL image, "
                         "a numpy array or a torch tensor")
    h, w = pixels.shape[-2:]
    if h < 2 or w < 2:
        raise InputError(f"{name}: image is too small ({w}x{h} px; at least 2x2)")
    if not torch.isfinite(pixels).all():
        raise InputError(f"{name}: image contains NaN or infinite values")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{name}: float image values must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    return LoadedImage(pixels=pixels, name=name if path is None else path.name, path=path)


#: Largest spread (max - min, per channel, in [0, 1] units) of an image that counts as uniform: one grey level.
UNIFORM_TOLERANCE = 1.0 / 255.0


def is_uniform(pixels: torch.Tensor, *, value_range: float = 1.0) -> bool:
    """Whether an image (3, H, W) is one flat colour: every channel spans at most one 8-bit level.

    ``value_range`` is the width of the pixel scale (1 for [0, 1], 2 for the network's [-1, 1]). A uniform image
    has no structure to segment; the engine gives it constant features, so the NCut's constant-features rule
    leaves it one segment (a backbone's zero padding would otherwise invent borders).
    """
    flat = pixels.reshape(pixels.shape[0], -1)
    spread = (flat.max(dim=1).values - flat.min(dim=1).values).max()
    return bool(spread <= UNIFORM_TOLERANCE * value_range + 1e-6)


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
    nothing adds nothing, and lists each file once (by its real path, shortest match kept) however many symbolic
    links lead to it.
    """
    import glob

    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS))
        elif any(ch in str(item) for ch in "*?[") and not p.exists():
            # each file once, however many paths lead to it (a ``self -> .`` link makes ``**`` repeat everything)
            shortest = {}
            for m in glob.glob(str(item), recursive=True):
                if os.path.isfile(m):
                    real = os.path.realpath(m)
                    shortest[real] = min(shortest.get(real, m), m, key=lambda q: (q.count(os.sep), q))
            out.extend(Path(m) for m in sorted(shortest.values()))
        else:
            out.append(p)
    return out
