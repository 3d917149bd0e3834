"""A coloured class map with a legend (numpy + Pillow only)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..viz import palette

__all__ = ["render_class_map"]

_ROW = 16  # legend row height in pixels (the default bitmap font is about 11 px high)
_PAD = 4


def render_class_map(class_map: np.ndarray, names: Sequence[str], *, image: Optional[np.ndarray] = None,
                     opacity: float = 0.6) -> np.ndarray:
    """(H, W + legend, 3) uint8: the class map in the vocabulary's colours and, on the right, one legend row
    (colour swatch and class name) per class present, in class order.

    Parameters
    ----------
    class_map : numpy.ndarray
        (H, W) int class indices into ``names``.
    names : sequence of str
        Class display names (the vocabulary's ``names``); colour k is ``viz.palette(len(names))[k]``.
    image : numpy.ndarray, optional
        (H, W, 3) uint8 RGB to blend the colours over (``opacity`` is the colours' weight).
    """
    from PIL import Image, ImageDraw, ImageFont

    class_map = np.asarray(class_map)
    colours = palette(len(names))
    out = colours[class_map].astype(np.float32)
    if image is not None:
        out = (1 - opacity) * np.asarray(image, np.float32) + opacity * out
    out = out.round().clip(0, 255).astype(np.uint8)
    present = [int(k) for k in np.unique(class_map)]
    font = ImageFont.load_default()
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(draw_probe.textlength(names[k], font=font)) for k in present)
    h, w = class_map.shape
    legend_w = _PAD * 3 + _ROW + text_w
    canvas = Image.new("RGB", (w + legend_w, max(h, _PAD + _ROW * len(present))), (255, 255, 255))
    canvas.paste(Image.fromarray(out), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, k in enumerate(present):
        y = _PAD + row * _ROW
        x = w + _PAD
        draw.rectangle([x, y, x + _ROW - 4, y + _ROW - 4], fill=tuple(int(c) for c in colours[k]), outline=(0, 0, 0))
        draw.text((x + _ROW + _PAD, y), names[k], fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
