"""Colour label maps and overlays (numpy + Pillow only)."""

from __future__ import annotations

import colorsys

import numpy as np

from .errors import InputError


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (uint8, (n, 3)), deterministic: golden-ratio hues, alternating brightness."""
    cols = []
    for k in range(max(n, 1)):
        hue = (k * 0.618033988749895) % 1.0
        sat = 0.65 if k % 2 == 0 else 0.85
        val = 0.95 if (k // 2) % 2 == 0 else 0.75
        cols.append(colorsys.hsv_to_rgb(hue, sat, val))
    return (np.array(cols) * 255).round().astype(np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 colours."""
    labels = np.asarray(labels)
    return palette(int(labels.max()) + 1)[labels]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool, True on pixels whose right or lower neighbour has another label."""
    b = np.zeros(labels.shape, dtype=bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return b


def _check_same_size(image: np.ndarray, labels: np.ndarray) -> None:
    if image.shape[:2] != labels.shape:
        raise InputError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")


def overlay(image: np.ndarray, labels: np.ndarray, *, opacity: float = 0.5, edges: bool = True) -> np.ndarray:
    """Blend label colours over an image.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W, 3) uint8 RGB.
    labels : numpy.ndarray
        (H, W) integer labels.
    opacity : float
        Weight of the label colours.
    edges : bool
        Draw segment boundaries in white.

    Returns
    -------
    numpy.ndarray
        (H, W, 3) uint8.
    """
    _check_same_size(image, labels)
    out = (1 - opacity) * image.astype(np.float32) + opacity * colorize(labels).astype(np.float32)
    if edges:
        out[boundaries(labels)] = 255
    return out.round().clip(0, 255).astype(np.uint8)


#: Overlay styles of :func:`render` (``diffcut segment --overlay``).
OVERLAY_STYLES = ("blend", "contour", "side-by-side")


def contour(image: np.ndarray, labels: np.ndarray, *, opacity: float = 1.0, width: int = 2) -> np.ndarray:
    """The image with each segment's outline drawn in its colour (``width`` px on each side of a boundary),
    mixed with weight ``opacity``; the inside of the segments is left as it is.

    Returns
    -------
    numpy.ndarray
        (H, W, 3) uint8.
    """
    _check_same_size(image, labels)
    edge = boundaries(labels)
    edge[:, 1:] |= edge[:, :-1]  # both sides of a vertical boundary
    edge[1:, :] |= edge[:-1, :]
    for _ in range(max(width - 1, 0)):  # thicken
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    out = image.astype(np.float32)
    col = colorize(labels).astype(np.float32)
    out[edge] = (1 - opacity) * out[edge] + opacity * col[edge]
    return out.round().clip(0, 255).astype(np.uint8)


def side_by_side(image: np.ndarray, labels: np.ndarray, *, gap: int = 4) -> np.ndarray:
    """The image and the colour label map next to each other, ``gap`` white pixels apart ((H, 2W + gap, 3))."""
    _check_same_size(image, labels)
    h = labels.shape[0]
    return np.concatenate([image.astype(np.uint8), np.full((h, gap, 3), 255, np.uint8), colorize(labels)], axis=1)


def render(image: np.ndarray, labels: np.ndarray, style: str = "blend", *, opacity: float = 0.5) -> np.ndarray:
    """One overlay picture of ``style``: ``blend`` (colours mixed in with weight ``opacity``, white edges),
    ``contour`` (outlines in the segment colours, weight ``opacity``) or ``side-by-side`` (image | labels)."""
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"opacity must lie in [0, 1], got {opacity!r}")
    if style == "blend":
        return overlay(image, labels, opacity=opacity)
    if style == "contour":
        return contour(image, labels, opacity=opacity)
    if style == "side-by-side":
        return side_by_side(image, labels)
    raise InputError(f"unknown overlay style {style!r}; choose one of {', '.join(OVERLAY_STYLES)}")
