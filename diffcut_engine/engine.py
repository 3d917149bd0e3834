"""The Engine: loads a backbone once and runs DiffCut on images.

Pipeline (DiffCut, Couairon et al., NeurIPS 2024, arXiv:2406.02842):

1. decode and validate each image; 2. resize (or centre-crop, then resize) to the network size; 3. encode a batch
into L2-normalised feature grids; 4. recursive Normalized Cut of each grid; 5. concept assignment at the output
size; 6. PAMR and a 3x3 median filter. ``Engine.segment`` is these steps, one helper each.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from . import graph, images, refine
from .config import EngineConfig
from .encoders import FeatureEncoder, load_encoder
from .errors import BatchError, DiffCutError, InputError

logger = logging.getLogger("diffcut_engine")


@dataclass
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
    #: The NCut hierarchy (:class:`~diffcut_engine.graph.NCutTree`), if requested with ``return_tree=True``:
    #: ``tree.cut(t)`` gives the grid labels at any ``t <= tree.tau_max`` without solving again.
    tree: Optional[object] = field(default=None, repr=False)

    def __repr__(self):
        h, w = self.labels.shape
        return f"Segmentation(name={self.name!r}, labels={w}x{h}, num_segments={self.num_segments})"


@dataclass
class SegmentResult:
    """One item of :meth:`Engine.iter_segment`: either a segmentation or the error that stopped this input."""

    index: int
    name: str
    segmentation: Optional[Segmentation] = None
    error: Optional[DiffCutError] = None
    #: (3, h, w) float [0, 1] region of the input that the labels cover, if ``return_image=True``.
    image: Optional[torch.Tensor] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def refine_labels(labels: torch.Tensor, view: torch.Tensor, out_size: Tuple[int, int], num_segments: int,
                  config: EngineConfig) -> torch.Tensor:
    """Step 6: PAMR on the image resized to ``out_size`` (on the labels' device), then a 3x3 median filter;
    the labels unchanged when ``config.refine`` is off or there is a single segment."""
    if not (config.refine and num_segments > 1):
        return labels
    rgb = images.resize(view, out_size).to(labels.device)
    return refine.refine(rgb, labels, num_segments=num_segments, iters=config.pamr_iters,
                         dilations=config.pamr_dilations, median=True)


class Engine:
    """DiffCut segmentation engine.

    Parameters
    ----------
    config : EngineConfig, optional
        Everything that defines the run; defaults to the paper's setting (SSD-1B, 1024 px, alpha 10, tau 0.5).
    encoder : FeatureEncoder, optional
        An already built encoder (then ``config.model``/``backbone`` are not loaded again).

    Examples
    --------
    >>> engine = Engine.from_pretrained("segmind/SSD-1B")            # doctest: +SKIP
    >>> seg = engine.segment("photo.jpg")                            # doctest: +SKIP
    >>> seg.labels.shape, seg.num_segments                           # doctest: +SKIP
    """

    def __init__(self, config: Optional[EngineConfig] = None, *, encoder: Optional[FeatureEncoder] = None):
        self.config = config if config is not None else EngineConfig()
        self.encoder = encoder if encoder is not None else load_encoder(self.config)
        self.tau = self.config.tau if self.config.tau is not None else (self.encoder.default_tau or 0.5)
        self._rw = None
        if self.config.method == "rwncut":  # steps 3-6 of the random-walk NCut (rwsegment.py)
            from .rwsegment import RWNCutPipeline

            self._rw = RWNCutPipeline(self.encoder, self.config)
        logger.info("engine ready: %s, tau=%s, alpha=%s", self.encoder.name, self.tau, self.config.alpha)

    @classmethod
    def from_pretrained(cls, model: Optional[str] = None, **overrides) -> "Engine":
        """Build an engine from a hub id or a local folder; keyword arguments override :class:`EngineConfig`.

        ``Engine.from_pretrained(backbone="efficientnet-lite0")`` runs fully offline.
        ``Engine.from_pretrained(backend="onnx", engine_dir=DIR)`` runs a folder written by ``diffcut export``
        without loading the diffusers weights; its model, size, timestep and seed are the folder's unless given.
        """
        from .encoders.artifacts import apply_manifest_defaults

        if model is not None:
            overrides["model"] = model
        return cls(EngineConfig.from_options(**apply_manifest_defaults(overrides)))

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def __repr__(self):
        method = f", {self._rw.describe()}" if self._rw is not None else ""
        return (f"Engine({self.encoder.name}, size={self.config.size}, tau={self.tau}, "
                f"alpha={self.config.alpha}{method})")

    # ------------------------------------------------------------------------------------------------ public API
    def segment(self, images_, *, tau: Optional[float] = None, return_features: bool = False,
                return_tree: bool = False, tree_tau_max: Optional[float] = None, errors: str = "raise",
                progress: bool = False):
        """Segment one image or a list of images.

        Parameters
        ----------
        images_ : path, PIL.Image, numpy.ndarray, torch.Tensor, or a list of them
            See :mod:`diffcut_engine.images` for accepted forms.
        tau : float, optional
            Override the engine's NCut threshold for this call.
        return_features : bool
            Keep the (h, w, C) features on each result.
        return_tree : bool
            Keep the NCut hierarchy on each result (``seg.tree``), built up to ``tree_tau_max`` (default: tau),
            so that ``seg.tree.cut(t)`` gives the grid labels at every ``t <= tree_tau_max`` from this one pass.
        tree_tau_max : float, optional
            Depth of the kept tree (>= tau); implies ``return_tree``.
        errors : {"raise", "skip"}
            For a list: ``raise`` finishes every good input, then raises :class:`BatchError` whose ``results``
            keep them; ``skip`` returns ``None`` in place of each failed input (and logs a warning).
            A single bad image always raises its :class:`InputError`.
        progress : bool
            Show a progress bar on stderr.

        Returns
        -------
        Segmentation or list of Segmentation
            One result for a single image, a list for a list.
        """
        if errors not in ("raise", "skip"):
            raise InputError(f"errors must be 'raise' or 'skip', got {errors!r}")
        single = not isinstance(images_, (list, tuple))
        items = [images_] if single else list(images_)
        results: List[Optional[Segmentation]] = [None] * len(items)
        failures = {}
        for res in self.iter_segment(items, tau=tau, return_features=return_features, return_tree=return_tree,
                                     tree_tau_max=tree_tau_max, progress=progress):
            if res.ok:
                results[res.index] = res.segmentation
            else:
                if single:
                    raise res.error
                failures[res.index] = res.error
                logger.warning("skipping %s: %s", res.name, res.error)
        if single:
            return results[0]
        if failures and errors == "raise":
            detail = "; ".join(f"[{i}] {e}" for i, e in sorted(failures.items())[:3])
            raise BatchError(f"{len(failures)} of {len(items)} images failed: {detail}", results, failures)
        return results

    def iter_segment(self, inputs: Iterable, *, tau: Optional[float] = None, return_features: bool = False,
                     return_tree: bool = False, tree_tau_max: Optional[float] = None,
                     batch_size: Optional[int] = None, progress: bool = False,
                     return_image: bool = False) -> Iterator[SegmentResult]:
        """Stream results in input order, batching the encoder; a bad input yields a result with ``error`` set.

        With ``return_image`` each result also carries the decoded image region its labels cover (for overlays
        without decoding the file again). Errors that are not about one input (out of memory, a broken model)
        propagate.
        """
        tau = self._resolve_tau(tau)
        tree_tau = None
        if return_tree or tree_tau_max is not None:
            tree_tau = tau if tree_tau_max is None else self._resolve_tau(tree_tau_max)
            if tree_tau < tau:
                raise InputError(f"tree_tau_max={tree_tau} must be at least tau={tau}")
        if self._rw is not None and (tree_tau is not None or return_features):
            raise InputError("return_tree, tree_tau_max and return_features are for method='diffcut'; "
                             "method='rwncut' keeps no feature tree")
        options = {"tau": tau, "tree_tau": tree_tau, "features": return_features, "image": return_image}
        batch_size = batch_size or self.config.batch_size
        inputs = list(inputs) if not isinstance(inputs, list) else inputs
        bar = _progress(len(inputs), progress)
        try:
            for start in range(0, len(inputs), batch_size):
                chunk = list(enumerate(inputs[start:start + batch_size], start))
                for res in self._segment_batch(chunk, options):
                    bar.update(1)
                    yield res
        finally:
            bar.close()

    def segment_video(self, source, **options):
        """Segment a video (file or iterable of frames) as a stream, with segment ids kept across frames.

        Returns a :class:`~diffcut_engine.video.VideoSegmentation`: iterate it for one
        :class:`~diffcut_engine.video.VideoFrame` per input frame, in order; ``.stats`` holds the label
        stability once the loop ends. Options as :func:`diffcut_engine.video.segment_video` (``every``,
        ``max_frames``, ``batch_size``, ``tau``, ``tracking``, ...). Files need the ``[video]`` extra (PyAV).
        """
        from .video import segment_video

        return segment_video(self, source, **options)

    def encode(self, images_) -> torch.Tensor:
        """Features of one image or a list: (B, h, w, C) float32, L2-normalised, on the engine's device."""
        items = [images_] if not isinstance(images_, (list, tuple)) else list(images_)
        loaded = [images.load_image(x, i) for i, x in enumerate(items)]
        batch = torch.stack([images.prepare(im, self.config.size, self.config.resize_mode)[0] for im in loaded])
        return self._encode(batch)

    # -------------------------------------------------------------------------------------------- the pipeline
    def _segment_batch(self, chunk, options: dict) -> List[SegmentResult]:
        out = {}
        prepared = []
        # 1. Decode and validate each input; one bad input does not stop the others.
        for index, source in chunk:
            t0 = time.perf_counter()
            try:
                image = images.load_image(source, index)
                t1 = time.perf_counter()
                # 2. Resize (or centre-crop) to the network input.
                net_input, view, box = images.prepare(image, self.config.size, self.config.resize_mode)
            except DiffCutError as exc:
                out[index] = SegmentResult(index, images._describe(source, index), error=exc)
                continue
            timings = {"load": t1 - t0, "preprocess": time.perf_counter() - t1}
            prepared.append((index, image, net_input, view, box, timings))
        if prepared and self._rw is not None:
            # 3-6. method="rwncut": transition matrices, random-walk NCut, pixel labels (rwsegment.py).
            segs = self._rw.segment(torch.stack([p[2] for p in prepared]), [p[3] for p in prepared],
                                    options["tau"], [p[5] for p in prepared])
            for (index, image, _, view, box, _), seg in zip(prepared, segs):
                seg.name, seg.image_size, seg.crop_box = image.name, image.size, box
                out[index] = SegmentResult(index, image.name, segmentation=seg,
                                           image=view if options["image"] else None)
        elif prepared:
            # 3. Encode the whole batch at once.
            t0 = time.perf_counter()
            features = self._encode(torch.stack([p[2] for p in prepared]))
            share = (time.perf_counter() - t0) / len(prepared)
            # 4. On the device, the NCut trees of the whole batch are built together (None: per image, on the host).
            trees, graph_share = self._device_trees(features, options["tree_tau"] or options["tau"])
            for k, ((index, image, _, view, box, timings), feats) in enumerate(zip(prepared, features)):
                timings["encode"] = share
                seg = self._segment_features(feats, view, options["tau"], options["tree_tau"], timings,
                                             keep_features=options["features"],
                                             tree=trees[k] if trees else None, graph_seconds=graph_share)
                seg.name, seg.image_size, seg.crop_box = image.name, image.size, box
                out[index] = SegmentResult(index, image.name, segmentation=seg,
                                           image=view if options["image"] else None)
        return [out[index] for index, _ in chunk]

    def _encode(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.encoder.encode(batch.to(self.encoder.device))

    def _graph_namespace(self, features: torch.Tensor):
        """Where step 4 runs for a batch: ``None`` for the host (numpy, image by image), else the array module of
        the batched device path (CuPy). See ``EngineConfig.graph_device``.

        Raises
        ------
        BackendUnavailableError
            For ``graph_device="device"`` without CuPy and a CUDA device (the message names the extra).
        """
        cfg = self.config
        if cfg.graph_device == "host":
            return None
        if cfg.graph_device == "auto" and not (features.is_cuda and cfg.compat == "clean"
                                               and graph.cupy_available()):
            return None
        return graph.device_namespace()

    def _device_trees(self, features: torch.Tensor, tau_max: float):
        """The NCut trees of a whole batch, built in one call on the device, and each image's even share of its
        time; ``(None, 0.0)`` when the graph stage runs on the host."""
        xp = self._graph_namespace(features)
        if xp is None:
            return None, 0.0
        t0 = time.perf_counter()
        # the trees' last level transfer has finished every device computation: the wall time is complete
        trees = graph.device_ncut_trees(list(features.float()), alpha=self.config.alpha, tau_max=tau_max, xp=xp)
        return trees, (time.perf_counter() - t0) / len(trees)

    def _segment_features(self, feats: torch.Tensor, view: torch.Tensor, tau: float, tree_tau: Optional[float],
                          timings: dict, *, keep_features: bool = False, tree=None,
                          graph_seconds: float = 0.0) -> Segmentation:
        cfg = self.config
        # 4. Recursive Normalized Cut on the feature grid: on the host (one copy, also kept if asked for), unless
        #    ``tree`` was built on the device for the whole batch (``graph_seconds``: this image's share of it).
        t0 = time.perf_counter()
        host_feats = None
        if tree is None:
            host_feats = feats.float().cpu().numpy()
            tree = graph.ncut_tree(host_feats, alpha=cfg.alpha, tau_max=tree_tau or tau, compat=cfg.compat)
        grid_labels = tree.cut(tau)
        timings["graph"] = graph_seconds + time.perf_counter() - t0
        if keep_features and host_feats is None:
            host_feats = feats.float().cpu().numpy()
        seg = self._pixel_labels(feats, grid_labels, view, timings)
        seg.tau, seg.tree = tau, tree if tree_tau is not None else None
        seg.features = host_feats if keep_features else None
        return seg

    def _pixel_labels(self, feats: torch.Tensor, grid_labels: np.ndarray, view: torch.Tensor,
                      timings: dict) -> Segmentation:
        cfg = self.config
        out_size = cfg.output_size or tuple(view.shape[-2:])
        num_segments = int(grid_labels.max()) + 1
        t1 = time.perf_counter()
        # 5. Concept assignment: argmax over the K upsampled score maps.
        with torch.inference_mode():
            grid_t = torch.from_numpy(grid_labels.astype(np.int64)).to(feats.device)
            labels = refine.concept_assign(feats, grid_t, out_size, num_segments=num_segments)
            t2 = time.perf_counter()
            labels = refine_labels(labels, view, out_size, num_segments, cfg)
        t3 = time.perf_counter()
        timings.update(assign=t2 - t1, refine=t3 - t2)
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return Segmentation(labels=labels.cpu().numpy().astype(np.int32), grid_labels=grid_labels,
                            num_segments=num_segments, timings=timings)

    def at_tau(self, seg: Segmentation, tau: float, image) -> Segmentation:
        """The segmentation of the same image at another ``tau``, from its kept tree and features.

        No encoder pass and no eigen-solve: the grid labels come from ``seg.tree.cut(tau)``; concept assignment
        and refinement run again.

        Parameters
        ----------
        seg : Segmentation
            A result of ``segment(..., return_features=True, tree_tau_max=...)``.
        tau : float
            At most ``seg.tree.tau_max``.
        image : torch.Tensor
            (3, h, w) float [0, 1]: the region the labels cover (``SegmentResult.image``).

        Returns
        -------
        Segmentation
        """
        if seg.tree is None or seg.features is None:
            raise InputError("at_tau needs a result made with return_features=True and return_tree=True "
                             "(or tree_tau_max=...)")
        tau = self._resolve_tau(tau)
        t0 = time.perf_counter()
        grid_labels = seg.tree.cut(tau)
        timings = {"graph": time.perf_counter() - t0}
        feats = torch.from_numpy(seg.features).to(self.encoder.device)
        out = self._pixel_labels(feats, grid_labels, image, timings)
        out.name, out.image_size, out.crop_box = seg.name, seg.image_size, seg.crop_box
        out.tau, out.tree, out.features = tau, seg.tree, seg.features
        return out

    def _resolve_tau(self, tau):
        if tau is None:
            return self.tau
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise InputError(f"tau must be a positive number, got {tau!r}")
        return float(tau)


def _progress(total: int, enabled: bool):
    from .utils.progress import progress_bar

    return progress_bar(total=total, enabled=enabled, desc="segment", unit="img")


_ENGINE_CACHE: dict = {}


def segment(images_, **config):
    """One-call API: ``diffcut_engine.segment("photo.jpg", backbone="efficientnet-lite0")``.

    Keyword arguments are :class:`EngineConfig` fields; the engine for the last configuration is cached so
    repeated calls do not load the model again.
    """
    cfg = EngineConfig.from_options(**config)
    engine = _ENGINE_CACHE.get(cfg)
    if engine is None:
        _ENGINE_CACHE.clear()
        engine = _ENGINE_CACHE[cfg] = Engine(cfg)
    return engine.segment(images_)
