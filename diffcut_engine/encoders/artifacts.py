"""Exported encoder folders: ``manifest.json``, file checks, and what a folder promises to compute.

A folder written by ``diffcut export`` (:mod:`diffcut_engine.encoders.onnx_export`) holds ``model.onnx`` (plus
``model.onnx.data`` when the weights are stored as ONNX external data), optionally ``constants.npz``, and a
``manifest.json`` that says which model, size, batch range, precision and method constants the graph was built
for, which tools wrote it, how far its features were from the PyTorch encoder's at export time, and the size and
SHA-256 of every file. The runtime backends (:mod:`~diffcut_engine.encoders.onnx`,
:mod:`~diffcut_engine.encoders.tensorrt`) read the folder only through :func:`load_manifest`, which refuses a
folder that is missing a file, has a truncated or modified file, or was exported for another model, size or
method setting, instead of producing wrong features.

This module itself imports neither torch nor onnx.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional

from ..config import is_int
from ..errors import InputError, ModelLoadError

MANIFEST_NAME = "manifest.json"
FORMAT = "diffcut-engine/encoder-export"
FORMAT_VERSION = 1
ONNX_NAME = "model.onnx"
CONSTANTS_NAME = "constants.npz"

#: Keys every manifest has; see :func:`diffcut_engine.encoders.onnx_export.export_onnx` for their meaning.
REQUIRED_KEYS = ("format", "format_version", "model", "method", "input", "output", "batch", "dtype", "precision",
                 "constants", "opset", "exporter", "files", "tolerance", "graph")

#: Backends that run an exported folder instead of the diffusers weights.
EXPORTED_BACKENDS = ("onnx", "tensorrt")


def file_digest(path: str, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in 4 MiB chunks (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def describe_files(folder: str, names) -> Dict[str, Dict[str, Any]]:
    """``{name: {"bytes": n, "sha256": hex}}`` for files of ``folder`` (the manifest's ``files`` entry)."""
    return {name: {"bytes": os.path.getsize(os.path.join(folder, name)),
                   "sha256": file_digest(os.path.join(folder, name))} for name in sorted(names)}


def folder_digest(folder: str, subfolders=None) -> str:
    """SHA-256 over the relative paths and contents of every file under ``folder`` (or only ``subfolders``).

    Identifies a local model folder in the manifest when there is no hub revision. Hidden files are skipped.
    """
    h = hashlib.sha256()
    roots = [folder] if not subfolders else [os.path.join(folder, s) for s in subfolders]
    files = []
    for root in roots:
        if os.path.isfile(root):
            files.append(root)
            continue
        for base, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(base, n) for n in names if not n.startswith(".")]
    for path in sorted(files):
        h.update(os.path.relpath(path, folder).replace(os.sep, "/").encode() + b"\0")
        h.update(file_digest(path).encode())
    return h.hexdigest()


def write_manifest(folder: str, manifest: dict) -> str:
    """Write ``manifest.json`` (sorted keys, indented) and return its path."""
    path = os.path.join(folder, MANIFEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def read_manifest(folder: str) -> dict:
    """Read and structurally check ``folder/manifest.json`` (no file checks; see :func:`load_manifest`).

    Raises
    ------
    ModelLoadError
        If the folder or its manifest is missing, unreadable, of another format or version, or incomplete.
    """
    if not folder or not os.path.isdir(folder):
        what = "is a file, not a folder" if folder and os.path.exists(folder) else "does not exist"
        raise ModelLoadError(f"engine folder {folder!r} {what}; create one with "
                             "`diffcut export --model M --format onnx --out DIR`")
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{folder!r} is not an exported encoder folder: it has no {MANIFEST_NAME} "
                             "(create one with `diffcut export --model M --format onnx --out DIR`)")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path!r} is unreadable or not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelLoadError(f"{path!r} is not a diffcut-engine export manifest (format "
                             f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{path!r} has format_version {manifest.get('format_version')!r}; this version of "
                             f"diffcut-engine reads version {FORMAT_VERSION}: export the model again")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelLoadError(f"{path!r} is incomplete: missing {', '.join(missing)}; export the model again")
    problem = _structure_problem(manifest)
    if problem:
        raise ModelLoadError(f"{path!r} is damaged: {problem}; export the model again")
    return manifest


def _structure_problem(manifest: dict) -> Optional[str]:
    """What is malformed in the entries the backends read (None if nothing): each one's type and shape."""
    for key in ("model", "method", "input", "output", "batch", "tolerance"):
        if not isinstance(manifest[key], dict):
            return f"its {key!r} entry is {type(manifest[key]).__name__}, not a table"
    model, method, inp = manifest["model"], manifest["method"], manifest["input"]
    if not isinstance(model.get("id"), str) or not model["id"]:
        return "model.id is not a model name"
    if not isinstance(model.get("family"), str):
        return "model.family is not a name"
    if model.get("stride") is not None and not (is_int(model["stride"]) and model["stride"] > 0):
        return f"model.stride is {model.get('stride')!r}, not a positive int"
    size = inp.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)):
        return f"input.size is {size!r}, not [height, width] in pixels"
    for key in ("timestep", "seed"):
        if not is_int(method.get(key)):
            return f"method.{key} is {method.get(key)!r}, not an int"
    if manifest["dtype"] not in ("fp32", "fp16"):
        return f"dtype is {manifest['dtype']!r}, not 'fp32' or 'fp16'"
    shape = manifest["output"].get("shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 4
                                  and all(is_int(v) and v > 0 for v in shape[1:])):
        return f"output.shape is {shape!r}, not [batch, grid height, grid width, channels]"
    return None


def check_files(folder: str, manifest: dict, *, verify_hashes: bool = True) -> None:
    """Check that every file the manifest lists is present with its recorded size (and SHA-256).

    Raises
    ------
    ModelLoadError
        Naming the first missing, truncated or modified file.
    """
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ModelLoadError(f"{folder!r}: the manifest's \"files\" entry is {type(files).__name__}, not a table "
                             "of files; the manifest is damaged: export the model again")
    if ONNX_NAME not in files:
        raise ModelLoadError(f"{folder!r}: the manifest lists no {ONNX_NAME}; export the model again")
    root = os.path.realpath(folder)
    for name, facts in sorted(files.items()):
        if not isinstance(name, str) or not name or "\0" in name:
            raise ModelLoadError(f"{folder!r}: the manifest lists the file name {name!r}; the manifest is damaged: "
                                 "export the model again")
        path = os.path.join(folder, name)
        # a listed file must stay inside the folder: no absolute paths, no "..", no link pointing out of it
        if os.path.isabs(name) or os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise ModelLoadError(f"{folder!r}: the manifest lists {name!r}, a path outside the engine folder; "
                                 "refusing to read it (the manifest is damaged or was edited)")
        if not isinstance(facts, dict) or not isinstance(facts.get("bytes"), int) or \
                not isinstance(facts.get("sha256"), str):
            raise ModelLoadError(f"{folder!r}: the manifest's entry for {name!r} has no byte count and SHA-256; "
                                 "the manifest is damaged: export the model again")
        if not os.path.isfile(path):
            raise ModelLoadError(f"{folder!r} is incomplete: {name} is missing (copy the whole folder, or "
                                 "export again)")
        size = os.path.getsize(path)
        if size != facts["bytes"]:
            raise ModelLoadError(f"{path!r} has {size} bytes but the manifest records {facts['bytes']}: the file "
                                 "is truncated or was replaced; copy it again or export again")
        if verify_hashes and file_digest(path) != facts["sha256"]:
            raise ModelLoadError(f"{path!r} does not match the SHA-256 in the manifest: the file is corrupt or "
                                 "was replaced; copy it again or export again")


def load_manifest(folder: str, *, expect: Optional[dict] = None, verify_hashes: bool = True) -> dict:
    """Read, check and return the manifest of an exported encoder folder.

    Parameters
    ----------
    folder : str
        A folder written by ``diffcut export``.
    expect : dict, optional
        What the caller needs, any of ``model`` (hub id or folder), ``size`` ((height, width)), ``timestep``,
        ``seed``, ``dtype`` (``"fp32"``/``"fp16"``; ``"auto"`` accepts either); ``None`` values are not checked.
    verify_hashes : bool
        Also compare each file's SHA-256 (sizes are always compared).

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    ModelLoadError
        If the folder is not a complete, intact export, or was exported for something other than ``expect``.
    """
    manifest = read_manifest(folder)
    check_files(folder, manifest, verify_hashes=verify_hashes)
    for problem in mismatches(manifest, expect or {}):
        raise ModelLoadError(f"engine folder {folder!r} does not fit this configuration: {problem}; export again "
                             "with matching options or change the configuration")
    return manifest


def mismatches(manifest: dict, expect: dict) -> list:
    """Human-readable differences between what a manifest was exported for and ``expect`` (see load_manifest)."""
    out = []
    model = expect.get("model")
    if model is not None and not _same_model(model, manifest["model"]):
        out.append(f"it was exported from model {manifest['model']['id']!r}, not {model!r}")
    size = expect.get("size")
    if size is not None and tuple(size) != tuple(manifest["input"]["size"]):
        h, w = manifest["input"]["size"]
        out.append(f"it was exported for {w}x{h} px input (width x height), not {size[1]}x{size[0]}")
    for key in ("timestep", "seed"):
        value = expect.get(key)
        if value is not None and value != manifest["method"][key]:
            out.append(f"it was exported with {key}={manifest['method'][key]}, not {value}")
    dtype = expect.get("dtype")
    if dtype not in (None, "auto") and dtype != manifest["dtype"]:
        out.append(f"it was exported in {manifest['dtype']}, not {dtype}")
    return out


def _same_model(model: str, recorded: dict) -> bool:
    if model == recorded.get("id"):
        return True
    # A local folder may be given by another spelling of the same path.
    path = os.path.abspath(os.path.expanduser(model))
    return bool(recorded.get("path")) and path == recorded.get("path")


def apply_manifest_defaults(options: dict) -> dict:
    """Fill ``model``, ``size``, ``timestep`` and ``seed`` of EngineConfig options from an engine folder.

    For ``backend="onnx"`` or ``"tensorrt"`` with an ``engine_dir``, options left out (or ``None``) take the
    exported folder's values, so ``Engine.from_pretrained(backend="onnx", engine_dir=DIR)`` needs nothing else.
    Options given explicitly are kept and checked against the folder when the encoder loads.

    Returns
    -------
    dict
        A new options dict.
    """
    options = dict(options)
    if options.get("backend") not in EXPORTED_BACKENDS:
        return options
    folder = options.get("engine_dir")
    if not folder:
        raise InputError(f"backend={options['backend']!r} needs engine_dir, a folder written by `diffcut export`")
    manifest = read_manifest(os.fspath(folder))
    defaults = {"model": manifest["model"]["id"], "size": tuple(manifest["input"]["size"]),
                "timestep": manifest["method"]["timestep"], "seed": manifest["method"]["seed"]}
    for key, value in defaults.items():
        if options.get(key) is None:
            options[key] = value
    return options


__all__ = ["MANIFEST_NAME", "FORMAT", "FORMAT_VERSION", "ONNX_NAME", "CONSTANTS_NAME", "EXPORTED_BACKENDS",
           "file_digest", "describe_files", "folder_digest", "write_manifest", "read_manifest", "check_files",
           "load_manifest", "mismatches", "apply_manifest_defaults"]
