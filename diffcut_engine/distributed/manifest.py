"""The run's record: one row per item (input, outputs, status, error, segment counts, per-stage timings, engine
configuration hash, the worker and when it finished the item), kept as a Parquet file ``OUTDIR/manifest.parquet``.

While a run goes on, each finished item is appended at once to a journal, ``OUTDIR/manifest.journal.jsonl`` (one
JSON line, flushed and fsynced), so a killed driver loses no finished item; the end of the run folds the journal
into the Parquet file (written to a temporary file and renamed, so it is never half-written) and removes it. A
line cut short by a kill is ignored when reading. :func:`read_manifest` reads both, the latest row of each item
winning; :func:`completed_items` says which items a new run with the same configuration may skip, and
:func:`recorded_stems` which output names the folder's earlier inputs hold. A manifest or journal that cannot be
read is one :class:`~diffcut_engine.errors.InputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Dict, Iterable, Optional

from ..config import EngineConfig
from ..errors import InputError
from ..outputs import OUTPUT_SUFFIXES
from .items import input_of

__all__ = ["MANIFEST_NAME", "JOURNAL_NAME", "STAGES", "STATUS_DONE", "STATUS_FAILED", "config_hash",
           "ManifestJournal", "read_manifest", "write_manifest", "consolidate", "completed_items", "recorded_stems"]

MANIFEST_NAME = "manifest.parquet"
JOURNAL_NAME = "manifest.journal.jsonl"
STATUS_DONE, STATUS_FAILED = "done", "failed"
#: Per-stage seconds kept in the manifest's ``timings`` column (summed over the frames of a video item).
STAGES = ("load", "preprocess", "encode", "graph", "assign", "refine", "total")
#: Bumped when the outputs' format changes, so that older results are not taken for current ones.
OUTPUT_FORMAT = 1

#: Options that change speed, not results: not part of the configuration hash.
_SPEED_ONLY = ("batch_size", "local_files_only", "compile", "channels_last", "cuda_graphs", "graph_device",
               "attention", "graph_backend")


def config_hash(config: EngineConfig, **output_options) -> str:
    """16 hex digits identifying what a run writes: every :class:`EngineConfig` field that can change labels
    (not the speed-only ones such as ``batch_size``), plus the output options (``overlay``, ``save_npy``)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _SPEED_ONLY}
    if dataclasses.is_dataclass(fields.get("rwncut")):
        fields["rwncut"] = dataclasses.asdict(fields["rwncut"])
    doc = {"config": fields, "outputs": output_options, "format": OUTPUT_FORMAT}
    text = json.dumps(doc, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pyarrow():
    from ..utils.imports import require

    require("pyarrow", "the batch manifest (Parquet)")
    import pyarrow
    import pyarrow.parquet  # noqa: F401

    return pyarrow


def _schema():
    pa = _pyarrow()
    return pa.schema([
        ("item_id", pa.string()), ("input", pa.string()), ("kind", pa.string()), ("stem", pa.string()),
        ("frame_start", pa.int64()), ("frame_stop", pa.int64()),
        ("status", pa.string()), ("error", pa.string()), ("attempts", pa.int32()),
        ("outputs", pa.list_(pa.string())), ("num_segments", pa.list_(pa.int32())),
        ("timings", pa.struct([(s, pa.float64()) for s in STAGES])),
        ("seconds", pa.float64()), ("config_hash", pa.string()), ("worker", pa.string()),
        ("finished_at", pa.float64()),
    ])


def normalize_row(row: dict) -> dict:
    """A manifest row with every column of the schema (missing ones empty; -1 frame bounds as nulls)."""
    out = {
        "item_id": str(row["item_id"]), "input": str(row.get("input", "")), "kind": str(row.get("kind", "image")),
        "stem": str(row.get("stem") or ""), "frame_start": None, "frame_stop": None,
        "status": str(row["status"]), "error": row.get("error") or None, "attempts": int(row.get("attempts", 1)),
        "outputs": [str(p) for p in row.get("outputs") or []],
        "num_segments": [int(n) for n in row.get("num_segments") or []],
        "timings": {s: float((row.get("timings") or {}).get(s, 0.0)) for s in STAGES},
        "seconds": float(row.get("seconds", 0.0)), "config_hash": str(row.get("config_hash", "")),
        "worker": str(row.get("worker", "")), "finished_at": float(row.get("finished_at") or time.time()),
    }
    if out["kind"] == "video":
        start, stop = row.get("frame_start"), row.get("frame_stop")
        out["frame_start"] = None if start is None or int(start) < 0 else int(start)
        out["frame_stop"] = None if stop is None or int(stop) < 0 else int(stop)
    return out


class ManifestJournal:
    """Appends finished items to ``OUTDIR/manifest.journal.jsonl``, one fsynced JSON line each."""

    def __init__(self, outdir):
        self.path = Path(outdir) / JOURNAL_NAME
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, row: dict) -> dict:
        row = normalize_row(row)
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return row

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: Columns every manifest row must have (older manifests may lack the others, such as ``stem``).
_REQUIRED = ("item_id", "status", "finished_at")


def _damaged(path: Path, what: str) -> InputError:
    redo = "every item is" if path.name == MANIFEST_NAME else "the items it records are"
    return InputError(f"{path}: {what}; it is not a manifest this version can read. Remove it ({redo} then done "
                      "again) or choose another output folder (-o)")


def _check_row(row, path: Path, where: str) -> dict:
    if not isinstance(row, dict):
        raise _damaged(path, f"{where} is {type(row).__name__}, not a row (a JSON object)")
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise _damaged(path, f"{where} has no {', '.join(missing)}")
    if not isinstance(row["item_id"], str) or not isinstance(row["finished_at"], (int, float)) \
            or isinstance(row["finished_at"], bool):
        raise _damaged(path, f"{where} has an item_id or finished_at of the wrong type")
    return row


def _journal_rows(path: Path) -> Iterable[dict]:
    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.endswith("\n"):
                    break  # the last line, cut short by a kill
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill, with the next run's first line appended to it
                yield _check_row(row, path, f"line {number}")
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def _parquet_rows(path: Path) -> Iterable[dict]:
    pa = _pyarrow()
    if not path.is_file():
        raise _damaged(path, "is not a file")
    try:
        rows = pa.parquet.read_table(path).to_pylist()
    except (OSError, pa.ArrowException, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _damaged(path, f"damaged or not a Parquet file ({reason})") from None
    for number, row in enumerate(rows, 1):
        yield _check_row(row, path, f"row {number}")


def read_manifest(outdir) -> Dict[str, dict]:
    """``{item_id: row}`` of the Parquet manifest and the journal of ``outdir`` (the latest row of each item).

    Raises
    ------
    InputError
        If the manifest or the journal is damaged (not Parquet, a row without its columns, a journal line that
        is not a JSON object), naming the file and what to do.
    """
    outdir = Path(outdir)
    rows: Dict[str, dict] = {}
    path = outdir / MANIFEST_NAME
    if path.exists():
        for row in _parquet_rows(path):
            rows[row["item_id"]] = row
    for row in _journal_rows(outdir / JOURNAL_NAME):
        old = rows.get(row["item_id"])
        if old is None or row["finished_at"] >= old["finished_at"]:
            rows[row["item_id"]] = row
    return rows


def write_manifest(outdir, rows: Iterable[dict]) -> Path:
    """Write ``OUTDIR/manifest.parquet`` from ``rows`` atomically (a temporary file renamed over it)."""
    pa = _pyarrow()
    path = Path(outdir) / MANIFEST_NAME
    table = pa.Table.from_pylist([normalize_row(r) for r in rows], schema=_schema())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pa.parquet.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def consolidate(outdir) -> Path:
    """Fold the journal into ``manifest.parquet`` and remove it; returns the manifest's path."""
    outdir = Path(outdir)
    rows = read_manifest(outdir)
    path = write_manifest(outdir, sorted(rows.values(), key=lambda r: r["item_id"]))
    journal = outdir / JOURNAL_NAME
    if journal.exists():
        journal.unlink()
    return path


def _latest(entries) -> dict:
    """``{key: (when, value)}`` of ``(key, when, value)`` entries: for each key the latest one (a tie: the later
    entry)."""
    out: dict = {}
    for key, when, value in entries:
        if key not in out or when >= out[key][0]:
            out[key] = (when, value)
    return out


def _finished(row: dict) -> float:
    return float(row.get("finished_at") or 0.0)


def _owners(rows: Dict[str, dict]) -> Dict[str, str]:
    """``{output name: item_id}``: for each output file, the item whose latest done row lists it."""
    owners = _latest((name, _finished(row), item_id) for item_id, row in rows.items()
                     if row.get("status") == STATUS_DONE for name in row.get("outputs") or [])
    return {name: item_id for name, (_, item_id) in owners.items()}


def completed_items(rows: Dict[str, dict], digest: str, outdir=None) -> set:
    """Ids of the items a run with configuration hash ``digest`` may skip: done with that hash, every output
    file of the row still there (relative outputs are taken from ``outdir``), and no later row of another input
    listing the same files (which would then hold that input's results)."""
    done = set()
    owners = _owners(rows)
    for item_id, row in rows.items():
        if row.get("status") != STATUS_DONE or row.get("config_hash") != digest or not row.get("outputs"):
            continue
        if any(owners.get(name) != item_id for name in row["outputs"]):
            continue
        paths = [Path(p) if outdir is None or os.path.isabs(p) else Path(outdir) / p for p in row["outputs"]]
        if all(p.is_file() and p.stat().st_size > 0 for p in paths):
            done.add(item_id)
    return done


_FRAME_NAME = re.compile(r"^(.*)_frame_\d{6}_")


def row_stem(row: dict) -> str:
    """The output stem of a manifest row: its ``stem`` column, else (a manifest written before that column)
    taken from its output names; ``""`` if neither says."""
    if row.get("stem"):
        return str(row["stem"])
    for name in row.get("outputs") or []:
        name = os.path.basename(str(name))
        if row.get("kind") == "video":
            m = _FRAME_NAME.match(name)
            if m:
                return m.group(1)
            continue
        for suffix in OUTPUT_SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)]
    return ""


def recorded_stems(rows: Dict[str, dict]) -> Dict[str, str]:
    """``{absolute input: stem}`` of the inputs ``rows`` (a manifest) records. Where several inputs claim one
    stem (manifests written before stems were kept unique across runs), the input of the latest row keeps it."""
    stems = ((input_of(str(item_id), str(row.get("kind", "image"))), _finished(row), row_stem(row))
             for item_id, row in rows.items())
    latest = _latest(entry for entry in stems if entry[2])
    by_stem = _latest((stem, when, key) for key, (when, stem) in latest.items())
    return {key: stem for stem, (_, key) in by_stem.items()}


def summarize(rows: Iterable[dict]) -> Optional[dict]:
    """Counts by status of manifest rows (for reports)."""
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts
