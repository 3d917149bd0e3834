"""AutoSC (``method="autosc"``): DiffCut's features clustered in one shot by K-way spectral clustering.

The official code's ``DiffCut_AutoSC.generate_masks``: the grid labels come from
:func:`~diffcut_engine.graph.autosc.autosc` (alpha and K picked by the eigengap heuristic, no tau), then the same
concept assignment, PAMR and median filter as DiffCut (:func:`~diffcut_engine.methods.diffcut.pixel_labels`).
``EngineConfig.compat="official"`` reproduces the official code's last-alpha eigenvectors.
"""

from __future__ import annotations

import time
from typing import List

import torch

from ..graph.autosc import AUTOSC_ALPHAS, autosc
from ..result import Segmentation
from .diffcut import flatten_uniform, pixel_labels

__all__ = ["AutoSCPipeline"]


class AutoSCPipeline:
    """Stages 2-4 of ``method="autosc"`` for an engine's encoder and configuration."""

    def __init__(self, encoder, config, alphas=AUTOSC_ALPHAS):
        self.encoder, self.config, self.alphas = encoder, config, tuple(alphas)

    def describe(self) -> str:
        return f"autosc(alphas={','.join(f'{a:g}' for a in self.alphas)}, compat={self.config.compat})"

    def segment(self, prepared: List, tau: float) -> List[Segmentation]:
        """Segment a prepared batch (``Engine.preprocess`` items); ``tau`` is unused (AutoSC picks K itself) and
        each result's ``tau`` is ``None``."""
        pixels = torch.stack([p.net_input for p in prepared])
        t0 = time.perf_counter()
        with torch.no_grad():
            # a uniform image is one segment, as with DiffCut (its grid becomes one constant feature)
            feats = flatten_uniform(self.encoder.encode(pixels.to(self.encoder.device)), prepared).float()
        share = (time.perf_counter() - t0) / len(prepared)
        out = []
        for item, f in zip(prepared, feats):
            tm = {**item.timings, "encode": share}
            t1 = time.perf_counter()
            res = autosc(f.cpu().numpy(), self.alphas, compat=self.config.compat)
            tm["graph"] = time.perf_counter() - t1
            labels = pixel_labels(f, res.labels, item.view, self.config, tm)
            tm["total"] = sum(v for key, v in tm.items() if key != "total")
            out.append(Segmentation(labels=labels, grid_labels=res.labels, num_segments=int(res.labels.max()) + 1,
                                    timings=tm, name=item.name, image_size=item.image_size, crop_box=item.box,
                                    tau=None))
        return out
