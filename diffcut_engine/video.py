"""Streaming video segmentation: decode, batch, segment, keep segment ids across frames, write.

Pipeline (each stage a worker thread, stages joined by bounded queues, so memory does not grow with the video's
length and the stages overlap; torch, numpy and LAPACK release the GIL in their kernels):

1. **decode + preprocess** (PyAV): frames in presentation order, every ``every``-th one resized to the network
   input; 2. **encode**: ``batch_size`` frames per encoder call; 3. **graph**: recursive NCut, concept assignment
   and refinement of each frame (``graph_workers`` threads, results kept in input order); 4. **track** (the
   consumer's thread): segment ids matched to the previous frames' by :class:`SegmentTracker`, so a region keeps
   its id and colour; 5. **write** (:class:`VideoWriter`, its own thread): overlay, encode, mux, audio copied.

Output frames always come in input order. Frames between two segmented frames (``every > 1``) carry the labels of
the last segmented one, so the written video keeps every frame, its timestamps, frame rate and time base.

PyAV is the optional ``[video]`` extra: ``pip install 'diffcut-engine[video]'``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from .errors import DiffCutError, InputError

logger = logging.getLogger("diffcut_engine")

#: Default frame rate for an iterable of images (no container to take it from).
DEFAULT_FPS = 25

__all__ = [
    "VideoError",
    "VideoInfo",
    "VideoFrame",
    "VideoStats",
    "VideoSegmentation",
    "SegmentTracker",
    "StabilityMeter",
    "VideoWriter",
    "LabelWriter",
    "probe_video",
    "segment_video",
]


class VideoError(InputError):
    """A video cannot be opened, or its stream broke off (corrupt or truncated file).

    Attributes
    ----------
    frames_done : int
        Frames decoded (and passed on) before the stream broke off; 0 when the file could not be opened.
    """

    def __init__(self, message: str, frames_done: int = 0):
        super().__init__(message)
        self.frames_done = frames_done


def _av():
    from .utils.imports import require

    return require("av", "video decoding and encoding")


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------

@dataclass
class VideoInfo:
    """What the output needs to keep from the input.

    Attributes
    ----------
    width, height : int
        Frame size in pixels.
    fps : fractions.Fraction
        Frame rate (the stream's average rate, else its guessed or base rate).
    time_base : fractions.Fraction
        Unit of the frames' ``pts``.
    frames : int or None
        Frame count declared by the container (``None`` if unknown).
    duration : float or None
        Stream duration in seconds, if declared.
    has_audio : bool
        The container has an audio stream (copied to the output by :class:`VideoWriter`).
    codec : str
        Video codec name of the input.
    path : str or None
        Source file (``None`` for an iterable of images).
    """

    width: int
    height: int
    fps: Fraction
    time_base: Fraction
    frames: Optional[int] = None
    duration: Optional[float] = None
    has_audio: bool = False
    codec: str = ""
    path: Optional[str] = None

    @property
    def expected_frames(self) -> Optional[int]:
        """Frames the container promises: declared, else duration x rate (``None`` if neither is known)."""
        if self.frames:
            return self.frames
        if self.duration:
            return int(round(self.duration * float(self.fps)))
        return None


def _open_input(path):
    av = _av()
    name = os.fspath(path)
    if not os.path.exists(name):
        raise VideoError(f"{name}: file not found")
    if os.path.isdir(name):
        raise VideoError(f"{name}: is a directory, not a video")
    try:
        container = av.open(name, "r")
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: cannot open video ({exc.strerror or exc}); the file is not a video, or it is "
                         "truncated or corrupt") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name}: no video stream")
    return container


def _info_of(container, path) -> VideoInfo:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(DEFAULT_FPS)
    time_base = stream.time_base or Fraction(1, int(round(float(fps))) or DEFAULT_FPS)
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1e6
    return VideoInfo(width=ctx.width, height=ctx.height, fps=Fraction(fps), time_base=Fraction(time_base),
                     frames=int(stream.frames) or None, duration=duration, has_audio=bool(container.streams.audio),
                     codec=ctx.name, path=os.fspath(path))


def probe_video(path) -> VideoInfo:
    """Size, frame rate, time base, frame count, duration and audio of a video file.

    Raises
    ------
    VideoError
        If the file is missing, is not a video, or is truncated before its index (e.g. an MP4 without ``moov``).
    BackendUnavailableError
        If PyAV is not installed (the message gives ``pip install 'diffcut-engine[video]'``).
    """
    container = _open_input(path)
    try:
        return _info_of(container, path)
    finally:
        container.close()


@dataclass
class _Frame:
    """One frame on its way through the stages."""

    index: int
    pts: Optional[int]
    image: np.ndarray                       # (H, W, 3) uint8 RGB
    segment: bool
    net_input: object = None                 # (3, S, S) float tensor in [-1, 1], until encoded
    box: Tuple[int, int, int, int] = (0, 0, 0, 0)
    timings: dict = field(default_factory=dict)
    features: object = None                  # (h, w, C) tensor, after encoding
    tree: object = None                      # NCut tree built on the device for the whole batch
    graph_share: float = 0.0


class _Failure:
    """Carries an exception downstream, after every frame that came before it."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


# ------------------------------------------------------------------------------------------------------------
# Temporal consistency
# ------------------------------------------------------------------------------------------------------------

class SegmentTracker:
    """Keeps segment ids stable across frames by matching segment concept vectors.

    Each frame's segments are described by their concept vectors (the mean feature of the segment's grid cells,
    as in DiffCut's concept assignment) and grid masks. They are matched one to one to the tracks seen in the last
    ``memory`` frames (Hungarian matching, ``scipy.optimize.linear_sum_assignment``) on cosine similarity plus
    ``spatial_weight`` times the IoU with the track's last mask; a pair is accepted only if its cosine similarity
    is at least ``threshold``. An unmatched segment starts a new track (a new id); a track not seen for more than
    ``memory`` frames is forgotten, so memory stays bounded.

    Parameters
    ----------
    threshold : float
        Minimum cosine similarity of a segment and a track to share an id, in [-1, 1].
    memory : int
        Frames a lost track is remembered (and can be matched again).
    momentum : float
        A matched track's vector becomes ``momentum * old + (1 - momentum) * new`` (re-normalised).
    spatial_weight : float
        Weight of the grid-mask IoU in the matching score (breaks ties between look-alike segments).
    """

    def __init__(self, *, threshold: float = 0.8, memory: int = 30, momentum: float = 0.5,
                 spatial_weight: float = 0.1):
        if not -1.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be in [-1, 1], got {threshold!r}")
        if not (isinstance(memory, int) and memory >= 0):
            raise InputError(f"memory must be a non-negative integer, got {memory!r}")
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"momentum must be in [0, 1), got {momentum!r}")
        self.threshold, self.memory, self.momentum = float(threshold), memory, float(momentum)
        self.spatial_weight = float(spatial_weight)
        self.frame = -1
        self.next_id = 0
        self._ids = np.zeros(0, dtype=np.int64)        # (T,) track ids
        self._vectors = np.zeros((0, 0), np.float32)   # (T, C) unit concept vectors
        self._masks = np.zeros((0, 0), np.float32)     # (T, N) last grid masks
        self._seen = np.zeros(0, dtype=np.int64)       # (T,) last frame each track was matched

    @property
    def num_tracks(self) -> int:
        """Tracks currently remembered."""
        return int(self._ids.size)

    def update(self, concepts: np.ndarray, grid_labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Give this frame's segments their ids.

        Parameters
        ----------
        concepts : numpy.ndarray
            (K, C) float concept vector of each segment (any scale; rows are normalised here). A segment without a
            grid cell may have a zero row; it gets a fresh id and starts no track.
        grid_labels : numpy.ndarray
            (h, w) int segment ids 0..K-1 on the feature grid.

        Returns
        -------
        ids : numpy.ndarray
            (K,) int64 track id of each segment: ``ids[grid_labels]`` relabels a map.
        carried : numpy.ndarray
            (K,) bool, True where the id comes from an earlier frame.
        """
        from scipy.optimize import linear_sum_assignment

        self.frame += 1
        concepts = np.asarray(concepts, dtype=np.float32)
        k = concepts.shape[0]
        norms = np.linalg.norm(concepts, axis=1)
        present = norms > 0
        vectors = concepts / np.maximum(norms, 1e-12)[:, None]
        grid = np.asarray(grid_labels).reshape(-1)
        masks = (grid[None, :] == np.arange(k)[:, None]).astype(np.float32)        # (K, N)
        if self._vectors.shape[1:] != vectors.shape[1:] or self._masks.shape[1:] != masks.shape[1:]:
            self._reset(vectors.shape[1], masks.shape[1])
        ids = np.full(k, -1, dtype=np.int64)
        carried = np.zeros(k, dtype=bool)
        if self._ids.size and k:
            cos = vectors @ self._vectors.T                                            # (K, T)
            inter = masks @ self._masks.T
            union = masks.sum(1)[:, None] + self._masks.sum(1)[None, :] - inter
            score = cos + self.spatial_weight * inter / np.maximum(union, 1.0)
            allowed = (cos >= self.threshold) & present[:, None]
            rows, cols = linear_sum_assignment(np.where(allowed, -score, 1e6))
            for r, c in zip(rows, cols):
                if allowed[r, c]:
                    ids[r], carried[r] = self._ids[c], True
                    v = self.momentum * self._vectors[c] + (1 - self.momentum) * vectors[r]
                    self._vectors[c] = v / max(float(np.linalg.norm(v)), 1e-12)
                    self._masks[c] = masks[r]
                    self._seen[c] = self.frame
        new = np.flatnonzero(ids < 0)
        ids[new] = np.arange(self.next_id, self.next_id + new.size)
        self.next_id += new.size
        starts = new[present[new]]
        if starts.size:
            self._ids = np.concatenate([self._ids, ids[starts]])
            self._vectors = np.concatenate([self._vectors, vectors[starts]])
            self._masks = np.concatenate([self._masks, masks[starts]])
            self._seen = np.concatenate([self._seen, np.full(starts.size, self.frame)])
        keep = self.frame - self._seen <= self.memory
        if not keep.all():
            self._ids, self._vectors = self._ids[keep], self._vectors[keep]
            self._masks, self._seen = self._masks[keep], self._seen[keep]
        return ids, carried

    def _reset(self, channels: int, cells: int):
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, channels), np.float32)
        self._masks = np.zeros((0, cells), np.float32)
        self._seen = np.zeros(0, dtype=np.int64)


@dataclass
class VideoStats:
    """Per-video report.

    Attributes
    ----------
    frames : int
        Frames read and passed on (written, for ``diffcut video``).
    segmented : int
        Frames that were segmented (``frames / every``, rounded up).
    seconds : float
        Wall time from the first frame requested to the last one delivered.
    fps : float
        ``frames / seconds``.
    label_stability : float or None
        Mean, over consecutive segmented frames, of the fraction of pixels whose segment id did not change (with
        the tracker's ids). 1.0 for a perfectly stable labelling of a static scene; motion lowers it by the area
        that moved. ``None`` with fewer than two segmented frames.
    raw_label_stability : float or None
        The same for the per-frame NCut ids before matching: the tracker's gain is the difference.
    id_persistence : float or None
        Mean, over segmented frames after the first, of the fraction of the frame covered by segments whose id
        was carried over from an earlier frame.
    num_ids : int
        Distinct ids given out over the video.
    mean_segments : float
        Mean segments per segmented frame.
    truncated : bool
        The stream ended before the frame count its container declares, or broke off with a decode error.
    """

    frames: int = 0
    segmented: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    label_stability: Optional[float] = None
    raw_label_stability: Optional[float] = None
    id_persistence: Optional[float] = None
    num_ids: int = 0
    mean_segments: float = 0.0
    truncated: bool = False

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class StabilityMeter:
    """Running label-stability figures of :class:`VideoStats` (constant memory: only the previous frame's maps).

    Maps are compared on a subsample with at most ``max_side`` pixels per side.
    """

    def __init__(self, max_side: int = 256):
        self.max_side = max_side
        self._prev = None
        self._sums = {"stable": 0.0, "raw": 0.0, "pairs": 0, "carried": 0.0, "later": 0, "segments": 0,
                      "frames": 0}

    def _sample(self, labels: np.ndarray) -> np.ndarray:
        step = max(1, int(np.ceil(max(labels.shape) / self.max_side)))
        return labels[::step, ::step]

    def update(self, raw: np.ndarray, tracked: np.ndarray, carried_fraction: Optional[float], num_segments: int):
        raw, tracked = self._sample(raw), self._sample(tracked)
        s = self._sums
        if self._prev is not None and self._prev[0].shape == raw.shape:
            s["raw"] += float(np.mean(self._prev[0] == raw))
            s["stable"] += float(np.mean(self._prev[1] == tracked))
            s["pairs"] += 1
        if carried_fraction is not None and s["frames"] > 0:
            s["carried"] += carried_fraction
            s["later"] += 1
        s["frames"] += 1
        s["segments"] += num_segments
        self._prev = (raw, tracked)

    def fill(self, stats: VideoStats) -> VideoStats:
        s = self._sums
        if s["pairs"]:
            stats.label_stability = s["stable"] / s["pairs"]
            stats.raw_label_stability = s["raw"] / s["pairs"]
        if s["later"]:
            stats.id_persistence = s["carried"] / s["later"]
        stats.mean_segments = s["segments"] / s["frames"] if s["frames"] else 0.0
        return stats


# ------------------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------------------

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
        for name, value, low in (("every", every, 1), ("graph_workers", graph_workers, 1)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if max_frames is not None and not (isinstance(max_frames, int) and max_frames >= 0):
            raise InputError(f"max_frames must be a non-negative integer, got {max_frames!r}")
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if getattr(engine.config, "method", "diffcut") != "diffcut":
            raise InputError(f"segment_video runs method='diffcut' only, got method={engine.config.method!r}")
        self.engine = engine
        self.every, self.max_frames, self.graph_workers = every, max_frames, graph_workers
        self.batch_size = batch_size or engine.config.batch_size
        self.tau = engine._resolve_tau(tau)
        self.tracker = SegmentTracker(threshold=match_threshold, memory=memory) if tracking else None
        self.progress = progress
        self.stats = VideoStats()
        self._container = None
        self._iterable = None
        self._used = False
        if isinstance(source, (str, os.PathLike)):
            self._container = _open_input(source)
            self.info = _info_of(self._container, source)
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
        av = _av()
        container, name = self._container, self.info.path
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if limit is not None and index >= limit:
                        return
                    yield index, frame.pts, frame
                    index += 1
        except av.FFmpegError as exc:
            self.stats.truncated = True
            raise VideoError(f"{name}: the video stream broke off after {index} frames ({exc.strerror or exc}); "
                             "the file is truncated or corrupt", index) from exc
        expected = self.info.expected_frames
        if limit is None or index < limit:
            if expected and index < expected - max(2, expected // 50):
                self.stats.truncated = True
                raise VideoError(f"{name}: the video ended after {index} of the {expected} frames its container "
                                 "declares; the file is truncated", index)

    # stage 1: decode and preprocess -----------------------------------------------------------------------------
    def _decode_stage(self, out: queue.Queue, stop: threading.Event):
        from . import images

        cfg = self.engine.config
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
                    pixels = images._from_array(rgb, f"frame {index}")
                    loaded = images.LoadedImage(pixels=pixels, name=f"frame {index}")
                    frame.net_input, _, frame.box = images.prepare(loaded, cfg.size, cfg.resize_mode)
                    frame.timings = {"load": t1 - t0, "preprocess": time.perf_counter() - t1}
                if not _put(out, frame, stop):
                    return
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which re-raises it)
            _put(out, _Failure(exc), stop)
        _put(out, _END, stop)

    # stage 2: batched encoder -------------------------------------------------------------------------------------
    def _encode_stage(self, inp: queue.Queue, out: queue.Queue, stop: threading.Event):
        import torch

        pending, count = [], 0

        def flush():
            todo = [f for f in pending if isinstance(f, _Frame) and f.segment]
            if todo:
                t0 = time.perf_counter()
                feats = self.engine._encode(torch.stack([f.net_input for f in todo]))
                share = (time.perf_counter() - t0) / len(todo)
                trees, graph_share = self.engine._device_trees(feats, self.tau)
                for k, f in enumerate(todo):
                    f.features, f.net_input = feats[k], None
                    f.timings["encode"] = share
                    f.tree, f.graph_share = (trees[k] if trees else None), graph_share
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

        from . import refine

        view = torch.from_numpy(frame.image).permute(2, 0, 1).float().div_(255.0)
        top, left, h, w = frame.box
        view = view[:, top:top + h, left:left + w]
        seg = self.engine._segment_features(frame.features, view, self.tau, None, frame.timings, tree=frame.tree,
                                            graph_seconds=frame.graph_share)
        seg.name, seg.image_size, seg.crop_box = f"frame {frame.index}", frame.image.shape[:2], frame.box
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
        from .utils.progress import progress_bar

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
                        seg.labels = ids[seg.labels].astype(np.int32)
                        seg.grid_labels = ids[seg.grid_labels].astype(np.int32)
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


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------

def _default_codec(av, path: str) -> str:
    ext = Path(path).suffix.lower()
    wanted = ("libvpx-vp9", "libvpx") if ext == ".webm" else ("libx264", "h264", "mpeg4")
    for name in wanted:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 (not built into this FFmpeg)
            continue
    return "mpeg4"


class VideoWriter:
    """Writes overlay frames to a video file on its own thread, keeping the input's rate and time base.

    Each written frame is the input frame with its segment colours blended in (:func:`viz.overlay`; colours
    follow the tracked ids, so a region keeps its colour). The stream gets the input's frame rate and time base
    and every frame its input ``pts``; the input's first audio stream is copied packet for packet, interleaved
    as the video advances (or transcoded to AAC if the output container cannot hold its codec). ``close`` (also
    on an exception, through ``with``) flushes the encoder and writes the container's index, so the file is
    valid whatever stopped the run.

    Parameters
    ----------
    path : str or path
        Output file; the container follows the extension (``.mp4``, ``.mkv``, ``.mov``, ``.webm``, ...).
    info : VideoInfo
        The input's description (size, rate, time base, audio).
    audio : bool
        Copy the input's audio (when it has one).
    codec : str, optional
        Video codec (default ``libx264`` when available, else ``mpeg4``; ``libvpx-vp9`` for ``.webm``).
    opacity : float
        Weight of the segment colours in the overlay (0: the input frames unchanged).
    edges : bool
        Draw segment boundaries in white.
    crf : int
        Quality of libx264/VP9 (lower is better).
    queue_size : int
        Frames waiting for the writer thread at most.
    """

    def __init__(self, path, info: VideoInfo, *, audio: bool = True, codec: Optional[str] = None,
                 opacity: float = 0.5, edges: bool = True, crf: int = 20, queue_size: int = 8):
        av = _av()
        self.path, self.info = os.fspath(path), info
        self.opacity, self.edges = float(opacity), edges
        self.frames_written = 0
        self._last_pts = None
        self._error: Optional[BaseException] = None
        self._closed = False
        options = {}
        if info.time_base.numerator == 1 and Path(self.path).suffix.lower() in (".mp4", ".mov", ".m4v"):
            options["video_track_timescale"] = str(info.time_base.denominator)  # else the muxer picks its own
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._out = av.open(self.path, "w", options=options)
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: cannot create the output video ({exc.strerror or exc})") from exc
        try:
            self._setup(av, codec or _default_codec(av, self.path), audio, crf)
        except BaseException:
            self._out.close()
            raise
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="diffcut-write", daemon=True)
        self._thread.start()

    def _setup(self, av, codec: str, audio: bool, crf: int):
        info = self.info
        self._width, self._height = info.width + info.width % 2, info.height + info.height % 2  # yuv420p
        if (self._width, self._height) != (info.width, info.height):
            logger.warning("%s: odd frame size %dx%d padded to %dx%d for yuv420p", self.path, info.width,
                           info.height, self._width, self._height)
        self._video = self._out.add_stream(codec, rate=info.fps)
        self._video.width, self._video.height, self._video.pix_fmt = self._width, self._height, "yuv420p"
        self._video.time_base = info.time_base
        if codec in ("libx264", "libvpx-vp9"):
            self._video.options = {"crf": str(crf), **({"preset": "veryfast"} if codec == "libx264" else {})}
        self._audio_in = self._audio_out = self._audio_iter = None
        self._resampler = None
        if audio and info.has_audio and info.path:
            self._open_audio(av)

    def _open_audio(self, av):
        self._audio_in = av.open(self.info.path, "r")
        in_stream = self._audio_in.streams.audio[0]
        name = in_stream.codec_context.name
        try:
            supported = self._out.supported_codecs
        except AttributeError:  # older PyAV
            supported = {name}
        if name in supported:
            self._audio_out = self._out.add_stream_from_template(in_stream)
            self._transcode = False
        else:
            logger.warning("%s: the container cannot hold %s audio; transcoding it to AAC", self.path, name)
            self._audio_out = self._out.add_stream("aac", rate=in_stream.codec_context.sample_rate)
            self._resampler = av.AudioResampler(format="fltp", layout=in_stream.codec_context.layout,
                                                rate=in_stream.codec_context.sample_rate)
            self._transcode = True
        self._audio_iter = self._audio_in.demux(in_stream)
        self._audio_next = None

    # the writer thread ---------------------------------------------------------------------------------------
    def write(self, frame: VideoFrame):
        """Queue one frame (its overlay is drawn and encoded on the writer thread)."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise InputError(f"{self.path}: the writer is closed")
        while True:
            try:
                self._queue.put(frame, timeout=0.5)
                if frame.pts is not None:
                    self._last_pts = frame.pts
                return
            except queue.Full:
                if self._error is not None:
                    raise self._error

    def _loop(self):
        av = _av()
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._error is not None:
                continue  # drain
            try:
                rgb = overlay_frame(frame, opacity=self.opacity, edges=self.edges)
                if rgb.shape[:2] != (self._height, self._width):
                    rgb = np.pad(rgb, ((0, self._height - rgb.shape[0]), (0, self._width - rgb.shape[1]), (0, 0)),
                                 mode="edge")
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                vf.pts, vf.time_base = frame.pts, self.info.time_base
                for packet in self._video.encode(vf):
                    self._out.mux(packet)
                self.frames_written += 1
                if self._audio_iter is not None and frame.pts is not None:
                    self._copy_audio(float((frame.pts + 1) * self.info.time_base) + 0.5 / float(self.info.fps))
            except BaseException as exc:  # noqa: BLE001 (raised in the caller's thread by write/close)
                self._error = exc

    def _copy_audio(self, until: Optional[float]):
        """Mux the input's audio packets that start before ``until`` seconds (all if ``None``)."""
        while True:
            packet = self._audio_next
            if packet is None:
                try:
                    packet = next(self._audio_iter)
                except (StopIteration, Exception):  # noqa: BLE001 (end of stream, or truncated audio)
                    self._audio_iter = None
                    self._flush_audio_encoder()
                    return
                if packet.dts is None:  # the demuxer's empty flush packet
                    continue
            start = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
            if until is not None and start >= until:
                self._audio_next = packet
                return
            self._audio_next = None
            if self._transcode:
                for af in packet.decode():
                    for rf in self._resampler.resample(af):
                        for out_packet in self._audio_out.encode(rf):
                            self._out.mux(out_packet)
            else:
                packet.stream = self._audio_out
                self._out.mux(packet)

    def _flush_audio_encoder(self):
        if self._transcode:
            for out_packet in self._audio_out.encode(None):
                self._out.mux(out_packet)

    def close(self, *, complete: bool = True):
        """Finish the file: flush the video encoder, the rest of the audio, and write the container's index.

        Parameters
        ----------
        complete : bool
            The whole input was written: copy all remaining audio. ``False`` (a run cut short) copies audio only
            up to the end of the last written frame.

        Raises
        ------
        Exception
            The first error the writer thread met (after the file has been closed).
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        try:
            for packet in self._video.encode(None):
                self._out.mux(packet)
            if self._audio_iter is not None:
                self._copy_audio(None if complete else self._video_end())
                self._flush_audio_encoder()
        except BaseException as exc:  # noqa: BLE001
            self._error = self._error or exc
        finally:
            self._out.close()
            if self._audio_in is not None:
                self._audio_in.close()
        if self._error is not None:
            raise self._error

    def _video_end(self) -> float:
        """End of the last written frame, in seconds."""
        if self._last_pts is None:
            return 0.0
        return float(self._last_pts * self.info.time_base) + 1.0 / float(self.info.fps)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(complete=exc_type is None)


def overlay_frame(frame: VideoFrame, *, opacity: float = 0.5, edges: bool = True) -> np.ndarray:
    """The frame's image with its (tracked) segment colours blended in; the image itself if it has no labels.

    Labels of another size than the region they cover (``output_size``) are resized by nearest neighbour; in
    ``center_crop`` mode only the crop is coloured.
    """
    from . import viz

    image, seg = frame.image, frame.segmentation
    if seg is None or opacity <= 0:
        return image
    top, left, h, w = seg.crop_box if seg.crop_box[2] else (0, 0) + image.shape[:2]
    labels = seg.labels
    if labels.shape != (h, w):
        rows = (np.arange(h) * labels.shape[0] // h).clip(0, labels.shape[0] - 1)
        cols = (np.arange(w) * labels.shape[1] // w).clip(0, labels.shape[1] - 1)
        labels = labels[rows[:, None], cols[None, :]]
    out = image.copy()
    out[top:top + h, left:left + w] = viz.overlay(image[top:top + h, left:left + w], labels, opacity=opacity,
                                                  edges=edges)
    return out


class LabelWriter:
    """Streams the label maps of segmented frames to a folder of PNGs or one ``.npz`` file.

    A folder gets ``frame_000123.png`` per segmented frame (16-bit grey PNG of the tracked ids). An ``.npz`` path
    gets one ``frame_000123`` array (int32, (H, W)) per segmented frame, written one entry at a time (memory does
    not grow with the video), plus ``frame_index``, ``pts`` (int64) and ``time_base`` ((2,) int64) on ``close``;
    ``numpy.load`` reads it. Closing (also through ``with``) leaves a valid file after an error.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.npz = self.path.suffix.lower() == ".npz"
        self._index, self._pts = [], []
        self._time_base = None
        if self.npz:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        else:
            self.path.mkdir(parents=True, exist_ok=True)

    def write(self, frame: VideoFrame):
        """Write the labels of a segmented frame (frames holding earlier labels are skipped)."""
        if not frame.segmented or frame.segmentation is None:
            return
        labels = frame.segmentation.labels
        name = f"frame_{frame.index:06d}"
        if self.npz:
            self._write_array(name, labels.astype(np.int32))
        else:
            from PIL import Image

            if labels.max() > 65535:
                raise InputError(f"{labels.max() + 1} segment ids do not fit a 16-bit PNG; write an .npz instead")
            Image.fromarray(labels.astype(np.uint16)).save(self.path / f"{name}.png")
        self._index.append(frame.index)
        self._pts.append(-1 if frame.pts is None else frame.pts)
        self._time_base = frame.time_base

    def _write_array(self, name: str, array: np.ndarray):
        with self._zip.open(name + ".npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)

    def close(self):
        if self.npz and self._zip is not None:
            try:
                self._write_array("frame_index", np.asarray(self._index, dtype=np.int64))
                self._write_array("pts", np.asarray(self._pts, dtype=np.int64))
                tb = self._time_base or Fraction(1, DEFAULT_FPS)
                self._write_array("time_base", np.asarray([tb.numerator, tb.denominator], dtype=np.int64))
            finally:
                self._zip.close()
                self._zip = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_video(video: VideoSegmentation, output, *, labels_out=None, audio: bool = True,
                codec: Optional[str] = None, opacity: float = 0.5) -> VideoStats:
    """Run a :class:`VideoSegmentation` to the end, writing the overlay video (and the label maps).

    The output is closed properly whatever happens: if the input breaks off, the frames before the break are in
    a valid file, and the error (a :class:`VideoError`) is raised afterwards.

    Returns
    -------
    VideoStats
    """
    info = video.info
    if video._iterable is not None:
        return _write_from_iterable(video, output, labels_out=labels_out, codec=codec, opacity=opacity)
    writer = VideoWriter(output, info, audio=audio, codec=codec, opacity=opacity)
    labels, complete = None, False
    try:
        labels = LabelWriter(labels_out) if labels_out is not None else None
        for frame in video:
            writer.write(frame)
            if labels is not None:
                labels.write(frame)
        complete = video.max_frames is None or video.stats.frames < video.max_frames
    finally:
        try:
            writer.close(complete=complete)
        finally:
            if labels is not None:
                labels.close()
    return video.stats


def _write_from_iterable(video: VideoSegmentation, output, *, labels_out, codec, opacity) -> VideoStats:
    """An iterable's frame size is known only from its first frame: open the writer then."""
    labels = writer = None
    try:
        labels = LabelWriter(labels_out) if labels_out is not None else None
        for frame in video:
            if not frame.ok:
                logger.warning("frame %d: %s", frame.index, frame.error)
                continue
            if writer is None:
                writer = VideoWriter(output, video.info, audio=False, codec=codec, opacity=opacity)
            writer.write(frame)
            if labels is not None:
                labels.write(frame)
    finally:
        try:
            if writer is not None:
                writer.close()
        finally:
            if labels is not None:
                labels.close()
    return video.stats


def read_labels_npz(path) -> Dict[int, np.ndarray]:
    """The label maps of an ``.npz`` written by :class:`LabelWriter`, by frame index (for tests and scripts)."""
    with np.load(path) as data:
        return {int(name[6:]): data[name] for name in data.files if name.startswith("frame_") and
                name != "frame_index"}
