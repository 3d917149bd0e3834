"""Colour label maps and overlays (numpy + Pillow only)."""

from __future__ import annotations

import colorsys

import numpy as np


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
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    out = (1 - opacity) * image.astype(np.float32) + opacity * colorize(labels).astype(np.float32)
    if edges:
        out[boundaries(labels)] = 255
    return out.round().clip(0, 255).astype(np.uint8)
