"""Video input: open and probe a file with PyAV (the optional ``[video]`` extra)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from ..errors import InputError

#: Default frame rate for an iterable of images (no container to take it from).
DEFAULT_FPS = 25

__all__ = ["DEFAULT_FPS", "VideoError", "VideoInfo", "require_av", "open_input", "info_of", "probe_video",
           "check_output", "check_complete"]


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


def require_av():
    """The ``av`` module (PyAV), or a :class:`BackendUnavailableError` naming the ``[video]`` extra."""
    from ..utils.imports import require

    return require("av", "video decoding and encoding")


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


def open_input(path):
    """The PyAV input container of a video file, or a :class:`VideoError` saying why it cannot be opened."""
    av = require_av()
    name = os.fspath(path)
    if not os.path.exists(name):
        raise VideoError(f"{name}: file not found")
    if os.path.isdir(name):
        raise VideoError(f"{name}: is a directory, not a video")
    if not os.path.isfile(name):  # a FIFO, socket or device: FFmpeg would block on it
        raise VideoError(f"{name}: not a regular file (a FIFO, socket or device); give a video file")
    try:
        container = av.open(name, "r")
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: cannot open video ({exc.strerror or exc}); the file is not a video, or it is "
                         "truncated or corrupt") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name}: no video stream")
    if container.format.name == "webp_pipe" and _animated(name):
        container.close()  # FFmpeg decodes still WebP only: every frame would fail, after the model had loaded
        raise VideoError(f"{name}: an animated WebP, which FFmpeg cannot decode; convert it to a video or an "
                         "animated GIF first (e.g. with Pillow: Image.save(..., save_all=True))")
    return container


def _animated(path: str) -> bool:
    """Whether Pillow sees more than one frame in the image file ``path``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001 (not an image Pillow reads: FFmpeg's verdict stands)
        return False


def info_of(container, path) -> VideoInfo:
    """The :class:`VideoInfo` of an open container's first video stream."""
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



def check_complete(info: VideoInfo, frames: int, first_pts, last_pts) -> None:
    """Raise :class:`VideoError` if a stream that ended after ``frames`` decoded frames (the first and last at
    ``first_pts`` / ``last_pts``) stopped before what the container (``info``) declares: the frame count when it is
    declared, else the duration (compared with the last frame's timestamp, so variable frame rates pass). What
    ``diffcut video`` and the frame ranges of ``diffcut batch`` check at the end of a video."""
    name, declared = info.path, info.frames
    if declared and frames < declared - max(2, declared // 50):
        raise VideoError(f"{name}: the video ended after {frames} of the {declared} frames its container "
                         "declares; the file is truncated", frames)
    if not declared and info.duration and last_pts is not None and first_pts is not None:
        step = 1.0 / float(info.fps)
        end = float((last_pts - first_pts) * info.time_base) + step
        if end < info.duration - max(2 * step, info.duration / 50):
            raise VideoError(f"{name}: the video ended at {end:.2f} s of the {info.duration:.2f} s its "
                             f"container declares (after {frames} frames); the file is truncated", frames)

def probe_video(path) -> VideoInfo:
    """Size, frame rate, time base, frame count, duration and audio of a video file.

    Raises
    ------
    VideoError
        If the file is missing, is not a video, or is truncated before its index (e.g. an MP4 without ``moov``).
    BackendUnavailableError
        If PyAV is not installed (the message gives ``pip install 'diffcut-engine[video]'``).
    """
    container = open_input(path)
    try:
        return info_of(container, path)
    finally:
        container.close()


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_output(output, source=None, *, labels_out=None, codec: Optional[str] = None,
                 opacity: Optional[float] = None) -> None:
    """Check an output video path (and the writer's options) before anything is decoded, encoded or loaded.

    Refuses (:class:`VideoError` or :class:`InputError`, one line) an output that is the input file itself (also
    through a link: the writer would truncate the file the decoder reads), a folder, a path under an existing file
    or an unwritable folder, or a name whose extension FFmpeg knows no container for; label output that is the
    input or the output video, or that cannot be written (``.npz``: a file, else a folder); a ``codec`` that is
    not a video encoder of this FFmpeg; an ``opacity`` outside [0, 1]. Nothing is created.
    """
    from ..outputs import check_output_path

    if opacity is not None and not 0.0 <= float(opacity) <= 1.0:
        raise InputError(f"opacity must lie in [0, 1], got {opacity!r}")
    out = os.fspath(output)
    if source is not None and isinstance(source, (str, os.PathLike)):
        src = os.fspath(source)
        if _same_file(src, out):
            raise VideoError(f"{out}: is the input video itself; refusing to overwrite the input, give another "
                             "output name")
        if labels_out is not None and _same_file(src, labels_out):
            raise VideoError(f"{os.fspath(labels_out)}: is the input video itself; refusing to overwrite the input")
    if labels_out is not None and os.path.abspath(os.fspath(labels_out)) == os.path.abspath(out):
        raise VideoError(f"{out}: the labels and the overlay video cannot be written to the same file")
    if os.path.isdir(out):
        raise VideoError(f"{out}: is a folder; give a video file name such as out.mp4")
    if os.path.exists(out) and not os.path.isfile(out):
        raise VideoError(f"{out}: not a regular file (a FIFO, socket or device); give a video file name")
    check_output_path(out, "output video")
    if labels_out is not None:
        check_output_path(labels_out, "label output", folder=os.path.splitext(os.fspath(labels_out))[1].lower()
                          != ".npz")
    av = require_av()
    if codec is not None:
        try:
            kind = av.codec.Codec(codec, "w").type
        except Exception as exc:  # noqa: BLE001 (UnknownCodecError, or a decoder-only name)
            raise VideoError(f"unknown video codec {codec!r}: not an encoder of this FFmpeg build; leave the codec "
                             "out for the container's default") from exc
        if kind != "video":
            raise VideoError(f"codec {codec!r} encodes {kind}, not video")
    try:
        av.open(out, "w").close()  # guesses the container from the extension; creates no file
    except ValueError as exc:
        ext = os.path.splitext(out)[1]
        raise VideoError(f"{out}: unknown video container {repr(ext) if ext else '(no extension)'}; use .mp4, "
                         ".mkv, .mov or .webm") from exc
    except av.FFmpegError as exc:
        raise VideoError(f"{out}: cannot create the output video ({exc.strerror or exc})") from exc
