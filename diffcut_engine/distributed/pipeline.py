"""The Ray Data pipeline of ``diffcut batch``: list -> skip what is done -> actor pool of engines -> manifest.

The driver checks the configuration that needs no weights (a model or engine folder that does not exist) and
makes its paths absolute, lists the work items (absolute paths, output names unique against what the manifest
already records; the run's own outputs in the output folder are not inputs), drops those the manifest already has
as done for the same configuration hash (with their output files present and not since written by another
input), and streams the rest through ``Dataset.map_batches`` with an actor pool of
:class:`~.worker.SegmentWorker` (one engine per actor, loaded once; ``num_gpus``/``num_cpus`` per actor). Each
result row is appended to the manifest journal the moment it reaches the driver, so a killed run resumes where
it stopped; the end of the run writes ``manifest.parquet`` and prints done / skipped / failed counts.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..config import MODEL_ALIASES, EngineConfig
from ..errors import DiffCutError, InputError, ModelLoadError
from ..outputs import check_output_path
from .items import WorkItem, list_items
from .manifest import (JOURNAL_NAME, MANIFEST_NAME, STATUS_DONE, ManifestJournal, completed_items, config_hash,
                       consolidate, read_manifest, recorded_stems)
from .worker import STAGING_DIR, SegmentWorker

logger = logging.getLogger("diffcut_engine")

__all__ = ["BatchSummary", "run_batch", "require_ray", "worker_shortfall", "worker_config"]


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


def _is_remote(address) -> bool:
    """Whether the driver runs off the cluster (Ray Client, ``ray://``): its files need not be the workers'."""
    return isinstance(address, str) and address.startswith("ray://")


def worker_config(config: EngineConfig, *, address: Optional[str] = None, log=None) -> EngineConfig:
    """``config`` as the workers get it, checked on the driver as far as no weights are needed.

    A model folder (``--model``) or engine folder (``--engine-dir``) that exists here becomes an absolute path:
    the workers run in another working directory (on a cluster started with ``ray start``, another node), so a
    relative path would not be found there. Hub ids are kept as they are. The folder the workers will load is
    checked the way the engine checks it (``diffcut segment``'s one-line error for a folder that does not exist,
    an engine folder without its manifest), before Ray starts; on Ray Client (``ray://``), where the driver's
    files need not be the workers', a folder missing here is a warning.

    Raises
    ------
    ModelLoadError
        If the model or engine folder does not exist (or is a file, or has no export manifest).
    """
    from ..encoders.loading import looks_like_path, resolve_model

    changes = {}
    try:
        if config.backend in ("onnx", "tensorrt"):  # the exported folder replaces the diffusers weights
            from ..encoders.artifacts import read_manifest as read_export_manifest

            folder = os.path.expanduser(config.engine_dir)
            read_export_manifest(folder)
            changes["engine_dir"] = os.path.abspath(folder)
        elif config.backbone == "diffusion":
            model = MODEL_ALIASES.get(config.model, config.model)
            if looks_like_path(model):
                changes["model"] = os.path.abspath(resolve_model(model))
    except ModelLoadError as exc:
        if not _is_remote(address):
            raise
        print(f"warning: {exc} here, on the driver; the workers must find it", file=log or sys.stderr)
    return config.replace(**changes) if changes else config


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
    config = worker_config(config, address=address, log=log)  # absolute folders; a missing one before Ray starts
    rows = read_manifest(outdir) if outdir.is_dir() else {}
    # absolute inputs (the workers' working directory is not ours); names unique against the manifest's; the
    # run's own outputs, when the output folder is also an input folder, are not inputs
    items = list_items(inputs, frames_per_item=frames_per_item, outdir=outdir,
                       output_names=(MANIFEST_NAME, JOURNAL_NAME), recorded_stems=recorded_stems(rows))
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {outdir} ({exc.strerror or exc})") from None
    digest = config_hash(config, overlay=bool(overlay), save_npy=bool(save_npy))
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
        _record(_rows(ds), by_id, outdir, digest, summary, progress=progress, log=log)
    finally:
        data_logger.setLevel(data_level)
        if started:
            ray.shutdown()


def _record(results, by_id, outdir, digest, summary, *, progress, log):
    """Append each result row (a worker's columns, one item) to the journal the moment it arrives, and count."""
    from ..utils.progress import progress_bar

    bar = progress_bar(total=len(by_id), enabled=progress, desc="batch", unit="item")
    try:
        with ManifestJournal(outdir) as journal:
            for result in results:
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


#: How a diffcut-engine error raised in a worker reads in the text of the exception Ray hands the driver.
_WORKER_ERROR = re.compile(r"\bdiffcut_engine\.errors\.\w*Error: (.+)")


def _rows(ds):
    """The dataset's result rows; a failure of the pipeline itself becomes one :class:`DiffCutError` line, since
    what finished is already in the journal. An actor that cannot build its engine (a diffcut-engine error:
    a model a worker cannot find, a missing extra) is a configuration or environment error, which running the
    same command again would not fix; anything else (a lost node) can be resumed."""
    try:
        yield from ds.iter_rows()
    except (DiffCutError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 (Ray wraps the worker's exception with its traceback)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        setup = next((m.group(1) for m in map(_WORKER_ERROR.search, reversed(lines)) if m), None)
        if setup is not None:
            raise DiffCutError(f"a Ray worker could not build its engine: {setup}; fix the engine options (or the "
                               "workers' environment) first") from exc
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
