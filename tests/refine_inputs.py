"""Inputs shared by the refinement tests: a real photo at any size and Voronoi label maps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def photo(size):
    """A real photo (skimage astronaut) at ``size``, (3, H, W) float32 in [0, 1]."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(img, size=size, mode="bilinear", align_corners=False)[0].contiguous()


def voronoi_labels(size, k, seed):
    """A piecewise-constant (H, W) int64 label map with about k irregular regions (Voronoi cells of random seeds)."""
    g = np.random.default_rng(seed)
    h, w = size
    pts = g.uniform(0, 1, (k, 2)) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return torch.from_numpy(d.argmin(-1).astype(np.int64))
