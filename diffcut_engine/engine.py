"""The Engine: loads a backbone once and runs DiffCut on images, as numbered public stages.

1. :meth:`Engine.preprocess`: decode, validate, resize (or centre-crop) one input;
2. :meth:`Engine.encode`: a batch into L2-normalised feature grids;
3. :meth:`Engine.trees`: the recursive Normalized Cut tree of each grid, for a batch (host or device);
4. :meth:`Engine.labels`: grid labels at tau -> concept assignment -> PAMR -> median (one image).

:meth:`Engine.segment`, :meth:`Engine.iter_segment`, the video pipeline, the benchmark and the evaluation are
these stages in sequence. ``method="rwncut"`` replaces 2-4 by :mod:`diffcut_engine.methods.rwncut`.
Couairon et al., "DiffCut", NeurIPS 2024 (arXiv:2406.02842).
"""

from __future__ import annotations

import collections.abc
import itertools
import logging
import numbers
import time
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch

from . import graph, granularity, images
from .config import EngineConfig
from .encoders import FeatureEncoder, load_encoder
from .errors import BatchError, DiffCutError, InputError
from .graph.validation import check_tau
from .methods.diffcut import flatten_uniform, pixel_labels, refine_labels
from .result import PreparedImage, Segmentation, SegmentResult

logger = logging.getLogger("diffcut_engine")

__all__ = ["Engine", "Segmentation", "SegmentResult", "PreparedImage", "refine_labels", "segment"]


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

    The same, stage by stage:

    >>> prepared = [engine.preprocess("photo.jpg")]                  # doctest: +SKIP
    >>> features = engine.encode(prepared)                           # doctest: +SKIP
    >>> trees = engine.trees(features)                               # doctest: +SKIP
    >>> seg = engine.labels(prepared[0], features[0], trees[0])      # doctest: +SKIP
    """

    def __init__(self, config: Optional[EngineConfig] = None, *, encoder: Optional[FeatureEncoder] = None):
        self.config = config if config is not None else EngineConfig()
        if encoder is None:
            warn_slow_dtype(self.config)
        self.encoder = encoder if encoder is not None else load_encoder(self.config)
        self.tau = self.config.tau if self.config.tau is not None else (self.encoder.default_tau or 0.5)
        self._pipeline = None
        self._clip = self._namer = None  # open-vocabulary naming: loaded at the first segment(classes=...)
        if self.config.method == "rwncut":  # stages 2-4 of the random-walk NCut (methods/rwncut.py)
            from .methods.rwncut import RWNCutPipeline

            self._pipeline = RWNCutPipeline(self.encoder, self.config)
        elif self.config.method == "autosc":  # stages 3-4 of AutoSC (methods/autosc.py)
            from .methods.autosc import AutoSCPipeline

            self._pipeline = AutoSCPipeline(self.encoder, self.config)
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

    @property
    def method_pipeline(self):
        """The pipeline of ``method="rwncut"`` (:class:`~diffcut_engine.methods.rwncut.RWNCutPipeline`) or
        ``method="autosc"`` (:class:`~diffcut_engine.methods.autosc.AutoSCPipeline`) that runs stages 2-4 for
        those methods; ``None`` for DiffCut, whose stages are this engine's own."""
        return self._pipeline

    @property
    def uses_tau(self) -> bool:
        """Whether tau decides the segmentation: DiffCut, or the random-walk NCut with a constant threshold."""
        if self._pipeline is None:
            return True
        return self.config.method == "rwncut" and self.config.rwncut.threshold == "constant"

    def __repr__(self):
        method = f", {self._pipeline.describe()}" if self._pipeline is not None else ""
        h, w = self.config.size
        tau = f", tau={self.tau:g}" if self.uses_tau else ""
        return f"Engine({self.encoder.name}, size={w}x{h}{tau}, alpha={self.config.alpha:g}{method})"

    # ------------------------------------------------------------------------------------------ whole pipeline
    def segment(self, images_, *, tau: Optional[float] = None, segments: Optional[int] = None,
                return_features: bool = False, return_tree: bool = False, tree_tau_max: Optional[float] = None,
                errors: str = "raise", progress: bool = False, classes=None):
        """Segment one image or a list of images.

        Parameters
        ----------
        images_ : path, PIL.Image, numpy.ndarray, torch.Tensor, or a list of them
            See :mod:`diffcut_engine.images` for accepted forms.
        tau : float, optional
            Override the engine's NCut threshold for this call.
        segments : int, optional
            Instead of a tau: the number of segments wanted. Each image gets the tau whose cut of its NCut tree
            has the number of segments closest to ``segments`` (ties to the coarser cut; ``seg.tau`` says which).
            The tree is built at the engine's tau and deepened only when it has fewer leaves than asked.
            ``method="diffcut"`` only.
        return_features : bool
            Keep the (h, w, C) features on each result.
        return_tree : bool
            Keep the NCut hierarchy on each result (``seg.tree``), built up to ``tree_tau_max`` (default: tau),
            so that ``seg.tree.cut(t)`` gives the grid labels at every ``t <= tree_tau_max`` from this one pass.
        tree_tau_max : float, optional
            Depth of the kept tree (>= tau); implies ``return_tree``.
        errors : {"raise", "skip"}
            For a list: ``raise`` finishes every good input, then raises :class:`BatchError` whose ``results``
            keep them; ``skip`` returns ``None`` in place of each failed input (and logs a warning
            "skipping ...").
            A single bad image always raises its :class:`InputError`.
        progress : bool
            Show a progress bar on stderr.
        classes : list of str, Vocabulary or SegmentNamer, optional
            Name every segment with CLIP (``config.clip_model``) among these classes (a string may list synonyms,
            ``"sky, clouds"``): each result's ``naming`` holds the class name and score of each segment and the
            class map at the labels' size (:class:`~diffcut_engine.openvocab.SegmentNames`).

        Returns
        -------
        Segmentation or list of Segmentation
            One result for a single image, a list for a list.
        """
        if errors not in ("raise", "skip"):
            raise InputError(f"errors must be 'raise' or 'skip', got {errors!r}")
        single = not isinstance(images_, (list, tuple)) and not _is_stream(images_)
        items = [images_] if single else list(images_)
        results: List[Optional[Segmentation]] = [None] * len(items)
        failures = {}
        for res in self.iter_segment(items, tau=tau, segments=segments, return_features=return_features,
                                     return_tree=return_tree, tree_tau_max=tree_tau_max, progress=progress,
                                     classes=classes):
            if res.ok:
                results[res.index] = res.segmentation
            else:
                if single:
                    raise res.error
                failures[res.index] = res.error
                if errors == "skip":
                    logger.warning("skipping %s: %s", res.name, res.error)
        if single:
            return results[0]
        if failures and errors == "raise":
            detail = "; ".join(f"[{i}] {e}" for i, e in sorted(failures.items())[:3])
            raise BatchError(f"{len(failures)} of {len(items)} images failed: {detail}", results, failures)
        return results

    def iter_segment(self, inputs: Iterable, *, tau: Optional[float] = None, segments: Optional[int] = None,
                     return_features: bool = False, return_tree: bool = False,
                     tree_tau_max: Optional[float] = None, batch_size: Optional[int] = None,
                     progress: bool = False, return_image: bool = False, classes=None) -> Iterator[SegmentResult]:
        """Stream results in input order, batching the encoder; a bad input yields a result with ``error`` set.

        With ``return_image`` each result also carries the decoded image region its labels cover (for overlays
        without decoding the file again). ``segments`` and ``classes`` as in :meth:`segment`. Errors that are not
        about one input (out of memory, a broken model) propagate.
        """
        if segments is not None:
            segments = granularity.check_segments(segments)
            if tau is not None:
                raise InputError(f"give tau or segments, not both (got tau={tau!r}, segments={segments})")
            if self._pipeline is not None:
                raise InputError(f"segments=K picks a tau from the NCut tree of method='diffcut'; "
                                 f"method={self.config.method!r} has no such tree")
        tau = self.resolve_tau(tau)
        tree_tau = None
        if return_tree or tree_tau_max is not None:
            tree_tau = tau if tree_tau_max is None else self.resolve_tau(tree_tau_max)
            if tree_tau < tau:
                raise InputError(f"tree_tau_max={tree_tau} must be at least tau={tau}")
        if self._pipeline is not None and (tree_tau is not None or return_features):
            raise InputError("return_tree, tree_tau_max and return_features are for method='diffcut'; "
                             f"method={self.config.method!r} keeps no feature tree")
        if batch_size is None:
            batch_size = self.config.batch_size
        elif isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")  # -1 gave no results
        namer = self.namer(classes) if classes is not None else None
        # a sized collection is taken as a list (the bar knows its length); an iterator (a generator of frames, a
        # camera) is pulled one batch at a time, so the first results come before the last frame is read
        sized = hasattr(inputs, "__len__")
        source = (inputs if isinstance(inputs, list) else list(inputs)) if sized else iter(inputs)
        bar = _progress(len(source) if sized else None, progress)
        try:
            start = 0
            while True:
                batch = source[start:start + batch_size] if sized else list(itertools.islice(source, batch_size))
                if not batch:
                    break
                chunk = list(enumerate(batch, start))
                start += len(batch)
                for res in self._segment_batch(chunk, tau, tree_tau, return_features,
                                               return_image or namer is not None, segments):
                    if namer is not None and res.ok:
                        res = self._name_result(res, namer, return_image)
                    bar.update(1)
                    yield res
        finally:
            bar.close()

    def _segment_batch(self, chunk, tau: float, tree_tau: Optional[float], keep_features: bool,
                       keep_image: bool, segments: Optional[int] = None) -> List[SegmentResult]:
        out, prepared, segs = {}, [], []
        # 1. Decode, validate and resize each input; one bad input does not stop the others.
        for index, source in chunk:
            try:
                prepared.append(self.preprocess(source, index))
            except DiffCutError as exc:
                out[index] = SegmentResult(index, images.describe(source, index), error=exc)
        if prepared and self._pipeline is not None:
            # 2-4. method="rwncut": transition matrices, random-walk NCut, pixel labels (methods/rwncut.py).
            segs = self._pipeline.segment(prepared, tau)
        elif prepared:
            # 2. Encode the whole batch at once.
            t0 = time.perf_counter()
            features = self.encode(prepared)
            share = (time.perf_counter() - t0) / len(prepared)
            timings = [{**p.timings, "encode": share} for p in prepared]
            # 3. The NCut tree of every image, deep enough for every tau asked for.
            trees = self.trees(features, tau_max=tree_tau or tau, timings=timings)
            taus = [tau] * len(trees)
            if segments is not None:  # the tau of each tree whose cut is closest to `segments` segments
                for i, tm in enumerate(timings):
                    trees[i], taus[i] = self.tau_for_segments(features[i], trees[i], segments, timings=tm)
            # 4. Labels at tau: concept assignment, PAMR, median.
            segs = [self.labels(p, f, tree, tau=t, timings=tm, keep_tree=tree_tau is not None,
                                keep_features=keep_features)
                    for p, f, tree, t, tm in zip(prepared, features, trees, taus, timings)]
        for p, seg in zip(prepared, segs):
            out[p.index] = SegmentResult(p.index, p.name, segmentation=seg, image=p.view if keep_image else None)
        return [out[index] for index, _ in chunk]

    def namer(self, classes):
        """The :class:`~diffcut_engine.openvocab.SegmentNamer` of ``classes`` (a list of names, a
        :class:`~diffcut_engine.openvocab.Vocabulary`, or a namer, returned as is) on ``config.clip_model``.

        The CLIP model is loaded once per engine, the text classifier once per vocabulary (the last one is kept).
        CLIP sees the image at the network size (``config.size``: 1024 px, as the official evaluation).
        """
        from .openvocab import SegmentNamer, Vocabulary, load_clip

        if isinstance(classes, SegmentNamer):
            return classes
        vocab = Vocabulary.coerce(classes)
        if self._namer is not None and self._namer.vocabulary == vocab:
            return self._namer
        if self._clip is None:
            self._clip = load_clip(self.config.clip_model, device=self.device,
                                   local_files_only=self.config.local_files_only)
        self._namer = SegmentNamer(self._clip, vocab, size=self.config.size)
        return self._namer

    @staticmethod
    def _name_result(res: SegmentResult, namer, keep_image: bool) -> SegmentResult:
        """``res`` with its segments named (``segmentation.naming``) and the name stage's seconds in its timings."""
        t0 = time.perf_counter()
        seg = res.segmentation
        naming = namer.name(res.image, seg.labels)
        timings = {**seg.timings, "name": time.perf_counter() - t0}
        timings["total"] = seg.timings.get("total", 0.0) + timings["name"]
        return SegmentResult(res.index, res.name, segmentation=seg.replace(naming=naming, timings=timings),
                             image=res.image if keep_image else None)

    def segment_video(self, source, **options):
        """Segment a video (file or iterable of frames) as a stream, with segment ids kept across frames.

        Returns a :class:`~diffcut_engine.video.VideoSegmentation`: iterate it for one
        :class:`~diffcut_engine.video.VideoFrame` per input frame, in order; ``.stats`` holds the label
        stability once the loop ends. Options as :func:`diffcut_engine.video.segment_video` (``every``,
        ``max_frames``, ``batch_size``, ``tau``, ``tracking``, ...). Files need the ``[video]`` extra (PyAV).
        """
        from .video import segment_video

        return segment_video(self, source, **options)

    # ---------------------------------------------------------------------------------------------- the stages
    def preprocess(self, source, index: int = 0, *, name: Optional[str] = None) -> PreparedImage:
        """Stage 1: decode and validate one input, then resize (or centre-crop and resize) it to the network size.

        Parameters
        ----------
        source : path, PIL.Image, numpy.ndarray or torch.Tensor
            See :mod:`diffcut_engine.images`.
        index : int
            Position of the input in its call (names inputs that have no file name).
        name : str, optional
            The result's name instead of the file name or ``"<ndarray 0>"``.

        Returns
        -------
        PreparedImage

        Raises
        ------
        InputError
            Naming the input and the reason (missing file, cannot decode, wrong shape, dtype or range, NaN).
        """
        t0 = time.perf_counter()
        if isinstance(source, np.ndarray) and not source.flags.writeable:
            source = source.copy()  # e.g. np.asarray(PIL image): torch.from_numpy warns on read-only arrays
        image = images.load_image(source, index)
        t1 = time.perf_counter()
        net_input, view, box = images.prepare(image, self.config.size, self.config.resize_mode)
        timings = {"load": t1 - t0, "preprocess": time.perf_counter() - t1}
        return PreparedImage(index=index, name=image.name if name is None else name, image_size=image.size,
                             net_input=net_input, view=view, box=box, timings=timings)

    def encode(self, batch) -> torch.Tensor:
        """Stage 2: the features of a batch, (B, h, w, C) float32, L2-normalised, on the engine's device.

        Parameters
        ----------
        batch : PreparedImage, image, or a list of them
            Results of :meth:`preprocess`, or images in any accepted form (preprocessed here).

        Notes
        -----
        Runs under ``torch.no_grad()``, not ``inference_mode``: the features (and any buffers an encoder keeps,
        such as CUDA-graph inputs) are ordinary tensors, usable in or out of inference mode.
        """
        items = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        if not items:
            raise InputError("encode needs at least one image (got an empty batch)")
        prepared = [x if isinstance(x, PreparedImage) else self.preprocess(x, i) for i, x in enumerate(items)]
        pixels = torch.stack([p.net_input for p in prepared])
        with torch.no_grad():
            features = self.encoder.encode(pixels.to(self.encoder.device))
            # A uniform image (all black, all grey) has no structure: its grid gets one constant feature, so the
            # NCut's constant-features rule keeps it one segment (padding artefacts of a backbone are not parts).
            return flatten_uniform(features, prepared)

    def graph_namespace(self, features=None):
        """Where stage 3 runs: ``None`` for the host (numpy, image by image), else the array module of the
        batched device path (CuPy). See ``EngineConfig.graph_device``.

        Parameters
        ----------
        features : torch.Tensor or list of torch.Tensor, optional
            The features stage 3 will get (default: judged by the engine's device).

        Raises
        ------
        BackendUnavailableError
            For ``graph_device="device"`` without CuPy and a CUDA device (the message names the extra).
        """
        cfg = self.config
        if cfg.graph_device == "host" or cfg.graph_backend in ("native", "numpy"):
            return None
        if cfg.graph_backend == "cupy":
            return graph.device_namespace()
        if features is None:
            on_cuda = self.device.type == "cuda"
        else:
            on_cuda = (features[0] if isinstance(features, (list, tuple)) else features).is_cuda
        if cfg.graph_device == "auto" and not (on_cuda and cfg.compat != "official-float32"
                                               and graph.cupy_available()):
            return None
        return graph.device_namespace()

    def trees(self, features, *, tau_max: Optional[float] = None,
              timings: Optional[Sequence[dict]] = None) -> list:
        """Stage 3: the recursive NCut tree of every feature grid of a batch, cut later at any ``tau <= tau_max``.

        On the host each grid is solved on its own (numpy or the native core; with ``graph_threads`` > 1 the grids
        that take the native core together on its thread pool); on the device (:meth:`graph_namespace`) the trees
        of the whole batch are built in one call.

        Parameters
        ----------
        features : torch.Tensor or list of torch.Tensor
            (B, h, w, C) features from :meth:`encode`, or a list of (h, w, C) grids.
        tau_max : float, optional
            Depth of the trees (default: the engine's tau).
        timings : list of dict, optional
            One per grid; receives ``graph``, the seconds of its tree (on the device, an even share of the call).

        Returns
        -------
        list of NCutTree
        """
        tau_max = self.resolve_tau(tau_max)
        grids = _grid_list(features)
        if not grids:
            return []
        cfg = self.config
        xp = self.graph_namespace(grids)
        if xp is not None:
            t0 = time.perf_counter()
            # the trees' last level transfer has finished every device computation: the wall time is complete
            trees = graph.device_ncut_trees([f.float() for f in grids], alpha=cfg.alpha, tau_max=tau_max, xp=xp,
                                            compat=cfg.compat)
            seconds = [(time.perf_counter() - t0) / len(trees)] * len(trees)
        elif cfg.graph_threads > 1 and len(grids) > 1:
            t0 = time.perf_counter()  # the native grids of the batch together on the core's thread pool
            trees = graph.ncut_trees([f.float().cpu().numpy() for f in grids], alpha=cfg.alpha, tau_max=tau_max,
                                     compat=cfg.compat, graph_backend=cfg.graph_backend,
                                     num_threads=cfg.graph_threads)
            seconds = [(time.perf_counter() - t0) / len(trees)] * len(trees)
        else:
            trees, seconds = [], []
            for f in grids:
                t0 = time.perf_counter()
                trees.append(graph.ncut_tree(f.float().cpu().numpy(), alpha=cfg.alpha, tau_max=tau_max,
                                             compat=cfg.compat, graph_backend=cfg.graph_backend))
                seconds.append(time.perf_counter() - t0)
        for tm, s in zip(timings or (), seconds):
            tm["graph"] = s
        return trees

    def labels(self, prepared: PreparedImage, features: torch.Tensor, tree, *, tau: Optional[float] = None,
               timings: Optional[dict] = None, keep_tree: bool = False,
               keep_features: bool = False) -> Segmentation:
        """Stage 4: the segmentation of one image from its tree: grid labels at ``tau``, concept assignment at
        the output size, PAMR and a 3x3 median filter (:func:`~diffcut_engine.methods.diffcut.pixel_labels`).

        Parameters
        ----------
        prepared : PreparedImage
            From :meth:`preprocess`; its ``view`` is the image the labels cover.
        features : torch.Tensor
            (h, w, C) features of this image (an item of :meth:`encode`'s result).
        tree : NCutTree
            Its tree (an item of :meth:`trees`' result), with ``tree.tau_max >= tau``.
        tau : float, optional
            The NCut threshold (default: the engine's).
        timings : dict, optional
            Seconds of the earlier stages (default: ``prepared.timings``); the cut is added to its ``graph``.
        keep_tree, keep_features : bool
            Keep the tree, and the features as a host array, on the result.

        Returns
        -------
        Segmentation
        """
        tau = self.resolve_tau(tau)
        if not isinstance(tree, graph.NCutTree):
            raise InputError(f"labels takes one image's NCutTree (an item of trees()), got {type(tree).__name__}")
        timings = dict(prepared.timings if timings is None else timings)
        t0 = time.perf_counter()
        grid_labels = tree.cut(tau)
        timings["graph"] = timings.get("graph", 0.0) + time.perf_counter() - t0
        host_features = features.float().cpu().numpy() if keep_features else None
        labels = pixel_labels(features, grid_labels, prepared.view, self.config, timings)
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return Segmentation(labels=labels, grid_labels=grid_labels, num_segments=int(grid_labels.max()) + 1,
                            timings=timings, name=prepared.name, image_size=prepared.image_size,
                            crop_box=prepared.box, tau=tau, features=host_features,
                            tree=tree if keep_tree else None)

    def tau_for_segments(self, features: torch.Tensor, tree, segments: int, *,
                         timings: Optional[dict] = None):
        """The tau of one image whose cut has the number of segments closest to ``segments`` (ties to the coarser).

        The tree is rebuilt deeper (``tau_max`` doubled, up to :data:`~diffcut_engine.granularity.TAU_CEILING`)
        only while its cut at ``tau_max`` has fewer than ``segments`` segments.

        Parameters
        ----------
        features : torch.Tensor
            (h, w, C) features of the image (to deepen the tree).
        tree : NCutTree
            Its tree from :meth:`trees`.
        segments : int
        timings : dict, optional
            Receives the seconds of any rebuild in ``graph``.

        Returns
        -------
        tree : NCutTree
            ``tree``, or the deeper one.
        tau : float
        """
        segments = granularity.check_segments(segments)
        while (granularity.segment_count_at_max(tree) < segments
               and tree.tau_max < granularity.TAU_CEILING):
            tm = {}
            tree = self.trees([features], tau_max=min(2.0 * tree.tau_max, granularity.TAU_CEILING),
                              timings=[tm])[0]
            if timings is not None:
                timings["graph"] = timings.get("graph", 0.0) + tm.get("graph", 0.0)
        tau, _ = granularity.tau_for_segments(tree, segments)
        return tree, tau

    def at_tau(self, seg: Segmentation, tau: float, image) -> Segmentation:
        """The segmentation of the same image at another ``tau``, from its kept tree.

        No eigen-solve: the grid labels come from ``seg.tree.cut(tau)``; concept assignment and refinement run
        again (:meth:`labels`). Without kept features (``return_features=True``) the image is encoded again.

        Parameters
        ----------
        seg : Segmentation
            A result of ``segment(..., return_tree=True)`` (or ``tree_tau_max=...``), ideally with
            ``return_features=True``.
        tau : float
            At most ``seg.tree.tau_max``.
        image : path, PIL.Image, numpy.ndarray or torch.Tensor
            The image ``seg`` was made from, in any form :meth:`segment` takes; or the (3, h, w) float [0, 1]
            region the labels cover (``SegmentResult.image``).

        Returns
        -------
        Segmentation
        """
        if seg.tree is None:
            raise InputError("at_tau needs the result's NCut tree: segment with return_tree=True or "
                             "tree_tau_max=T (and return_features=True to skip a second encoder pass)")
        view = self._view_of(seg, image)
        prepared = PreparedImage(index=0, name=seg.name, image_size=seg.image_size, net_input=None, view=view,
                                 box=seg.crop_box)
        if seg.features is not None:
            feats = torch.from_numpy(seg.features).to(self.encoder.device)
        else:
            net_input = images.resize(view, self.config.size) * 2.0 - 1.0
            feats = self.encode([prepared.replace(net_input=net_input)])[0]
        out = self.labels(prepared, feats, seg.tree, tau=tau, timings={}, keep_tree=True)
        return out.replace(features=seg.features)

    def _view_of(self, seg: Segmentation, image) -> torch.Tensor:
        """The region of ``image`` that ``seg``'s labels cover, (3, h, w) float [0, 1]."""
        top, left, h, w = seg.crop_box
        if isinstance(image, torch.Tensor) and image.ndim == 3 and tuple(image.shape) == (3, h, w) \
                and image.is_floating_point():
            return image  # already the region (SegmentResult.image)
        if isinstance(image, np.ndarray) and not image.flags.writeable:
            image = image.copy()
        loaded = images.load_image(image)
        if tuple(loaded.size) != tuple(seg.image_size):
            raise InputError(f"{loaded.name}: image is {loaded.size[1]}x{loaded.size[0]} but the result was made "
                             f"from a {seg.image_size[1]}x{seg.image_size[0]} image; pass the same image")
        return images.crop(loaded.pixels, seg.crop_box)

    def resolve_tau(self, tau: Optional[float] = None) -> float:
        """``tau`` checked (a positive number), or the engine's own when ``None``.

        Raises
        ------
        InputError
            For anything but a finite positive number.
        """
        if tau is None:
            return self.tau
        return check_tau(tau)  # numpy scalars accepted; bool, inf and NaN refused


def _grid_list(features) -> list:
    """The feature grids of stage 3 as a list of (h, w, C) tensors: a (B, h, w, C) tensor or array, or a sequence
    of (h, w, C) grids (numpy arrays are taken as tensors)."""
    if isinstance(features, (np.ndarray, torch.Tensor)):
        if features.ndim != 4:
            raise InputError(f"trees takes a batch of feature grids, (B, h, w, C) or a list of (h, w, C) grids; got "
                             f"shape {tuple(features.shape)}" + (" (one grid: pass [grid] or grid[None])"
                                                                 if features.ndim == 3 else ""))
        features = list(features)
    grids = []
    for i, f in enumerate(features):
        if isinstance(f, np.ndarray):
            f = torch.from_numpy(np.ascontiguousarray(f))
        if not isinstance(f, torch.Tensor):
            raise InputError(f"feature grid {i} must be a torch tensor or a numpy array, got {type(f).__name__}")
        grids.append(f)
    return grids


def warn_slow_dtype(config: EngineConfig) -> None:
    """Warn (before any weights are loaded) when the encoder would run in fp16 on the CPU: PyTorch has few fp16
    CPU kernels, so it is tens of times slower than fp32 there; bf16 is the fast reduced precision on CPUs."""
    if config.dtype != "fp16" or config.backend != "torch":
        return
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        logger.warning("dtype fp16 on the CPU is very slow (tens of times slower than fp32: PyTorch has few fp16 "
                       "CPU kernels); use dtype bf16 (--dtype bf16) or fp32 on the CPU, fp16 on a GPU")


def _is_stream(value) -> bool:
    """Whether an input to :meth:`Engine.segment` is a stream of images (a generator or another iterator), not one
    image (file-like objects, which are iterators too, are one image)."""
    return isinstance(value, collections.abc.Iterator) and not hasattr(value, "read")


def _progress(total: Optional[int], enabled: bool):
    from .utils.progress import progress_bar

    return progress_bar(total=total, enabled=enabled, desc="segment", unit="img")


_ENGINE_CACHE: dict = {}


def segment(images_, *, segments: Optional[int] = None, **config):
    """One-call API: ``diffcut_engine.segment("photo.jpg", backbone="efficientnet-lite0")``.

    Keyword arguments are :class:`EngineConfig` fields, and ``segments`` (see :meth:`Engine.segment`); the
    engine for the last configuration is cached so repeated calls do not load the model again.
    """
    cfg = EngineConfig.from_options(**config)
    engine = _ENGINE_CACHE.get(cfg)
    if engine is None:
        _ENGINE_CACHE.clear()
        engine = _ENGINE_CACHE[cfg] = Engine(cfg)
    return engine.segment(images_, segments=segments)
