"""Result types of the engine's stages: immutable once built (frozen dataclasses).

:class:`PreparedImage` is the output of stage 1 (``Engine.preprocess``), :class:`Segmentation` the result for one
image (``Engine.labels``, ``Engine.segment``), :class:`SegmentResult` one item of ``Engine.iter_segment``.
A changed copy is made with :meth:`Segmentation.replace` (``dataclasses.replace``), never by assignment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from .errors import DiffCutError

__all__ = ["PreparedImage", "Segmentation", "SegmentResult"]


@dataclass(frozen=True)
class PreparedImage:
    """One decoded, validated and resized input (stage 1 of the pipeline).

    Attributes
    ----------
    index : int
        Position of the input in its call.
    name : str
        File name or a description of the input, used in messages and results.
    image_size : tuple of int
        (height, width) of the decoded input image.
    net_input : torch.Tensor
        (3, S_h, S_w) float32 in [-1, 1], the encoder input.
    view : torch.Tensor or None
        (3, h, w) float32 in [0, 1]: the region of the input the labels cover (the crop in ``center_crop`` mode).
    box : tuple of int
        (top, left, h, w) of ``view`` in the input image.
    timings : dict
        Seconds of ``load`` and ``preprocess``.
    """

    index: int
    name: str
    image_size: Tuple[int, int]
    net_input: object = field(repr=False)
    view: object = field(default=None, repr=False)
    box: Tuple[int, int, int, int] = (0, 0, 0, 0)
    timings: dict = field(default_factory=dict)

    def replace(self, **changes) -> "PreparedImage":
        """A copy with some fields changed (e.g. ``view=None`` to free the image while it waits)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Segmentation:
    """The result for one image.

    Attributes
    ----------
    labels : numpy.ndarray
        (H, W) int32 segment ids at the output size (the input image's own size unless ``output_size`` was set;
        in ``center_crop`` mode, the size of the crop). Ids are those of ``grid_labels``; a segment can vanish
        at full resolution, so some ids in 0..num_segments-1 may be absent.
    grid_labels : numpy.ndarray
        (h, w) int32 segment ids 0..K-1 on the feature grid (the recursive NCut output).
    num_segments : int
        K, the number of NCut leaves.
    timings : dict
        Seconds per stage: ``load``, ``preprocess``, ``encode`` (this image's share of its batch), ``graph``,
        ``assign``, ``refine``, ``total``. When the graph stage runs on the device (``graph_device``), the trees of
        a whole batch are built in one call: ``graph`` is then that call's time divided evenly between the
        batch's images, plus this image's own cut.
    name : str
        Source file name or a description of the input.
    image_size : tuple of int
        (height, width) of the decoded input image.
    crop_box : tuple of int
        (top, left, height, width) of the region of the input that ``labels`` covers.
    tau : float
        The NCut threshold that was used.
    features : numpy.ndarray or None
        (h, w, C) float32 normalised features, if requested with ``return_features=True``.
    tree : NCutTree or None
        The NCut hierarchy (:class:`~diffcut_engine.graph.NCutTree`), if requested with ``return_tree=True``:
        ``tree.cut(t)`` gives the grid labels at any ``t <= tree.tau_max`` without solving again.
    naming : SegmentNames or None
        Class name and score of each segment and the (H, W) class map
        (:class:`~diffcut_engine.openvocab.SegmentNames`), if asked for with ``segment(..., classes=[...])``.
    """

    labels: np.ndarray
    grid_labels: np.ndarray
    num_segments: int
    timings: dict
    name: str = ""
    image_size: Tuple[int, int] = (0, 0)
    crop_box: Tuple[int, int, int, int] = (0, 0, 0, 0)
    tau: float = 0.0
    features: Optional[np.ndarray] = field(default=None, repr=False)
    tree: Optional[object] = field(default=None, repr=False)
    naming: Optional[object] = field(default=None, repr=False)

    def __repr__(self):
        h, w = self.labels.shape
        return f"Segmentation(name={self.name!r}, labels={w}x{h}, num_segments={self.num_segments})"

    def replace(self, **changes) -> "Segmentation":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SegmentResult:
    """One item of :meth:`Engine.iter_segment`: either a segmentation or the error that stopped this input.

    Attributes
    ----------
    index : int
    name : str
    segmentation : Segmentation or None
    error : DiffCutError or None
    image : torch.Tensor or None
        (3, h, w) float [0, 1] region of the input that the labels cover, if ``return_image=True``.
    """

    index: int
    name: str
    segmentation: Optional[Segmentation] = None
    error: Optional[DiffCutError] = None
    image: Optional[object] = None

    @property
    def ok(self) -> bool:
        return self.error is None
