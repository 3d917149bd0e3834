"""What a batch run is made of: one :class:`WorkItem` per image file or per range of a video's frames.

:func:`list_items` expands files, folders and glob patterns (images as ``diffcut segment`` lists them, plus video
files by extension) into items with stable ids and output names, so that a second run over the same inputs finds
the same items and can skip those already done. A video becomes ``ceil(frames / frames_per_item)`` items; its
frames are counted (and their timestamps read) from the container's packets, without decoding, so that a worker
can seek straight to the first frame of its range.
"""

from __future__ import annotations

import glob
import hashlib
import numbers
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import InputError
from ..images import IMAGE_EXTENSIONS
from ..outputs import is_written_output

__all__ = ["VIDEO_EXTENSIONS", "WorkItem", "list_items", "expand_inputs", "is_output_file", "assign_stems",
           "video_frame_ranges", "frame_stem"]

#: Files with these extensions are split into frame ranges; everything else is read as an image.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")


@dataclass(frozen=True)
class WorkItem:
    """One unit of work: an image, or frames ``[frame_start, frame_stop)`` of a video.

    Attributes
    ----------
    item_id : str
        Stable key of the item in the manifest: the absolute path, plus ``#frames=START-STOP`` for a video range.
    input : str
        The absolute path of the file (workers may run in another working directory, on another node).
    kind : {"image", "video"}
    stem : str
        Output name prefix, unique in the run and among the inputs the output folder's manifest already records:
        ``<stem>_labels.png`` for an image, ``<stem>_frame_NNNNNN_labels.png`` per frame of a video.
    frame_start, frame_stop : int
        Frame range of a video item (``frame_stop`` exclusive, -1: to the end); -1, -1 for an image.
    start_pts : int
        Presentation timestamp of the range's first frame, where the worker seeks to; -1 to decode from the
        beginning (first range, or a container whose packets carry no timestamps).
    """

    item_id: str
    input: str
    kind: str
    stem: str
    frame_start: int = -1
    frame_stop: int = -1
    start_pts: int = -1

    def as_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row) -> "WorkItem":
        return cls(**{k: (int(row[k]) if k in ("frame_start", "frame_stop", "start_pts") else str(row[k]))
                      for k in ("item_id", "input", "kind", "stem", "frame_start", "frame_stop", "start_pts")})


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_output_file(path, outdir, names: Sequence[str] = ()) -> bool:
    """Whether ``path`` is a file that a run writes into the output folder ``outdir``: it lies directly in
    ``outdir`` (also through a link) and its name ends with one of the outputs' suffixes
    (:data:`~diffcut_engine.outputs.OUTPUT_SUFFIXES`: ``_labels.png``, ``_overlay.png``, ...) or is one of
    ``names`` (the run's own files, such as its manifest). Listing a folder or a pattern skips such files, so that
    an output folder that is also an input folder does not feed a run's outputs back in as inputs."""
    if outdir is None:
        return False
    p = Path(path)
    if p.name in names:
        return os.path.realpath(p.parent) == os.path.realpath(outdir)
    return is_written_output(p, outdir)


def expand_inputs(inputs: Sequence, *, outdir=None, output_names: Sequence[str] = ()) -> List[Path]:
    """Files, folders (their images and videos, sorted, not recursive) and glob patterns, in the order given.

    A plain path that does not exist is kept (it becomes a failed item that says so); a folder's other files and a
    pattern that matches nothing add nothing. A path listed twice is kept once. With ``outdir``, the files a run
    writes there (:func:`is_output_file`) are not taken from a folder or a pattern.
    """
    out, seen = [], set()

    def add(p: Path):
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    wanted = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for q in sorted(p.iterdir()):
                if q.is_file() and q.suffix.lower() in wanted and not is_output_file(q, outdir, output_names):
                    add(q)
        elif any(ch in str(item) for ch in "*?[") and not p.exists():
            for m in sorted(glob.glob(str(item), recursive=True)):
                if Path(m).is_file() and not is_output_file(m, outdir, output_names):
                    add(Path(m))
        else:
            add(p)
    return out


def _hashed_stem(path, extra: int = 0) -> str:
    key = os.path.abspath(path) + ("" if not extra else f"#{extra}")
    return f"{Path(path).stem or 'item'}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def unique_stems(paths: Sequence[Path]) -> List[str]:
    """The file stem of each path; stems shared by several paths get ``-<8 hex of the absolute path>``, so that
    a name depends on the path alone and not on the listing order."""
    stems = [p.stem or "item" for p in paths]
    counts = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else _hashed_stem(p) for s, p in zip(stems, paths)]


def assign_stems(paths: Sequence[Path], recorded: Optional[Dict[str, str]] = None) -> List[str]:
    """Output stems of ``paths``, unique in the run and against ``recorded`` (``{absolute input: stem}`` that the
    output folder's manifest already holds for earlier runs).

    An input already recorded keeps its stem. Any other input gets its :func:`unique_stems` name, unless that
    name is taken by another input (recorded, or of this run): then ``<stem>-<8 hex of its absolute path>``, the
    scheme of duplicates within a run. So a later run with a different ``x.png`` never writes over the outputs of
    the first one.
    """
    recorded = dict(recorded or {})
    keys = [os.path.abspath(p) for p in paths]
    taken = {stem: key for key, stem in recorded.items()}
    out: List[Optional[str]] = [recorded.get(k) for k in keys]
    for i, (path, key, stem) in enumerate(zip(paths, keys, unique_stems(paths))):
        if out[i] is not None:
            continue
        extra = 0
        while taken.get(stem, key) != key:
            stem = _hashed_stem(path, extra)
            extra += 1
        taken[stem] = key
        out[i] = stem
    return out


def frame_stem(stem: str, index: int) -> str:
    """Output name of frame ``index`` of the video whose items have ``stem``."""
    return f"{stem}_frame_{index:06d}"


def video_frame_ranges(path, frames_per_item: int):
    """``[(start, stop, start_pts), ...]`` covering every frame of a video; ``stop`` of the last range is -1.

    Frames are counted from the packets of the first video stream (no decoding); their sorted timestamps are the
    frames' presentation timestamps, so ``start_pts`` lets a worker seek to its range. If some packet has no
    timestamp, ``start_pts`` is -1 (decode from the beginning and count).

    Raises
    ------
    VideoError
        If the file cannot be opened as a video.
    """
    from ..video.io import open_input

    container = open_input(path)
    try:
        stream = container.streams.video[0]
        pts, count, missing = [], 0, False
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's flush packet
                continue
            count += 1
            if packet.pts is None:
                missing = True
            else:
                pts.append(int(packet.pts))
    finally:
        container.close()
    pts = [] if missing else sorted(pts)
    ranges = []
    for start in range(0, max(count, 1), frames_per_item):
        stop = start + frames_per_item
        if stop >= count:
            stop = -1
        start_pts = pts[start] if pts and start > 0 else -1
        ranges.append((start, stop, start_pts))
    return ranges


def list_items(inputs: Sequence, *, frames_per_item: int = 64, outdir=None, output_names: Sequence[str] = (),
               recorded_stems: Optional[Dict[str, str]] = None) -> List[WorkItem]:
    """The work items of a run over ``inputs`` (files, folders, glob patterns), in listing order.

    ``outdir`` / ``output_names``: files a run writes into its output folder are not taken from a folder or a
    pattern (:func:`expand_inputs`). ``recorded_stems``: ``{absolute input: stem}`` of the output folder's
    manifest, against which the stems are made unique (:func:`assign_stems`). Each item's ``input`` is absolute.

    Raises
    ------
    InputError
        If ``frames_per_item`` is not a positive integer, or nothing at all is found.
    """
    if not (isinstance(frames_per_item, numbers.Integral) and not isinstance(frames_per_item, bool)
            and frames_per_item >= 1):
        raise InputError(f"frames_per_item must be a positive integer, got {frames_per_item!r}")
    frames_per_item = int(frames_per_item)
    paths = expand_inputs(inputs, outdir=outdir, output_names=output_names)
    if not paths:
        raise InputError("no input images or videos found in " + ", ".join(map(str, inputs)))
    items = []
    for path, stem in zip(paths, assign_stems(paths, recorded_stems)):
        key = os.path.abspath(path)
        if not is_video(path):
            items.append(WorkItem(item_id=key, input=key, kind="image", stem=stem))
            continue
        try:
            ranges = video_frame_ranges(path, frames_per_item)
        except InputError:
            # unreadable: one item, whose worker reports the same error in the manifest
            ranges = [(0, -1, -1)]
        for start, stop, start_pts in ranges:
            items.append(WorkItem(item_id=f"{key}#frames={start}-{'end' if stop < 0 else stop}", input=key,
                                  kind="video", stem=stem, frame_start=start, frame_stop=stop,
                                  start_pts=start_pts))
    return items


def input_of(item_id: str, kind: str = "image") -> str:
    """The absolute input path of a manifest row's ``item_id`` (without a video item's ``#frames=`` range)."""
    if kind == "video" and "#frames=" in item_id:
        return item_id.rsplit("#frames=", 1)[0]
    return item_id


def describe_item(item: WorkItem) -> str:
    """How messages name an item: the path, plus the frame range of a video item."""
    if item.kind != "video":
        return item.input
    stop: Optional[str] = "end" if item.frame_stop < 0 else str(item.frame_stop)
    return f"{item.input} [frames {item.frame_start}-{stop}]"
