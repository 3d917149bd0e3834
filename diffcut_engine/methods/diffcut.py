"""DiffCut's label rule: grid labels -> concept assignment at the output size -> PAMR -> 3x3 median.

Couairon et al., "DiffCut", NeurIPS 2024 (arXiv:2406.02842), section 3.3.
"""

from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np
import torch

from .. import images, refine

__all__ = ["refine_labels", "pixel_labels", "flatten_uniform"]


def flatten_uniform(features: torch.Tensor, prepared) -> torch.Tensor:
    """The features of a batch with every uniform image's grid (all black, all grey: each channel within one 8-bit
    level, :func:`~diffcut_engine.images.is_uniform`) replaced by one constant feature, so that the graph stage's
    constant-features rule keeps it one segment (a backbone's zero padding would otherwise invent borders).

    Parameters
    ----------
    features : torch.Tensor
        (B, h, w, C) features of ``prepared`` (returned as is when no image is uniform, else a changed copy).
    prepared : sequence of PreparedImage
    """
    flat = [i for i, p in enumerate(prepared) if images.is_uniform(p.net_input, value_range=2.0)]
    if flat:
        features = features.clone()
        for i in flat:
            mean = torch.nn.functional.normalize(features[i].float().mean(dim=(0, 1)), dim=-1)
            features[i] = mean.to(features.dtype).expand_as(features[i])
    return features


def refine_labels(labels: torch.Tensor, view: torch.Tensor, out_size: Tuple[int, int], num_segments: int,
                  config) -> torch.Tensor:
    """PAMR + 3x3 median filter with the config's preset (``config.refine_settings()``; docs/REFINE.md).

    PAMR runs at the preset's working size (the network size for ``demo``, 128x128 for ``eval``, ``out_size`` for
    ``full``) on ``view`` resized to it, with the masks resized as the official PAMR does; the labels come back at
    ``out_size`` (edge-aware upsampling from the working size). They come back unchanged when refinement is off or
    there is a single segment.
    """
    settings = config.refine_settings()
    if settings is None or num_segments <= 1:
        return labels
    return refine.refine_at(view, labels, work_size=settings["work_size"], num_segments=num_segments,
                            iters=settings["iters"], dilations=settings["dilations"], median=True,
                            backend=config.refine_backend)


def pixel_labels(features: torch.Tensor, grid_labels: np.ndarray, view: torch.Tensor, config,
                 timings: Optional[dict] = None) -> np.ndarray:
    """Pixel labels of one image from its grid labels: concept assignment, then refinement.

    Parameters
    ----------
    features : torch.Tensor
        (h, w, C) L2-normalised features of the image.
    grid_labels : numpy.ndarray
        (h, w) int segment ids 0..K-1.
    view : torch.Tensor
        (3, H, W) float [0, 1]: the region the labels cover (its size is the output size unless
        ``config.output_size`` is set).
    config : EngineConfig
    timings : dict, optional
        Receives the seconds of ``assign`` and ``refine``.

    Returns
    -------
    numpy.ndarray
        (H, W) int32 labels.
    """
    out_size = config.output_size or tuple(view.shape[-2:])
    num_segments = int(grid_labels.max()) + 1
    t0 = time.perf_counter()
    with torch.inference_mode():
        grid_t = torch.from_numpy(grid_labels.astype(np.int64)).to(features.device)
        labels = refine.concept_assign(features, grid_t, out_size, num_segments=num_segments)
        t1 = time.perf_counter()
        labels = refine_labels(labels, view, out_size, num_segments, config)
    t2 = time.perf_counter()
    if timings is not None:
        timings.update(assign=t1 - t0, refine=t2 - t1)
    return labels.cpu().numpy().astype(np.int32)
