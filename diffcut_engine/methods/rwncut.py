"""The random-walk NCut method (``method="rwncut"``): transition matrix -> recursive random-walk NCut -> pixels.

Steps for a prepared batch (used by :class:`~diffcut_engine.engine.Engine` when
``EngineConfig.method == "rwncut"``):

3. the transition matrix P of each image: the aggregated UNet self-attention
   (:class:`~diffcut_engine.encoders.attention.AttentionExtractor`) or, where the encoder gives no attention (the
   lite backbone, exported ONNX/TensorRT encoders), the random walk on DiffCut's feature affinity
   (:func:`~diffcut_engine.graph.rwncut.feature_transition_matrix`);
4. the recursive random-walk NCut of P (:func:`~diffcut_engine.graph.rwncut.rw_ncut`);
5. pixel labels: DiffSeg's (:func:`diffseg_assign`) or DiffCut's concept assignment;
6. PAMR and the 3x3 median filter (:func:`~diffcut_engine.methods.diffcut.refine_labels`), as for DiffCut.
"""

from __future__ import annotations

import time
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import images, refine
from ..errors import InputError
from ..graph.rwncut import feature_transition_matrix, rw_ncut
from ..result import Segmentation
from .diffcut import refine_labels
from .rwncut_options import RWNCutOptions

__all__ = ["diffseg_assign", "RWNCutOptions", "RWNCutPipeline"]


def diffseg_assign(P, grid_labels, out_size) -> torch.Tensor:
    """DiffSeg's pixel labels: each segment's mean attention row as a soft map, upsampled bilinearly, argmax.

    Parameters
    ----------
    P : torch.Tensor
        (N, N) row-stochastic matrix over the (h, w) grid (rows: queries, columns: keys, row-major).
    grid_labels : torch.Tensor
        (h, w) int segment ids 0..K-1 (every id present).
    out_size : (int, int)

    Returns
    -------
    torch.Tensor
        (H, W) int64 labels on P's device.
    """
    h, w = grid_labels.shape
    if P.shape != (h * w, h * w):
        raise InputError(f"P must be ({h * w}, {h * w}) for a {h}x{w} grid, got {tuple(P.shape)}")
    flat = grid_labels.reshape(-1).long()
    k = int(flat.max()) + 1
    onehot = F.one_hot(flat, k).to(P.dtype)  # (N, K)
    maps = (onehot.T @ P) / onehot.sum(0)[:, None]  # (K, N): mean row of each segment
    maps = F.interpolate(maps.reshape(1, k, h, w).float(), size=tuple(out_size), mode="bilinear",
                         align_corners=False)
    return maps[0].argmax(0)


class RWNCutPipeline:
    """Steps 3-6 of ``method="rwncut"`` for an engine's encoder and configuration."""

    def __init__(self, encoder, config):
        self.encoder, self.config = encoder, config
        opts = self.options = config.rwncut
        has_attention = hasattr(encoder, "unet") and hasattr(encoder, "vae")
        source = opts.source
        if source == "auto":
            source = "attention" if has_attention else "features"
        if source == "attention" and not has_attention:
            raise InputError(f"rwncut source='attention' needs the PyTorch diffusion encoder; {encoder.name} "
                             "gives no attention probabilities (use source='features')")
        self.source = source
        self._ceilings = {}
        self.extractor = None
        if source == "attention":
            from ..encoders.attention import AttentionExtractor

            self.extractor = AttentionExtractor(
                encoder, mode=opts.extraction, timestep=opts.timestep, noise=opts.noise, steps=opts.steps,
                num_inference_steps=opts.num_inference_steps, layers=opts.layers, factors=opts.factors,
                resolution_weights=opts.resolution_weights, grid_factor=opts.grid_factor)

    def describe(self) -> str:
        o = self.options
        return (f"rwncut(source={self.source}, graph={o.graph}, k={o.k}, threshold={o.threshold}, "
                f"min_size={o.min_size})")

    def transition_matrices(self, pixels) -> Tuple[torch.Tensor, Tuple[int, int], torch.Tensor]:
        """(B, N, N) float32 P, the (h, w) grid, and (B, h, w, C) L2-normalised descriptors for concept
        assignment (the attention rows, or the encoder features)."""
        if self.extractor is not None:
            P = self.extractor.extract(pixels)
            grid = self.extractor.grid_size(pixels.shape[-2], pixels.shape[-1])
            feats = F.normalize(P, dim=-1).reshape(P.shape[0], grid[0], grid[1], -1)
            return P, grid, feats
        return self.feature_walk(self.encoder.encode(pixels.to(self.encoder.device)))

    def feature_walk(self, feats) -> Tuple[torch.Tensor, Tuple[int, int], torch.Tensor]:
        """:meth:`transition_matrices` of ``source="features"`` from already encoded (B, h, w, C) features."""
        feats = feats.float()
        grid = tuple(feats.shape[1:3])
        P = torch.stack([torch.from_numpy(feature_transition_matrix(f.cpu().numpy(), alpha=self.config.alpha))
                         for f in feats]).float()
        return P.to(feats.device), grid, feats

    def blank_ceiling(self, size, dtype=torch.float32) -> float:
        """The ``tree`` rule's structureless null for this encoder at input ``size`` (h, w): the lowest root NCut
        of three blank images (black, mid-grey, white) through the same encoder and graph options.

        A blank image has no content, yet a CNN's padding or a UNet's borders give its features a smooth spatial
        structure that a size- and density-blind rule would split; no split of a real image is kept unless it
        is cheaper than every split of a blank one. Computed once per size (cached).
        """
        key = (int(size[0]), int(size[1]))
        if key not in self._ceilings:
            opts = self.options
            found = []
            for v in (-1.0, 0.0, 1.0):
                with torch.inference_mode():
                    P, grid, _ = self.transition_matrices(torch.full((1, 3, *key), v, dtype=dtype))
                sp = rw_ncut(P[0].double().cpu().numpy(), graph=opts.graph, k=opts.k, threshold="random",
                             min_size=opts.min_size, subgraph=opts.subgraph, alpha=self.config.alpha, shape=grid,
                             max_depth=1).splits
                if sp and np.isfinite(sp[0]["ncut"]):
                    found.append(sp[0]["ncut"])
            self._ceilings[key] = min(found) if found else None
        return self._ceilings[key]

    def segment(self, prepared: List, tau: float) -> List[Segmentation]:
        """Segment a prepared batch (:class:`~diffcut_engine.result.PreparedImage` items, from
        ``Engine.preprocess``); returns one :class:`~diffcut_engine.result.Segmentation` per image."""
        pixels = torch.stack([p.net_input for p in prepared])
        t0 = time.perf_counter()
        with torch.inference_mode():
            P, grid, feats = self.transition_matrices(pixels)
        share = (time.perf_counter() - t0) / len(prepared)
        return self.segment_matrices(prepared, P, grid, feats, tau, encode_time=share)

    def segment_matrices(self, prepared: List, P, grid, feats, tau: float, *, options=None,
                         encode_time: float = 0.0, return_graph: bool = False) -> List:
        """Steps 4-6 from the transition matrices of :meth:`transition_matrices` (so that several graph options,
        e.g. every threshold rule, can be compared on one encoder pass: ``options`` replaces the method's).
        With ``return_graph``, each item is ``(Segmentation, RWNCutResult)`` (the graph stage's decisions)."""
        cfg = self.config
        opts = self.options if options is None else options
        ceiling = None
        if opts.threshold == "tree" and opts.blank_null:
            ceiling = self.blank_ceiling(prepared[0].net_input.shape[-2:], prepared[0].net_input.dtype)
        out = []
        for b, item in enumerate(prepared):
            view, tm = item.view, {**item.timings, "encode": encode_time}
            t1 = time.perf_counter()
            res = rw_ncut(P[b].double().cpu().numpy(), graph=opts.graph, k=opts.k, threshold=opts.threshold,
                          tau=tau, min_size=opts.min_size, subgraph=opts.subgraph, alpha=cfg.alpha, shape=grid,
                          ceiling=ceiling)
            grid_labels, tree = res.labels, res.ncut_tree
            if images.is_uniform(item.net_input, value_range=2.0):
                # a uniform image has no structure: one segment, as with DiffCut (the attention of a UNet, or a
                # CNN's padding, would otherwise give it parts)
                grid_labels, tree = np.zeros_like(grid_labels), None
            t2 = time.perf_counter()
            out_size = cfg.output_size or tuple(view.shape[-2:])
            k = int(grid_labels.max()) + 1
            with torch.inference_mode():
                g = torch.from_numpy(grid_labels.astype(np.int64)).to(P.device)
                if opts.labels == "diffseg":
                    labels = diffseg_assign(P[b], g, out_size)
                else:
                    labels = refine.concept_assign(feats[b], g, out_size, num_segments=k)
                t3 = time.perf_counter()
                labels = refine_labels(labels, view, out_size, k, cfg)
            t4 = time.perf_counter()
            tm.update(graph=t2 - t1, assign=t3 - t2, refine=t4 - t3)
            tm["total"] = sum(v for key, v in tm.items() if key != "total")
            seg = Segmentation(labels=labels.cpu().numpy().astype(np.int32), grid_labels=grid_labels,
                               num_segments=k, timings=tm, name=item.name, image_size=item.image_size,
                               crop_box=item.box, tau=float(tau), tree=tree)
            out.append((seg, res) if return_graph else seg)
        return out
