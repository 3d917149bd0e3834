"""Output-folder safety for commands that write many files (``diffcut segment``).

Checked before any model is loaded, so a mistake costs nothing:

- the output is a folder, or can be created as one (not an existing file), and files can be written in it;
- one run at a time: a lock file (``.diffcut.lock``, holding the writer's pid) refuses a second run into the
  same folder while the first is alive (a lock left by a killed run is taken over);
- no silent overwrite: a folder that already holds files is refused unless ``overwrite`` (the files listed in
  the earlier ``summary.json`` are deleted first, so no stale results stay) or ``resume`` (inputs whose results
  are in ``summary.json`` with their files present are skipped, new names never reuse an earlier one, and the
  summary is merged);
- an input file is never overwritten by an output;
- ``summary.json`` records the run's working directory (``cwd``), to which its relative paths are relative, so a
  later ``overwrite`` or ``resume`` started from another directory finds the earlier inputs and files.

A write that fails during the run (disk full, ``ENOSPC``, or any other ``OSError``, for every output file: labels,
masks, overlay, ``.npy``) stops the run cleanly, a partly written file is removed, the summary of what was finished
is still written (:meth:`OutputFolder.write_summary`) and the command reports one
``error:`` line (:func:`write_failure`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Iterable, List, Optional

from .errors import InputError

logger = logging.getLogger("diffcut_engine")

SUMMARY_NAME = "summary.json"
#: The per-image files ``diffcut segment`` writes, ``<stem><suffix>``.
OUTPUT_SUFFIXES = ("_labels.png", "_overlay.png", "_labels.npy", "_masks.json", "_classes.png")
LOCK_NAME = ".diffcut.lock"

__all__ = ["SUMMARY_NAME", "OUTPUT_SUFFIXES", "LOCK_NAME", "OutputFolder", "write_failure", "check_output_path",
           "write_text_file", "is_written_output"]


def is_written_output(path, output_folder) -> bool:
    """Whether ``path`` is one of the per-image files the segmentation commands write (a name ending in one of
    :data:`OUTPUT_SUFFIXES`) lying directly in ``output_folder``: an input folder that is also the output folder
    must not take a run's own results as new inputs on the next run."""
    p = Path(path)
    return p.name.endswith(OUTPUT_SUFFIXES) and _real(p.parent) == _real(output_folder)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


def check_output_path(path, what: str = "output", *, folder: bool = False) -> Path:
    """Check, before any model is loaded, that one output file (or, with ``folder``, one output folder) can be
    written at ``path``; nothing is created. Returns ``path`` as a :class:`~pathlib.Path`.

    Raises :class:`InputError` (one line) when the path is a folder where a file is wanted (or a file where a
    folder is wanted), not a regular file, or lies under an existing file or a folder that cannot be written.
    """
    p = Path(path)
    if folder:
        if p.exists() and not p.is_dir():
            raise InputError(f"{what} {p} is an existing file, not a folder; give a folder name")
    elif p.is_dir():
        raise InputError(f"{what} {p} is a folder; give a file name")
    elif p.exists() and not p.is_file():
        raise InputError(f"{what} {p} is not a regular file (a FIFO, socket or device); give a file name")
    parent = p.parent if not (folder and p.is_dir()) else p
    while not parent.exists() and parent != parent.parent:  # the nearest existing folder above it
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what} {p} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {p} cannot be created: the folder {parent} is not writable")
    return p


def write_text_file(path, text: str, what: str = "output") -> Path:
    """Write ``text`` to ``path`` (its folders created), a failed write as one :class:`InputError` line."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    except OSError as exc:
        raise InputError(f"cannot write the {what} {p} ({exc.strerror or exc})") from None
    return p


class OutputFolder:
    """An output folder checked and locked for one run (use it as a context manager; the lock goes on exit).

    Parameters
    ----------
    path : path
        The folder (created with its parents if missing).
    overwrite : bool
        Accept a folder with files: delete the outputs and summary of the earlier run first.
    resume : bool
        Accept a folder with files: keep the earlier results and skip the inputs they cover.
    inputs : iterable of paths
        The run's inputs: never overwritten by an output.

    Raises
    ------
    InputError
        If the path is an existing file, cannot be created or written, is locked by a live run, or holds files
        while neither ``overwrite`` nor ``resume`` is given.
    """

    def __init__(self, path, *, overwrite: bool = False, resume: bool = False, inputs: Iterable = ()):
        if overwrite and resume:
            raise InputError("--overwrite and --resume exclude each other")
        self.path = Path(path)
        self.overwrite, self.resume = overwrite, resume
        self._inputs = {_real(p) for p in inputs if os.path.exists(p)}
        self._lock: Optional[Path] = None
        self.previous: List[dict] = []       # results of the earlier run that are kept (resume)
        self._done = set()                   # real paths of inputs finished by the earlier run (resume)
        self.used_stems = set()              # output names of the earlier run (resume)
        name = os.fspath(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"output {name} is an existing file, not a folder; give a folder name")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output folder {name} ({exc.strerror or exc})") from None
        self._take_lock()
        try:
            entries = [e for e in os.listdir(self.path) if e != LOCK_NAME]
            if entries and not (overwrite or resume):
                raise InputError(f"output folder {name} is not empty ({len(entries)} entries, e.g. "
                                 f"{sorted(entries)[0]}); pass --overwrite to replace the earlier results or "
                                 "--resume to add to them, or choose another folder")
            earlier = self._read_summary() if entries else []
            if overwrite:
                self._remove_earlier(earlier)
            elif resume:
                self._keep_earlier(earlier)
        except BaseException:
            self.close()
            raise

    # ---- lock ------------------------------------------------------------------------------------------------
    def _take_lock(self):
        lock = self.path / LOCK_NAME
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._lock_holder(lock)
                if holder is not None:
                    raise InputError(f"output folder {self.path} is in use by another diffcut run (pid {holder}); "
                                     f"wait for it, or remove {lock} if no run is going") from None
                logger.warning("%s: taking over the lock of a run that is no longer alive", self.path)
                try:
                    lock.unlink()
                except FileNotFoundError:
                    pass
                continue
            except OSError as exc:
                raise InputError(f"cannot write to the output folder {self.path} ({exc.strerror or exc})") from None
            try:
                os.write(fd, record.encode())
            except OSError as exc:
                os.close(fd)
                lock.unlink()
                raise InputError(f"cannot write to the output folder {self.path} ({exc.strerror or exc})") from None
            os.close(fd)
            self._lock = lock
            return
        raise InputError(f"output folder {self.path} is in use by another diffcut run")  # pragma: no cover

    @staticmethod
    def _lock_holder(lock: Path) -> Optional[int]:
        """The pid of the live run holding ``lock``, else ``None`` (dead, another host's is kept as alive)."""
        try:
            info = json.loads(lock.read_text())
            pid, host = int(info["pid"]), info.get("host")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host not in (None, socket.gethostname()):
            return pid
        return pid if pid != os.getpid() and _pid_alive(pid) else None

    def close(self):
        """Release the lock."""
        if self._lock is not None:
            try:
                self._lock.unlink()
            except OSError:
                pass
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the earlier run -------------------------------------------------------------------------------------
    def _read_summary(self) -> List[dict]:
        path = self.path / SUMMARY_NAME
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text())
            results = data["results"]
            if not isinstance(results, list):
                raise TypeError("results is not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if self.resume:
                raise InputError(f"{path} is unreadable ({exc}); cannot resume: pass --overwrite instead") \
                    from None
            return []
        cwd = data.get("cwd") if isinstance(data.get("cwd"), str) else None
        return [self._resolved(r, cwd) for r in results if isinstance(r, dict) and isinstance(r.get("input"), str)]

    def _resolved(self, entry: dict, cwd: Optional[str]) -> dict:
        """An earlier entry with absolute paths: relative ones are relative to the earlier run's working directory
        (``cwd`` of its summary), so a run started elsewhere finds them. A summary without ``cwd`` (older
        versions): inputs relative to this directory, outputs found in the folder by name where not found here."""
        def absolute(p: str, output: bool) -> str:
            if os.path.isabs(p):
                return p
            if cwd is not None:
                return os.path.normpath(os.path.join(cwd, p))
            if output and not os.path.isfile(p):
                return os.path.abspath(self.path / os.path.basename(p))  # (outputs are written in the folder)
            return os.path.abspath(p)

        entry = dict(entry)
        entry["input"] = absolute(entry["input"], False)
        if isinstance(entry.get("outputs"), list):
            entry["outputs"] = [absolute(f, True) if isinstance(f, str) else f for f in entry["outputs"]]
        return entry

    def _inside(self, p: str) -> bool:
        root = _real(self.path)
        return os.path.commonpath([root, _real(p)]) == root

    def _remove_earlier(self, earlier: List[dict]):
        """Delete the earlier run's outputs (files inside the folder only) and its summary."""
        for entry in earlier:
            outputs = entry.get("outputs")
            for f in outputs if isinstance(outputs, list) else []:
                if isinstance(f, str) and os.path.isfile(f) and self._inside(f) and _real(f) not in self._inputs:
                    os.remove(f)
        summary = self.path / SUMMARY_NAME
        if summary.is_file():
            summary.unlink()

    def _keep_earlier(self, earlier: List[dict]):
        by_input = {}
        for entry in earlier:
            by_input.setdefault(entry["input"], []).append(entry)
        for source, entries in by_input.items():
            complete = all("error" not in e and isinstance(e.get("outputs"), list) and e["outputs"] and
                           all(isinstance(f, str) and os.path.isfile(f) for f in e["outputs"]) for e in entries)
            if complete:
                self.previous.extend(entries)
                self._done.add(_real(source))
                for e in entries:
                    if isinstance(e.get("stem"), str):
                        self.used_stems.add(e["stem"])
        # names of files already here (also those of runs without a summary) are never reused
        for entry in os.listdir(self.path):
            for suffix in OUTPUT_SUFFIXES:
                if entry.endswith(suffix):
                    name = entry[: -len(suffix)]
                    self.used_stems.add(name)
                    self.used_stems.add(re.sub(r"_tau[0-9.eE+-]+$", "", name))  # <stem>_tau<T> of --taus

    # ---- during the run --------------------------------------------------------------------------------------
    def is_done(self, source) -> bool:
        """``resume``: the earlier run finished this input (its results and files are kept)."""
        return _real(source) in self._done

    def check_target(self, path) -> None:
        """:class:`InputError` if writing ``path`` would overwrite one of the run's inputs."""
        if os.path.exists(path) and _real(path) in self._inputs:
            raise InputError(f"{path}: is one of the inputs; refusing to overwrite it (choose another output "
                             "folder)")

    def write_summary(self, header: dict, results: List[dict]) -> Path:
        """Write ``summary.json``: ``header`` plus the kept earlier results and ``results`` (atomically)."""
        path = self.path / SUMMARY_NAME
        tmp = self.path / (SUMMARY_NAME + ".tmp")
        try:
            with open(tmp, "w") as fh:  # (relative paths are relative to cwd; earlier results kept are absolute)
                json.dump({**header, "cwd": os.getcwd(), "results": self.previous + list(results)}, fh, indent=1)
            os.replace(tmp, path)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        return path


def write_failure(exc: OSError, folder, done: int, total: int, summary_error: Optional[BaseException]) -> str:
    """The one-line message of a run stopped by a failed write (disk full, permissions, ...)."""
    reason = "the disk is full (no space left on device)" if exc.errno == errno.ENOSPC else \
        (exc.strerror or str(exc))
    where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
    summary = (f"{Path(folder) / SUMMARY_NAME} lists what was done" if summary_error is None else
               f"the summary could not be written either ({getattr(summary_error, 'strerror', None) or summary_error})")
    return f"{reason}{where}; stopped after {done} of {total} inputs, the rest was not run; {summary}"
