"""Decoding one frame range of a video for a worker: seek to the range's first frame, decode to its end.

Frames are numbered as ``diffcut video`` numbers them: by decoding order from the start of the first video
stream (presentation order). A range whose first frame's timestamp is known (from the packet listing in
:func:`~.items.video_frame_ranges`) is decoded after a seek to the keyframe before it; frames before that
timestamp are dropped. If the decoder does not land exactly on that timestamp (a container that seeks
imprecisely), the range is decoded again from the beginning, counting frames, so the numbering stays exact.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from ..video.io import VideoError, open_input, require_av

__all__ = ["decode_range"]


def decode_range(path, start: int, stop: int, start_pts: int = -1) -> Iterator[Tuple[int, np.ndarray]]:
    """``(frame index, (H, W, 3) uint8 RGB)`` of frames ``start <= index < stop`` (``stop`` -1: to the end).

    Raises
    ------
    VideoError
        If the file cannot be opened, or its stream breaks off inside the range.
    """
    if start > 0 and start_pts >= 0:
        frames = _after_seek(path, start, stop, start_pts)
        first = next(frames, None)
        if first is not None:
            yield first
            yield from frames
            return
    yield from _from_beginning(path, start, stop)


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


def _from_beginning(path, start: int, stop: int):
    container = open_input(path)
    try:
        for index, frame in enumerate(_decoded(container, str(path))):
            if stop >= 0 and index >= stop:
                return
            if index >= start:
                yield index, frame.to_ndarray(format="rgb24")
    finally:
        container.close()


def _after_seek(path, start: int, stop: int, start_pts: int):
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
            yield index, frame.to_ndarray(format="rgb24")
            index += 1
    finally:
        container.close()
