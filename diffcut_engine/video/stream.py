"""The streaming pipeline: decode -> encode -> graph -> track, each stage a thread, joined by bounded queues.

1. **decode + preprocess** (PyAV; ``Engine.preprocess``): frames in presentation order, every ``every``-th one
   prepared for the network; 2. **encode** (``Engine.encode``, and ``Engine.trees`` when the graph stage runs on the
   device): ``batch_size`` frames per call; 3. **graph** (``Engine.trees`` on the host, ``Engine.labels``): NCut,
   concept assignment and refinement of each frame (``graph_workers`` threads, results kept in input order);
   4. **track** (the consumer's thread): ids matched to earlier frames' by :class:`SegmentTracker`.

Memory does not grow with the video's length, and the stages overlap (torch, numpy and LAPACK release the GIL in
their kernels). Frames between two segmented frames (``every > 1``) carry the labels of the last segmented one.
"""

from __future__ import annotations

import numbers
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Optional, Tuple

import numpy as np

from ..errors import DiffCutError, InputError
from .io import DEFAULT_FPS, VideoError, VideoInfo, check_complete, info_of, open_input, require_av
from .tracking import SegmentTracker, StabilityMeter, VideoStats

__all__ = ["VideoFrame", "VideoSegmentation", "segment_video"]


@dataclass
class _Frame:
    """One frame on its way through the stages."""

    index: int
    pts: Optional[int]
    image: np.ndarray                       # (H, W, 3) uint8 RGB
    segment: bool
    prepared: object = None                  # PreparedImage without its view (rebuilt from ``image``)
    timings: dict = field(default_factory=dict)
    features: object = None                  # (h, w, C) tensor, after encoding
    tree: object = None                      # NCut tree built on the device for the whole batch


class _Failure:
    """Carries an exception downstream, after every frame that came before it."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


@dataclass
class VideoFrame:
    """One output frame of :func:`segment_video`.

    Attributes
    ----------
    index : int
        Position of the frame in the input (0-based, counting every decoded frame).
    pts : int or None
        Presentation timestamp in ``time_base`` units (from the container; ``index`` for an iterable).
    time_base : fractions.Fraction
        Unit of ``pts``.
    image : numpy.ndarray
        (H, W, 3) uint8 RGB frame as decoded.
    segmentation : Segmentation or None
        Labels with *tracked* ids (``labels`` and ``grid_labels``; ids are stable across frames and may exceed
        ``num_segments``). For a frame that was not segmented (``every > 1``) the latest segmented frame's result;
        ``None`` if no frame was segmented yet or this frame failed.
    segmented : bool
        This frame was segmented (not holding an earlier frame's labels).
    track_ids : numpy.ndarray or None
        (K,) tracked id of each per-frame NCut segment (``track_ids[seg_ncut_id]``).
    error : DiffCutError or None
        Why this frame could not be segmented (an item of an iterable that is not an image).
    """

    index: int
    pts: Optional[int]
    time_base: Fraction
    image: np.ndarray
    segmentation: Optional[object] = None
    segmented: bool = False
    track_ids: Optional[np.ndarray] = None
    error: Optional[DiffCutError] = None

    @property
    def time(self) -> Optional[float]:
        """Presentation time in seconds."""
        return None if self.pts is None else float(self.pts * self.time_base)

    @property
    def labels(self) -> Optional[np.ndarray]:
        return None if self.segmentation is None else self.segmentation.labels

    @property
    def ok(self) -> bool:
        return self.error is None


class VideoSegmentation:
    """The frames of a video, segmented as they stream: iterate once; ``info`` and, after the loop, ``stats``.

    Made by :func:`segment_video` (or :meth:`Engine.segment_video`); see there for the parameters. The input is
    opened at construction, so a missing or unreadable file fails at once; the worker threads start with the
    iteration and stop when it ends, is broken off, or fails (the file is closed in every case).
    """

    def __init__(self, engine, source, *, every: int = 1, max_frames: Optional[int] = None,
                 batch_size: Optional[int] = None, tau: Optional[float] = None, tracking: bool = True,
                 match_threshold: float = 0.8, memory: int = 30, graph_workers: int = 1,
                 fps: Optional[float] = None, progress: bool = False):
        def integer(value) -> bool:  # numpy integers too; True is not a frame count
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        for name, value, low in (("every", every, 1), ("graph_workers", graph_workers, 1), ("memory", memory, 0)):
            if not (integer(value) and value >= low):
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if max_frames is not None and not (integer(max_frames) and max_frames >= 0):
            raise InputError(f"max_frames must be a non-negative integer, got {max_frames!r}")
        if batch_size is not None and not (integer(batch_size) and batch_size >= 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        every, graph_workers, memory = int(every), int(graph_workers), int(memory)
        max_frames = None if max_frames is None else int(max_frames)
        batch_size = None if batch_size is None else int(batch_size)
        if engine.config.method != "diffcut":
            raise InputError(f"segment_video runs method='diffcut' only, got method={engine.config.method!r}")
        self.engine = engine
        self.every, self.max_frames, self.graph_workers = every, max_frames, graph_workers
        self.batch_size = batch_size or engine.config.batch_size
        self.tau = engine.resolve_tau(tau)
        self.tracker = SegmentTracker(threshold=match_threshold, memory=memory) if tracking else None
        self.progress = progress
        self.stats = VideoStats()
        self._container = None
        self._iterable = None
        self._used = False
        if isinstance(source, (str, os.PathLike)):
            self._container = open_input(source)
            self.info = info_of(self._container, source)
        else:
            self._iterable = iter(source)
            rate = Fraction(fps if fps is not None else DEFAULT_FPS).limit_denominator(1001)
            self.info = VideoInfo(width=0, height=0, fps=rate, time_base=1 / rate, path=None)

    # the source, one frame at a time -------------------------------------------------------------------------
    def _source_frames(self) -> Iterator[Tuple[int, Optional[int], object]]:
        """(index, pts, frame-like) in presentation order; raises VideoError when the stream breaks off."""
        limit = self.max_frames
        if self._iterable is not None:
            for index, item in enumerate(self._iterable):
                if limit is not None and index >= limit:
                    return
                yield index, index, item
            return
        av = require_av()
        container, name = self._container, self.info.path
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index, first_pts, last_pts = 0, None, None
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if limit is not None and index >= limit:
                        return
                    if frame.pts is not None:
                        first_pts = frame.pts if first_pts is None else min(first_pts, frame.pts)
                        last_pts = frame.pts if last_pts is None else max(last_pts, frame.pts)
                    yield index, frame.pts, frame
                    index += 1
        except av.FFmpegError as exc:
            self.stats.truncated = True
            raise VideoError(f"{name}: the video stream broke off after {index} frames ({exc.strerror or exc}); "
                             "the file is truncated or corrupt", index) from exc
        if limit is not None and index >= limit:
            return
        if index == 0 and limit != 0:
            self.stats.truncated = True
            raise VideoError(f"{name}: no video frame could be decoded; the file is truncated or corrupt", 0)
        self._check_complete(index, first_pts, last_pts)

    def _check_complete(self, index: int, first_pts, last_pts):
        """io.check_complete of the stream (its VideoError marks the stats truncated)."""
        try:
            check_complete(self.info, index, first_pts, last_pts)
        except VideoError:
            self.stats.truncated = True
            raise

    # stage 1: decode and preprocess -----------------------------------------------------------------------------
    def _decode_stage(self, out: queue.Queue, stop: threading.Event):
        from .. import images

        try:
            last_pts = None
            for index, pts, item in self._source_frames():
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                if hasattr(item, "to_ndarray"):  # an av.VideoFrame
                    rgb = item.to_ndarray(format="rgb24")
                else:
                    try:
                        loaded = images.load_image(item, index)
                    except DiffCutError as exc:
                        _put(out, (index, exc), stop)
                        continue
                    rgb = (loaded.pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                if pts is None or (last_pts is not None and pts <= last_pts):
                    pts = index if last_pts is None else last_pts + 1   # missing or repeated timestamps
                last_pts = pts
                frame = _Frame(index=index, pts=pts, image=rgb, segment=index % self.every == 0)
                if frame.segment:
                    t1 = time.perf_counter()
                    prepared = self.engine.preprocess(rgb, index, name=f"frame {index}")
                    frame.prepared = prepared.replace(view=None)  # the view is rebuilt from ``image`` later
                    frame.timings = {**prepared.timings, "load": t1 - t0 + prepared.timings["load"]}
                if not _put(out, frame, stop):
                    return
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which re-raises it)
            _put(out, _Failure(exc), stop)
        _put(out, _END, stop)

    # stage 2: batched encoder -------------------------------------------------------------------------------------
    def _encode_stage(self, inp: queue.Queue, out: queue.Queue, stop: threading.Event):
        pending, count = [], 0

        def flush():
            todo = [f for f in pending if isinstance(f, _Frame) and f.segment]
            if todo:
                t0 = time.perf_counter()
                feats = self.engine.encode([f.prepared for f in todo])
                share = (time.perf_counter() - t0) / len(todo)
                for k, f in enumerate(todo):
                    f.features, f.prepared = feats[k], f.prepared.replace(net_input=None)
                    f.timings["encode"] = share
                if self.engine.graph_namespace(feats) is not None:
                    # on the device the trees of the whole batch are built in one call; on the host, per frame
                    trees = self.engine.trees(feats, tau_max=self.tau, timings=[f.timings for f in todo])
                    for f, tree in zip(todo, trees):
                        f.tree = tree
            for f in pending:
                if not _put(out, f, stop):
                    return False
            pending.clear()
            return True

        try:
            while True:
                item = _get(inp, stop)
                if item is None:
                    return
                if item is _END or isinstance(item, _Failure):
                    if flush():
                        _put(out, item, stop)
                    return
                pending.append(item)
                count += isinstance(item, _Frame) and item.segment
                if count >= self.batch_size:
                    count = 0
                    if not flush():
                        return
        except BaseException as exc:  # noqa: BLE001
            _put(out, _Failure(exc), stop)

    # stage 3: graph, concept assignment, refinement -------------------------------------------------------------
    def _graph_work(self, frame: _Frame):
        import torch

        from .. import images, refine

        engine, prepared = self.engine, frame.prepared
        tree = frame.tree
        if tree is None:  # host graph stage, in this worker
            tree = engine.trees([frame.features], tau_max=self.tau, timings=[frame.timings])[0]
        view = images.crop(images.from_array(frame.image, prepared.name), prepared.box)
        seg = engine.labels(prepared.replace(view=view), frame.features, tree, tau=self.tau, timings=frame.timings)
        concepts = None
        if self.tracker is not None:
            with torch.inference_mode():
                grid = torch.from_numpy(seg.grid_labels.astype(np.int64)).to(frame.features.device)
                concepts = refine.cluster_centroids(frame.features, grid, num_segments=seg.num_segments)
                concepts = concepts.float().cpu().numpy()
        frame.features = frame.tree = None
        return seg, concepts

    def _graph_stage(self, inp: queue.Queue, out: queue.Queue, stop: threading.Event, pool: ThreadPoolExecutor):
        try:
            while True:
                item = _get(inp, stop)
                if item is None:
                    return
                if isinstance(item, _Frame) and item.segment:
                    future = pool.submit(self._graph_work, item)
                else:
                    future = None
                if not _put(out, (item, future), stop) or item is _END or isinstance(item, _Failure):
                    return
        except BaseException as exc:  # noqa: BLE001
            _put(out, (_Failure(exc), None), stop)

    # the consumer: order, tracking, statistics --------------------------------------------------------------------
    def __iter__(self) -> Iterator[VideoFrame]:
        if self._used:
            raise InputError("a VideoSegmentation can be iterated only once; call segment_video again")
        self._used = True
        return self._run()

    def _run(self) -> Iterator[VideoFrame]:
        from ..utils.progress import progress_bar

        depth = max(2, self.batch_size)
        q_decoded, q_encoded, q_done = (queue.Queue(maxsize=depth), queue.Queue(maxsize=depth),
                                        queue.Queue(maxsize=depth + self.graph_workers))
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.graph_workers, thread_name_prefix="diffcut-graph")
        threads = [threading.Thread(target=self._decode_stage, args=(q_decoded, stop), name="diffcut-decode"),
                   threading.Thread(target=self._encode_stage, args=(q_decoded, q_encoded, stop),
                                    name="diffcut-encode"),
                   threading.Thread(target=self._graph_stage, args=(q_encoded, q_done, stop, pool),
                                    name="diffcut-graph-dispatch")]
        for t in threads:
            t.daemon = True
            t.start()
        meter = StabilityMeter()
        total = self.info.expected_frames
        if self.max_frames is not None:
            total = self.max_frames if total is None else min(total, self.max_frames)
        bar = progress_bar(total=total, enabled=self.progress, desc="video", unit="frame")
        stats, latest, latest_ids = self.stats, None, None
        t_start = time.perf_counter()
        try:
            while True:
                item, future = q_done.get()
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                if isinstance(item, tuple):  # (index, error): an item of an iterable that is not an image
                    index, exc = item
                    stats.frames += 1
                    bar.update(1)
                    yield VideoFrame(index=index, pts=index, time_base=self.info.time_base,
                                     image=np.zeros((0, 0, 3), np.uint8), error=exc)
                    continue
                if future is not None:
                    seg, concepts = future.result()
                    raw = seg.labels
                    if self.tracker is not None:
                        ids, carried = self.tracker.update(concepts, seg.grid_labels)
                        seg = seg.replace(labels=ids[seg.labels].astype(np.int32),
                                          grid_labels=ids[seg.grid_labels].astype(np.int32))
                        area = np.bincount(raw.ravel(), minlength=len(ids)) / raw.size
                        carried_fraction = float(area[carried].sum())
                        stats.num_ids = self.tracker.next_id
                    else:
                        ids, carried_fraction = np.arange(seg.num_segments), None
                        stats.num_ids = max(stats.num_ids, seg.num_segments)
                    meter.update(raw, seg.labels, carried_fraction, seg.num_segments)
                    latest, latest_ids = seg, ids
                    stats.segmented += 1
                    bar.set_postfix_str(f"{seg.num_segments} segments")
                stats.frames += 1
                bar.update(1)
                if not self.info.width:
                    self.info.height, self.info.width = item.image.shape[:2]
                yield VideoFrame(index=item.index, pts=item.pts, time_base=self.info.time_base, image=item.image,
                                 segmentation=latest, segmented=future is not None, track_ids=latest_ids)
        finally:
            stop.set()
            stats.seconds = time.perf_counter() - t_start
            stats.fps = stats.frames / stats.seconds if stats.seconds > 0 else 0.0
            meter.fill(stats)
            bar.close()
            for t in threads:
                t.join(timeout=30)
            pool.shutdown(wait=True, cancel_futures=True)
            self.close()

    def close(self):
        """Close the input file (also done when the iteration ends)."""
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put, waiting while the queue is full, unless the run is stopped (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    """Get, waiting while the queue is empty, unless the run is stopped (then None)."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def segment_video(engine, source, *, every: int = 1, max_frames: Optional[int] = None,
                  batch_size: Optional[int] = None, tau: Optional[float] = None, tracking: bool = True,
                  match_threshold: float = 0.8, memory: int = 30, graph_workers: int = 1,
                  fps: Optional[float] = None, progress: bool = False) -> VideoSegmentation:
    """Segment a video frame by frame, streaming, with segment ids kept stable across frames.

    Parameters
    ----------
    engine : Engine
        The engine whose encoder, graph stage and refinement run on each frame.
    source : path or iterable
        A video file (decoded with PyAV), or an iterable of images in any form :meth:`Engine.segment` accepts
        (numpy (H, W, 3) uint8 arrays, PIL images, tensors, paths).
    every : int
        Segment every ``every``-th frame (1: all); the frames between carry the last segmented frame's labels.
    max_frames : int, optional
        Stop after this many frames of the input.
    batch_size : int, optional
        Frames per encoder call (default: the engine's ``batch_size``).
    tau : float, optional
        NCut threshold (default: the engine's).
    tracking : bool
        Match segment ids across frames (:class:`SegmentTracker`); ``False`` keeps each frame's NCut ids.
    match_threshold : float
        Minimum cosine similarity of concept vectors for a segment to keep a previous frame's id.
    memory : int
        Frames a segment that disappeared is remembered (it gets its id back if it reappears within them).
    graph_workers : int
        Threads running the graph stage and refinement of different frames at once (results stay in order).
    fps : float, optional
        Frame rate given to an iterable of images (default 25); a file's own rate is always kept.
    progress : bool
        Progress bar on stderr with frames per second.

    Returns
    -------
    VideoSegmentation
        Iterate it for :class:`VideoFrame` results in input order; ``.info`` describes the input, ``.stats``
        (:class:`VideoStats`) is complete once the iteration ends.

    Raises
    ------
    VideoError
        At once if the file cannot be opened; during the iteration, after every frame decoded before the break,
        if the stream breaks off or ends before the frame count its container declares (truncated file).
    BackendUnavailableError
        For a file when PyAV is not installed (``pip install 'diffcut-engine[video]'``).

    Examples
    --------
    >>> engine = Engine.from_pretrained(backbone="efficientnet-lite0", size=512)     # doctest: +SKIP
    >>> video = engine.segment_video("clip.mp4", every=2)                            # doctest: +SKIP
    >>> for frame in video:                                                          # doctest: +SKIP
    ...     print(frame.index, frame.time, np.unique(frame.labels))
    >>> video.stats.label_stability                                                  # doctest: +SKIP
    """
    return VideoSegmentation(engine, source, every=every, max_frames=max_frames, batch_size=batch_size, tau=tau,
                             tracking=tracking, match_threshold=match_threshold, memory=memory,
                             graph_workers=graph_workers, fps=fps, progress=progress)
