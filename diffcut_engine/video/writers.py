"""Video output: the overlay video (:class:`VideoWriter`, its own thread, audio copied) and the label maps
(:class:`LabelWriter`, PNGs or one ``.npz``)."""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..errors import InputError
from .io import DEFAULT_FPS, VideoError, VideoInfo, check_output, require_av
from .stream import VideoFrame, VideoSegmentation
from .tracking import VideoStats

logger = logging.getLogger("diffcut_engine")

__all__ = ["VideoWriter", "LabelWriter", "overlay_frame", "write_video", "read_labels_npz"]


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


#: Encoders whose clock is at most 16 bits wide (MPEG-4 part 2 ``time_increment_resolution`` and kin).
SHORT_CLOCK_CODECS = ("mpeg4", "msmpeg4", "msmpeg4v2", "msmpeg4v3", "h263", "h263p", "flv")


def encoder_time_base(codec: str, time_base: Fraction) -> Fraction:
    """The encoder's clock for frames timed in ``time_base``: ``time_base`` itself, so that every pts is kept
    exactly (variable frame rates included), except for encoders with a 16-bit clock, which get the finest
    1/d (d a divisor of the denominator, at most 65535; else 1/60000): timestamps move by less than a tick."""
    time_base = Fraction(time_base)
    if codec not in SHORT_CLOCK_CODECS or time_base.denominator <= 65535:
        return time_base
    if time_base.numerator == 1:
        den = time_base.denominator
        best = next((den // k for k in range(-(-den // 65535), min(den, 1 << 16) + 1) if den % k == 0), 1)
        if best >= 1000:
            return Fraction(1, best)
    return Fraction(1, 60000)


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
        av = require_av()
        check_output(path, info.path, codec=codec, opacity=opacity)  # never the input, a known container
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
        # The encoder counts in the input's time base too, so every frame keeps its own pts (variable frame
        # rates included); with a coarser 1/fps encoder clock, pts would be rounded, duplicated and refused.
        clock = encoder_time_base(codec, info.time_base)
        if clock != info.time_base:
            logger.warning("%s: the %s encoder cannot count in %s s; timestamps are rounded to %s s", self.path,
                           codec, info.time_base, clock)
        self._video.codec_context.time_base = clock
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
            raise self._as_video_error(self._error)
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
                    raise self._as_video_error(self._error)

    def _loop(self):
        av = require_av()
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
            try:
                self._out.close()
            except BaseException as exc:  # noqa: BLE001 (the index could not be written: disk full)
                self._error = self._error or exc
            if self._audio_in is not None:
                self._audio_in.close()
        if self._error is not None:
            raise self._as_video_error(self._error)

    def _as_video_error(self, exc: BaseException) -> BaseException:
        """A failed write (disk full, folder gone: an OSError or FFmpeg error) as a one-line VideoError."""
        av = require_av()
        if isinstance(exc, InputError) or not isinstance(exc, (OSError, av.FFmpegError)):
            return exc
        reason = "the disk is full (no space left on device)" if getattr(exc, "errno", None) == errno.ENOSPC \
            else (getattr(exc, "strerror", None) or str(exc))
        err = VideoError(f"{self.path}: writing the output video failed: {reason}", self.frames_written)
        err.__cause__ = exc
        return err

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
    from .. import viz

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
        self._zip = None
        try:
            if self.npz:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VideoError(f"{self.path}: cannot create the label output ({exc.strerror or exc})") from None

    def write(self, frame: VideoFrame):
        """Write the labels of a segmented frame (frames holding earlier labels are skipped)."""
        if not frame.segmented or frame.segmentation is None:
            return
        labels = frame.segmentation.labels
        name = f"frame_{frame.index:06d}"
        try:
            if self.npz:
                self._write_array(name, labels.astype(np.int32))
            else:
                from PIL import Image

                if labels.max() > 65535:
                    raise InputError(f"{labels.max() + 1} segment ids do not fit a 16-bit PNG; write an .npz "
                                     "instead")
                Image.fromarray(labels.astype(np.uint16)).save(self.path / f"{name}.png")
        except OSError as exc:  # (frames_done: the frames whose labels were written)
            where = self.path if self.npz else self.path / f"{name}.png"
            raise VideoError(f"{where}: cannot write the labels of frame {frame.index} ({exc.strerror or exc})",
                             frames_done=len(self._index)) from None
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
                zf, self._zip = self._zip, None
                zf.close()
            except OSError as exc:
                raise VideoError(f"{self.path}: cannot finish the label file ({exc.strerror or exc})",
                                 frames_done=len(self._index)) from None
            finally:
                if self._zip is not None:
                    try:
                        self._zip.close()
                    except OSError:
                        pass  # (the error above is the one to report)
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
    check_output(output, info.path, labels_out=labels_out, codec=codec, opacity=opacity)  # not the input file
    if info.path is None:  # an iterable of images
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
    if writer is None:  # nothing to write: say so rather than return as if a video had been written
        raise VideoError(f"no frame of the input could be segmented, so {os.fspath(output)!r} was not written")
    return video.stats


def read_labels_npz(path) -> Dict[int, np.ndarray]:
    """The label maps of an ``.npz`` written by :class:`LabelWriter`, by frame index (for tests and scripts)."""
    with np.load(path) as data:
        return {int(name[6:]): data[name] for name in data.files if name.startswith("frame_") and
                name != "frame_index"}
