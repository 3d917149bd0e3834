"""The Ray Data pipeline of ``diffcut batch``: list -> skip what is done -> actor pool of engines -> manifest.

The driver lists the work items, drops those the manifest already has as done for the same configuration hash
(with their output files present), and streams the rest through ``Dataset.map_batches`` with an actor pool of
:class:`~.worker.SegmentWorker` (one engine per actor, loaded once; ``num_gpus``/``num_cpus`` per actor). Each
result row is appended to the manifest journal the moment it reaches the driver, so a killed run resumes where
it stopped; the end of the run writes ``manifest.parquet`` and prints done / skipped / failed counts.
"""

from __future__ import annotations

import json
import logging
import numbers
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..config import EngineConfig
from ..errors import DiffCutError, InputError
from ..outputs import check_output_path
from .items import WorkItem, list_items
from .manifest import STATUS_DONE, ManifestJournal, completed_items, config_hash, consolidate, read_manifest
from .worker import STAGING_DIR, SegmentWorker

logger = logging.getLogger("diffcut_engine")

__all__ = ["BatchSummary", "run_batch", "require_ray", "worker_shortfall"]


@dataclass
class BatchSummary:
    """What a run did: item counts, the manifest's path, the configuration hash, wall time."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    manifest: Optional[Path] = None
    config_hash: str = ""
    seconds: float = 0.0
    errors: list = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} items in "
                f"{self.seconds:.1f} s; manifest {self.manifest}")


def require_ray():
    """The ``ray`` module with Ray Data, or a :class:`BackendUnavailableError` naming the ``[ray]`` extra."""
    from ..utils.imports import require

    ray = require("ray", "diffcut batch (Ray Data)")
    require("ray.data", "diffcut batch (Ray Data)")
    return ray


def _check_resources(num_workers, cpus_per_worker, gpus_per_worker, retries):
    # numpy numbers accepted; bool refused (True is no worker count)
    for name, value in (("num_workers", num_workers), ("retries", retries)):
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                and value >= (1 if name == "num_workers" else 0)):
            raise InputError(f"{name} must be an integer >= {1 if name == 'num_workers' else 0}, got {value!r}")
    for name, value in (("cpus_per_worker", cpus_per_worker), ("gpus_per_worker", gpus_per_worker)):
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < float("inf")):
            raise InputError(f"{name} must be a number >= 0, got {value!r}")


def worker_shortfall(nodes, cpus_per_worker: float, gpus_per_worker: float) -> str:
    """``""`` when one of ``nodes`` (the ``Resources`` dicts of Ray's live nodes) can hold a worker of
    ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs, else a sentence saying what is missing (Ray would
    otherwise keep the actor pool waiting for resources that never come)."""
    if any(float(r.get("CPU", 0)) >= cpus_per_worker and float(r.get("GPU", 0)) >= gpus_per_worker
           for r in nodes):
        return ""
    cpus = max((float(r.get("CPU", 0)) for r in nodes), default=0.0)
    gpus = max((float(r.get("GPU", 0)) for r in nodes), default=0.0)
    return (f"no Ray node can hold a worker of {cpus_per_worker:g} CPUs and {gpus_per_worker:g} GPUs (the "
            f"largest has {cpus:g} CPUs and {gpus:g} GPUs)")


def run_batch(inputs: Sequence, outdir, config: EngineConfig, *, address: Optional[str] = None,
              num_workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
              frames_per_item: int = 64, items_per_call: Optional[int] = None, retries: int = 2,
              overlay: bool = False, save_npy: bool = False, progress: bool = True,
              log=None) -> BatchSummary:
    """Segment every image and video frame of ``inputs`` into ``outdir`` on Ray; see ``diffcut batch``.

    Parameters
    ----------
    inputs : sequence of str
        Image or video files, folders, glob patterns.
    outdir : path
        Output folder: ``<stem>_labels.png`` per image, ``<stem>_frame_NNNNNN_labels.png`` per video frame (plus
        overlays / ``.npy`` if asked) and ``manifest.parquet``. On a cluster it must be on a file system every
        node sees.
    config : EngineConfig
        The engine of every worker.
    address : str, optional
        Ray cluster to join (``ray://...`` or ``HOST:PORT``, or ``auto``); default: join the Ray already started
        in this process, else start a local one.
    num_workers : int
        Actors, each holding one engine.
    cpus_per_worker, gpus_per_worker : float
        Resources each actor reserves (``gpus_per_worker=1``: one engine per GPU).
    frames_per_item : int
        Video frames per work item.
    items_per_call : int, optional
        Items per actor call (default ``config.batch_size`` for images; video ranges one at a time).
    retries : int
        Further attempts of a failing item (input errors are final at once).
    overlay, save_npy : bool
        Also write the colour overlay PNG / the labels as ``.npy``.
    progress : bool
        Progress bar on stderr.
    log : file-like, optional
        Where the one-line messages go (default stderr).

    Returns
    -------
    BatchSummary
    """
    _check_resources(num_workers, cpus_per_worker, gpus_per_worker, retries)
    log = log or sys.stderr
    t_start = time.perf_counter()
    outdir = check_output_path(outdir, "output folder", folder=True)  # not an existing file, writable
    items = list_items(inputs, frames_per_item=frames_per_item)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {outdir} ({exc.strerror or exc})") from None
    digest = config_hash(config, overlay=bool(overlay), save_npy=bool(save_npy))
    rows = read_manifest(outdir)
    skip = completed_items(rows, digest, outdir)
    todo = [item for item in items if item.item_id not in skip]
    summary = BatchSummary(total=len(items), skipped=len(items) - len(todo), config_hash=digest)
    shutil.rmtree(outdir / STAGING_DIR, ignore_errors=True)  # what a killed run left half-written
    print(f"# {len(items)} items ({len(todo)} to do, {summary.skipped} already done), configuration {digest}",
          file=log)
    try:
        if todo:
            _run_on_ray(todo, outdir, config, digest, summary, address=address, num_workers=num_workers,
                        cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                        items_per_call=items_per_call, retries=retries, overlay=overlay, save_npy=save_npy,
                        progress=progress, log=log)
    finally:  # also when the pipeline stopped: what finished goes into the Parquet manifest
        summary.manifest = consolidate(outdir)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _run_on_ray(todo, outdir, config, digest, summary, *, address, num_workers, cpus_per_worker,
                gpus_per_worker, items_per_call, retries, overlay, save_npy, progress, log):
    ray = require_ray()  # with ray.data imported
    from ..utils.progress import progress_bar

    started = False
    # without a progress bar (--quiet): Ray's own notices (authentication, Ray Data's progress and execution
    # lines) are not shown either; its errors are
    level = logging.WARNING if progress else logging.ERROR
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=level)
        started = True
    data_logger = logging.getLogger("ray.data")
    data_level = data_logger.level
    if not progress:
        data_logger.setLevel(logging.ERROR)
    try:
        shortfall = worker_shortfall([n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")],
                                     cpus_per_worker, gpus_per_worker)
        if shortfall and address is None:  # no autoscaler can add a node: the actor pool would wait forever
            raise InputError(f"{shortfall}; lower --cpus-per-worker / --gpus-per-worker, or join a cluster "
                             "that has such a node (--address)")
        if shortfall:
            print(f"warning: {shortfall}; the workers wait until the cluster adds such a node", file=log)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        by_id = {item.item_id: item for item in todo}
        if items_per_call is None:
            items_per_call = 1 if any(item.kind == "video" for item in todo) else config.batch_size
        ds = ray.data.from_items([item.as_row() for item in todo],
                                 override_num_blocks=max(1, min(len(todo), 4 * num_workers * 8)))
        ds = ds.map_batches(SegmentWorker, batch_size=items_per_call, batch_format="numpy",
                            fn_constructor_kwargs=dict(config=config, outdir=str(outdir.resolve()), overlay=overlay,
                                                       save_npy=save_npy, retries=retries),
                            compute=ray.data.ActorPoolStrategy(size=num_workers), num_cpus=cpus_per_worker,
                            num_gpus=gpus_per_worker)
        bar = progress_bar(total=len(todo), enabled=progress, desc="batch", unit="item")
        try:
            with ManifestJournal(outdir) as journal:
                for result in _rows(ds):
                    item: WorkItem = by_id[str(result["item_id"])]
                    # finished_at: the worker's clock when the item's files were in place
                    row = journal.append({**item.as_row(), **_decode(result), "config_hash": digest})
                    if row["status"] == STATUS_DONE:
                        summary.done += 1
                    else:
                        summary.failed += 1
                        summary.errors.append(row["error"])
                        print(f"error: {row['error']} (after {row['attempts']} attempt(s))", file=log)
                    bar.update(1)
                    bar.set_postfix_str(f"{summary.done} done, {summary.failed} failed")
        finally:
            bar.close()
    finally:
        data_logger.setLevel(data_level)
        if started:
            ray.shutdown()


def _rows(ds):
    """The dataset's result rows; a failure of the pipeline itself (an actor that cannot load its engine, a lost
    node) becomes one :class:`DiffCutError` line, since what finished is already in the journal."""
    try:
        yield from ds.iter_rows()
    except (DiffCutError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 (Ray wraps the worker's exception with its traceback)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        raise DiffCutError(f"the Ray pipeline stopped: {reason}; the items finished before are recorded in the "
                           "manifest, run the same command again to resume") from exc


def _decode(result) -> dict:
    out = {}
    for key, value in result.items():
        if key in ("outputs", "num_segments", "timings"):
            value = json.loads(value)
        elif hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out
