"""Decoding one frame range of a video for a worker: seek to the range's first frame, decode to its end.

Frames are numbered as ``diffcut video`` numbers them: by decoding order from the start of the first video
stream (presentation order). A range whose first frame's timestamp is known (from the packet listing in
:func:`~.items.video_frame_ranges`) is decoded after a seek to the keyframe before it; frames before that
timestamp are dropped. If the decoder does not land exactly on that timestamp (a container that seeks
imprecisely), the range is decoded again from the beginning, counting frames, so the numbering stays exact.

The last range of a video (to its end) is checked as ``diffcut video`` checks a whole video: a stream that ends
before the frame count (or the duration) its container declares is a truncated file, and the range fails with
the same :class:`~diffcut_engine.video.io.VideoError`.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np

from ..video.io import VideoError, info_of, open_input, require_av
from ..video.io import check_complete as video_check_complete

__all__ = ["decode_range", "check_complete"]


class _Seen:
    """What the decoding of a range saw: frames counted from the start of the stream, first and last pts."""

    def __init__(self):
        self.count = 0
        self.first_pts: Optional[int] = None
        self.last_pts: Optional[int] = None

    def frame(self, index: int, pts, *, first: bool = True):
        self.count = max(self.count, index + 1)
        if pts is not None:
            if first:
                self.first_pts = pts if self.first_pts is None else min(self.first_pts, pts)
            self.last_pts = pts if self.last_pts is None else max(self.last_pts, pts)


def decode_range(path, start: int, stop: int, start_pts: int = -1) -> Iterator[Tuple[int, np.ndarray]]:
    """``(frame index, (H, W, 3) uint8 RGB)`` of frames ``start <= index < stop`` (``stop`` -1: to the end).

    Raises
    ------
    VideoError
        If the file cannot be opened, or its stream breaks off inside the range, or (last range, ``stop`` -1)
        the stream ends before what its container declares (:func:`check_complete`), after the range's frames.
    """
    seen = _Seen()
    done = False
    if start > 0 and start_pts >= 0:
        frames = _after_seek(path, start, stop, start_pts, seen)
        first = next(frames, None)
        if first is not None:
            yield first
            yield from frames
            done = True
        else:
            seen = _Seen()
    if not done:
        yield from _from_beginning(path, start, stop, seen)
    if stop < 0 and seen.count:
        first_pts = seen.first_pts
        if first_pts is None and seen.last_pts is not None:  # after a seek: the first frame was not decoded
            first_pts = _first_pts(path)
        check_complete(path, seen.count, first_pts, seen.last_pts)


def check_complete(path, frames: int, first_pts, last_pts) -> None:
    """:func:`diffcut_engine.video.io.check_complete` for the video ``path`` (its container read again): a
    :class:`VideoError` if it ended after ``frames`` frames, before what the container declares."""
    container = open_input(path)
    try:
        info = info_of(container, path)
    finally:
        container.close()
    video_check_complete(info, frames, first_pts, last_pts)


def _decoded(container, name) -> Iterator:
    av = require_av()
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    count = 0
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                count += 1
                yield frame
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: the video stream broke off ({exc.strerror or exc}); the file is truncated or "
                         "corrupt", count) from exc


def _first_pts(path) -> Optional[int]:
    """The timestamp of the video's first frame (in presentation order), decoding only that."""
    container = open_input(path)
    try:
        for frame in _decoded(container, str(path)):
            return frame.pts
    finally:
        container.close()
    return None


def _from_beginning(path, start: int, stop: int, seen: _Seen):
    container = open_input(path)
    try:
        for index, frame in enumerate(_decoded(container, str(path))):
            if stop >= 0 and index >= stop:
                return
            seen.frame(index, frame.pts)
            if index >= start:
                yield index, frame.to_ndarray(format="rgb24")
    finally:
        container.close()


def _after_seek(path, start: int, stop: int, start_pts: int, seen: _Seen):
    """The frames of the range after a seek; yields nothing if the seek did not land on ``start_pts``."""
    container = open_input(path)
    try:
        stream = container.streams.video[0]
        container.seek(int(start_pts), stream=stream, backward=True, any_frame=False)
        index = None
        for frame in _decoded(container, str(path)):
            if frame.pts is None:
                return
            if index is None:
                if frame.pts < start_pts:
                    continue
                if frame.pts != start_pts:
                    return  # landed past the range's first frame: the caller decodes from the beginning
                index = start
            if stop >= 0 and index >= stop:
                return
            seen.frame(index, frame.pts, first=False)
            yield index, frame.to_ndarray(format="rgb24")
            index += 1
    finally:
        container.close()
