"""Temporal consistency: segment ids matched across frames (:class:`SegmentTracker`), and the label-stability
figures of a run (:class:`StabilityMeter`, :class:`VideoStats`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError

__all__ = ["SegmentTracker", "VideoStats", "StabilityMeter"]


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
