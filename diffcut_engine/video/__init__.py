"""Streaming video segmentation: decode, batch, segment, keep segment ids across frames, write.

- :mod:`~diffcut_engine.video.io`: opening and probing files (PyAV, the ``[video]`` extra);
- :mod:`~diffcut_engine.video.stream`: the threaded pipeline over the Engine's public stages
  (:func:`segment_video`, :class:`VideoSegmentation`, :class:`VideoFrame`);
- :mod:`~diffcut_engine.video.tracking`: segment ids kept across frames, label-stability figures;
- :mod:`~diffcut_engine.video.writers`: the overlay video (audio copied) and the label maps.

Output frames always come in input order, with their timestamps, frame rate and time base.
``pip install 'diffcut-engine[video]'`` for files.
"""

from .io import DEFAULT_FPS, VideoError, VideoInfo, check_output, probe_video
from .stream import VideoFrame, VideoSegmentation, segment_video
from .tracking import SegmentTracker, StabilityMeter, VideoStats
from .writers import LabelWriter, VideoWriter, overlay_frame, read_labels_npz, write_video

__all__ = [
    "DEFAULT_FPS",
    "VideoError",
    "check_output",
    "VideoInfo",
    "VideoFrame",
    "VideoStats",
    "VideoSegmentation",
    "SegmentTracker",
    "StabilityMeter",
    "VideoWriter",
    "LabelWriter",
    "overlay_frame",
    "probe_video",
    "read_labels_npz",
    "segment_video",
    "write_video",
]
