"""Result types of the engine's stages: immutable once built (frozen dataclasses).

:class:`PreparedImage` is the output of stage 1 (``Engine.preprocess``), :class:`Segmentation` the result for one
image (``Engine.labels``, ``Engine.segment``), :class:`SegmentResult` one item of ``Engine.iter_segment``.
A changed copy is made with :meth:`Segmentation.replace` (``dataclasses.replace``), never by assignment.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from .errors import DiffCutError, InputError

__all__ = ["PreparedImage", "Segmentation", "SegmentResult", "rle_encode", "rle_decode"]


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
    tau : float or None
        The NCut threshold that was used; ``None`` for a method without one (AutoSC chooses the number of segments
        itself).
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
    tau: Optional[float] = 0.0
    features: Optional[np.ndarray] = field(default=None, repr=False)
    tree: Optional[object] = field(default=None, repr=False)
    naming: Optional[object] = field(default=None, repr=False)

    def __repr__(self):
        h, w = self.labels.shape
        return f"Segmentation(name={self.name!r}, labels={w}x{h}, num_segments={self.num_segments})"

    def replace(self, **changes) -> "Segmentation":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------ per-segment output
    def to_coco(self, image_id=None) -> dict:
        """The segments as COCO-style annotations (as SAM's automatic mask generator writes them).

        Returns
        -------
        dict
            ``image``: ``file_name``, ``height``, ``width`` (of ``labels``), ``id``, and ``crop_box`` (top, left,
            height, width of the input region ``labels`` covers) and ``image_size`` (of the input).
            ``tau``, ``num_segments``, and ``annotations``: one per segment present in ``labels``, with ``id``
            (its id in ``labels``), ``segmentation`` (COCO compressed RLE: ``size`` [H, W] and ``counts``, as
            ``pycocotools.mask.decode`` reads), ``area`` (pixels), ``bbox`` ([x, y, width, height]), ``iscrowd``
            0, and ``tau_appeared`` / ``tau_split``: the segment is in the cut at every tau in
            (``tau_appeared``, ``tau_split``] (``tau_split`` is ``None`` when no further split was found; both
            ``None`` when the result kept no tree, see ``return_tree``).
        """
        H, W = self.labels.shape
        taus = self._segment_taus()
        anns = []
        ids, areas = np.unique(self.labels, return_counts=True)
        for sid, area in zip(ids.tolist(), areas.tolist()):
            mask = self.labels == sid
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            x0, y0 = int(cols[0]), int(rows[0])
            appeared, split = taus.get(sid, (None, None))
            anns.append({"id": int(sid), "segmentation": rle_encode(mask), "area": int(area),
                         "bbox": [x0, y0, int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1], "iscrowd": 0,
                         "tau_appeared": appeared, "tau_split": split})
        if isinstance(image_id, np.integer):  # json writes Python ints only
            image_id = int(image_id)
        image = {"id": image_id, "file_name": self.name, "height": int(H), "width": int(W),
                 "image_size": [int(v) for v in self.image_size], "crop_box": [int(v) for v in self.crop_box]}
        return {"image": image, "tau": None if self.tau is None else float(self.tau),
                "num_segments": int(self.num_segments), "annotations": anns}

    def _segment_taus(self) -> dict:
        """Segment id -> (tau_appeared, tau_split) from the kept tree (empty without one)."""
        from .granularity import leaf_taus

        tree = self.tree
        if tree is None or self.tau is None or tuple(getattr(tree, "shape", ())) != tuple(self.grid_labels.shape) \
                or self.tau > tree.tau_max:
            return {}
        flat = self.grid_labels.reshape(-1)
        out = {}
        for indices, appeared, split in leaf_taus(tree, self.tau):
            if len(indices):
                sid = int(np.bincount(flat[indices]).argmax())
                out[sid] = (float(appeared), None if not np.isfinite(split) else float(split))
        return out

    def save(self, path) -> str:
        """Write the result by the file's extension: ``.png`` the labels (8-bit, 16-bit above 255 segments),
        ``.npy`` the labels (int32), ``.json`` :meth:`to_coco`. A missing parent folder is created. Returns the path
        written; a path that cannot be written is an :class:`InputError` naming it."""
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".png", ".npy", ".json"):
            raise InputError(f"cannot save a segmentation as {path!r}: use .png (labels), .npy (labels) or "
                             ".json (COCO-style masks)")
        try:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            if ext == ".png":
                from PIL import Image

                labels = self.labels
                Image.fromarray(labels.astype(np.uint8 if labels.max() < 256 else np.uint16)).save(path)
            elif ext == ".npy":
                np.save(path, self.labels.astype(np.int32))
            else:
                with open(path, "w") as fh:
                    json.dump(self.to_coco(), fh)
        except OSError as exc:  # a folder in the way, a file where a folder is needed, no permission, a full disk
            raise InputError(f"cannot write {path!r}: {exc.strerror or exc}") from exc
        return path

    def plot(self, image=None, *, style: str = "blend", opacity: float = 0.5, ax=None, title: Optional[str] = None):
        """Show the segmentation with matplotlib (``pip install 'diffcut-engine[plot]'``).

        Parameters
        ----------
        image : path, PIL.Image, numpy.ndarray or torch.Tensor, optional
            The input image, to draw the segments over it (``style``: ``blend``, ``contour``, ``side-by-side``);
            without it the colour label map is shown.
        opacity : float
            Weight of the segment colours.
        ax : matplotlib Axes, optional
            Where to draw (default: a new figure).
        title : str, optional
            Default: the name, the number of segments and tau.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from . import viz
        from .utils.imports import require

        require("matplotlib", "Segmentation.plot")
        import matplotlib.pyplot as plt

        picture = viz.colorize(self.labels) if image is None else viz.render(
            self.image_rgb(image), self.labels, style, opacity=opacity)
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 8 * picture.shape[0] / max(picture.shape[1], 1)))
        ax.imshow(picture)
        ax.set_axis_off()
        ax.set_title(title if title is not None else
                     f"{self.name}: {self.num_segments} segment{'s' if self.num_segments != 1 else ''}"
                     + ("" if self.tau is None else f", tau {self.tau:.3g}"))
        return ax

    def image_rgb(self, image) -> np.ndarray:
        """(H, W, 3) uint8: the region of ``image`` (any accepted input) that ``labels`` covers, at its size."""
        from . import images

        if isinstance(image, np.ndarray) and not image.flags.writeable:
            image = image.copy()
        loaded = images.load_image(image)
        if tuple(loaded.size) != tuple(self.image_size) and self.image_size != (0, 0):
            raise InputError(f"{loaded.name}: image is {loaded.size[1]}x{loaded.size[0]}, the segmentation was "
                             f"made from a {self.image_size[1]}x{self.image_size[0]} image")
        view = images.crop(loaded.pixels, self.crop_box) if self.crop_box[2] and self.crop_box[3] else loaded.pixels
        view = images.resize(view, self.labels.shape)
        return (view.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


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


# ------------------------------------------------------------------------------------------------------------
# COCO run-length encoding (the compressed string format of pycocotools, written without it)
# ------------------------------------------------------------------------------------------------------------

def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a (H, W) boolean mask: ``{"size": [H, W], "counts": str}``.

    Runs are counted in column-major order, starting with a run of zeros; the run lengths are written as
    pycocotools' ``rleToString`` writes them (each after the first two as the difference to the one two places
    back, in 5-bit groups offset by 48), so ``pycocotools.mask.decode`` reads the result.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [int(h), int(w)], "counts": "".join(chars)}


def rle_decode(rle: dict) -> np.ndarray:
    """The (H, W) boolean mask of a COCO compressed RLE (:func:`rle_encode`'s inverse)."""
    h, w = rle["size"]
    s = rle["counts"]
    s = s.decode() if isinstance(s, bytes) else s
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    if sum(counts) != h * w:
        raise InputError(f"RLE counts sum to {sum(counts)}, not {h}x{w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((h, w), order="F")
