"""The worker: one :class:`~diffcut_engine.engine.Engine` per actor (loaded once), segmenting batches of
:class:`~.items.WorkItem` rows and writing each item's outputs atomically.

Only the Engine's public stages run here: ``preprocess`` per image or frame, then ``encode``, ``trees`` and
``labels`` on groups of ``config.batch_size`` images or frames (``segment`` for ``method="rwncut"``). Outputs are
written by the command line's own writer into a staging folder and moved into place with ``os.replace`` only when
the whole item has succeeded, so the output folder never holds a half-written file or a partial video range. An
item that fails for another reason than its input (:class:`~diffcut_engine.errors.InputError`, which would fail
again) is retried alone, at most ``retries`` more times; the last error goes into its row.

:class:`SegmentWorker` is a plain callable on a column batch (``{"item_id": array, ...}``), the form Ray Data's
``map_batches`` hands to an actor; it runs the same without Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import InputError
from .items import WorkItem, describe_item, frame_stem
from .manifest import STAGES, STATUS_DONE, STATUS_FAILED

__all__ = ["SegmentWorker", "STAGING_DIR", "RESULT_COLUMNS"]

#: Per-item staging folders live here inside the output folder (same file system: ``os.replace`` is atomic).
STAGING_DIR = ".staging"
RESULT_COLUMNS = ("item_id", "status", "error", "attempts", "outputs", "num_segments", "timings", "seconds",
                  "worker", "finished_at")
#: Columns carried as JSON text through Ray Data's blocks (lists and dicts of varying length).
_JSON_COLUMNS = ("outputs", "num_segments", "timings")


class _ItemRun:
    """One attempt at one item: its staging folder, outputs and statistics so far."""

    def __init__(self, item: WorkItem, staging: Path):
        self.item = item
        self.staging = staging
        self.files: List[Path] = []
        self.num_segments: List[int] = []
        self.timings: Dict[str, float] = {s: 0.0 for s in STAGES}
        self.error: Optional[BaseException] = None
        self.t0 = time.perf_counter()
        self.units = 0


class SegmentWorker:
    """Segments batches of work items with one engine, loaded at construction.

    Parameters
    ----------
    config : EngineConfig
        The engine's configuration (the same in every worker).
    outdir : str
        Output folder (shared by every worker: on a cluster, a shared file system).
    overlay, save_npy : bool
        Also write ``<name>_overlay.png`` / ``<name>_labels.npy`` next to each ``<name>_labels.png``.
    retries : int
        Further attempts of an item that failed for another reason than its input.
    engine : Engine, optional
        An engine already built for ``config`` (in one process; a Ray actor builds its own).
    """

    def __init__(self, config, outdir, *, overlay: bool = False, save_npy: bool = False, retries: int = 2,
                 engine=None):
        from ..engine import Engine

        self.engine = engine if engine is not None else Engine(config)
        self.outdir = Path(outdir)
        self.overlay, self.save_npy = bool(overlay), bool(save_npy)
        self.retries = max(0, int(retries))
        self.host = f"{socket.gethostname()}:{os.getpid()}"

    # ------------------------------------------------------------------------------------------------ the batch
    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        n = len(batch["item_id"])
        items = [WorkItem.from_row({k: batch[k][i] for k in batch}) for i in range(n)]
        runs = self._attempt(items)
        attempts = {item.item_id: 1 for item in items}
        for k, run in enumerate(runs):
            while run.error is not None and not isinstance(run.error, InputError) \
                    and attempts[run.item.item_id] <= self.retries:
                attempts[run.item.item_id] += 1
                run = runs[k] = self._attempt([run.item])[0]
        rows = [self._row(run, attempts[run.item.item_id]) for run in runs]
        return {c: np.array([json.dumps(r[c]) if c in _JSON_COLUMNS else r[c] for r in rows], dtype=object)
                for c in RESULT_COLUMNS}

    def _attempt(self, items: List[WorkItem]) -> List[_ItemRun]:
        """Segment ``items`` once, images and frames of several items sharing encoder batches; commit each item
        that succeeded."""
        runs = [_ItemRun(item, self.outdir / STAGING_DIR / f"{uuid.uuid4().hex}") for item in items]
        pending = []
        for run in runs:
            try:
                run.staging.mkdir(parents=True)
                for source, index, name in self._units(run.item):
                    prepared = self.engine.preprocess(source, index, name=name)
                    pending.append((run, prepared, source))
                    if len(pending) >= self.engine.config.batch_size:
                        self._segment(pending)
                        pending = []
                    if run.error is not None:
                        break
            except Exception as exc:  # noqa: BLE001 (recorded in the item's manifest row)
                run.error = exc
        self._segment(pending)
        for run in runs:
            if run.error is None and run.units == 0:
                run.error = InputError(f"{describe_item(run.item)}: no frames in this range (the video is shorter "
                                       "than its packets said)")
            if run.error is None:
                try:
                    self._commit(run)
                except Exception as exc:  # noqa: BLE001
                    run.error = exc
            shutil.rmtree(run.staging, ignore_errors=True)
        return runs

    def _units(self, item: WorkItem):
        """``(source, index, name)`` of each image or frame of an item, for :meth:`Engine.preprocess`."""
        if item.kind == "image":
            yield item.input, 0, None
            return
        from .video import decode_range

        for index, rgb in decode_range(item.input, item.frame_start, item.frame_stop, item.start_pts):
            yield rgb, index, f"frame {index}"

    def _segment(self, pending):
        """Stages 2-4 on a group of prepared images or frames, then their outputs into the items' staging."""
        sources = [source for run, _, source in pending if run.error is None]
        pending = [(run, p) for run, p, _ in pending if run.error is None]
        if not pending:
            return
        engine = self.engine
        try:
            if engine.config.method != "diffcut":  # rwncut replaces stages 2-4: its own whole pipeline
                segs = engine.segment(sources)
            else:
                t0 = time.perf_counter()
                features = engine.encode([p for _, p in pending])
                share = (time.perf_counter() - t0) / len(pending)
                timings = [{**p.timings, "encode": share} for _, p in pending]
                trees = engine.trees(features, timings=timings)
                segs = [engine.labels(p, f, tree, timings=tm)
                        for (_, p), f, tree, tm in zip(pending, features, trees, timings)]
        except Exception as exc:  # noqa: BLE001 (every item of the group failed this attempt)
            for run, _ in pending:
                run.error = exc
            return
        from ..cli.segment import write_outputs

        for (run, p), seg in zip(pending, segs):
            if run.error is not None:
                continue
            name = run.item.stem if run.item.kind == "image" else frame_stem(run.item.stem, p.index)
            try:
                run.files += write_outputs(seg, p.view, run.staging, name, overlay=self.overlay,
                                           save_npy=self.save_npy)
            except Exception as exc:  # noqa: BLE001
                run.error = exc
                continue
            run.units += 1
            run.num_segments.append(int(seg.num_segments))
            for s in STAGES:
                run.timings[s] += float(seg.timings.get(s, 0.0))

    def _commit(self, run: _ItemRun):
        """Move an item's staged files into the output folder (each rename atomic)."""
        for f in run.files:
            os.replace(f, self.outdir / f.name)

    def _row(self, run: _ItemRun, attempts: int) -> dict:
        ok = run.error is None
        error = None if ok else (str(run.error) if isinstance(run.error, InputError)
                                 else f"{type(run.error).__name__}: {run.error}")
        if error is not None and not error.startswith(run.item.input):
            error = f"{describe_item(run.item)}: {error}"
        return {"item_id": run.item.item_id, "status": STATUS_DONE if ok else STATUS_FAILED, "error": error,
                "attempts": attempts, "outputs": [f.name for f in run.files] if ok else [],
                "num_segments": run.num_segments if ok else [], "timings": run.timings,
                "seconds": time.perf_counter() - run.t0, "worker": self.host, "finished_at": time.time()}
