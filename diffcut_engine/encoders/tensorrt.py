"""The ``tensorrt`` backend: a TensorRT engine built from an exported ONNX folder, cached on disk.

Pieces, so that everything but the TensorRT calls runs (and is tested) without TensorRT or a GPU:

- :class:`EngineSpec` / :func:`engine_spec`: what an engine depends on (the ONNX files' SHA-256, the model, input
  size, batch range, precision, TensorRT version, GPU name and compute capability) and its cache key. TensorRT's
  own diffusion demo reuses an engine whenever a file of the right name exists; here any change of any of these
  gives another key, so a stale engine is never loaded (PERFORMANCE.md).
- :func:`profile_shapes`: the optimisation profile (min, opt, max shapes) over the folder's batch range.
- :func:`plan_batches`: how a batch outside that range is run (chunks of at most ``max``, padding up to ``min``).
- :class:`EngineCache`: ``<key>.plan`` plus ``<key>.json`` (the spec, size and SHA-256 of the plan) under a cache
  folder, written atomically; a plan whose sidecar does not match is rebuilt, not loaded. One TensorRT timing cache
  per TensorRT version and GPU speeds up rebuilds.
- :func:`build_engine` and :class:`TensorRTEncoder`: the TensorRT calls. The network is *strongly typed*: it keeps
  the ONNX graph's own types, so an ``--fp16`` export gives an fp16 UNet with the VAE still in float32 (the SDXL
  VAE overflows in float16; a weakly typed fp16 build would be free to run it in float16). Inference reads the
  pixels from and writes the features to torch CUDA tensors on torch's current stream: no host copies.

``import tensorrt`` is guarded: without it :class:`TensorRTEncoder` raises
:class:`~diffcut_engine.errors.BackendUnavailableError` with the install hint.

**Supported TensorRT versions: 10.x and 11.x** (:data:`SUPPORTED_TENSORRT_MAJORS`; the ``tensorrt`` extra pins
``>=10.0,<12``). Both have the name-based I/O API used here (``set_tensor_address``, ``execute_async_v3``) and
strongly typed networks; TensorRT 11 removed weak typing and ``BuilderFlag.FP16``, which this module never uses,
and where the ``STRONGLY_TYPED`` creation flag is gone (every network is strongly typed) none is passed. Older
versions raise :class:`~diffcut_engine.errors.BackendUnavailableError`; newer ones are tried with a warning.
None of this has run on a GPU yet (README, "GPU status").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from typing import List, Optional, Sequence, Tuple

from ..errors import BackendUnavailableError, InputError, ModelLoadError
from ..utils.imports import require
from . import artifacts
from .base import FeatureEncoder

logger = logging.getLogger(__name__)

#: Version of the cache layout; part of every key.
CACHE_FORMAT = 1

#: TensorRT major versions this module is written for (see the module notes).
SUPPORTED_TENSORRT_MAJORS = (10, 11)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Everything a built TensorRT engine depends on; :attr:`key` names it in the cache.

    Attributes
    ----------
    onnx_sha256 : str
        SHA-256 over the SHA-256 of every file of the export (graph, external weights, constants).
    model : str
        Model id with its commit or folder hash, as recorded in the manifest.
    input_shape : tuple of int
        (3, H, W) of the ``pixels`` input.
    batch : tuple of int
        (min, opt, max) batch sizes of the optimisation profile.
    precision : str
        ``"fp16"`` or ``"fp32"`` (the ONNX graph's own types; the network is strongly typed).
    tensorrt_version : str
    gpu : str
        GPU name, e.g. ``"NVIDIA H100 80GB HBM3"``.
    compute_capability : str
        e.g. ``"9.0"``.
    """

    onnx_sha256: str
    model: str
    input_shape: Tuple[int, int, int]
    batch: Tuple[int, int, int]
    precision: str
    tensorrt_version: str
    gpu: str
    compute_capability: str
    cache_format: int = CACHE_FORMAT

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_shape"], d["batch"] = list(self.input_shape), list(self.batch)
        return d

    @property
    def key(self) -> str:
        """32 hex digits of the SHA-256 of the canonical JSON of all fields, prefixed by a readable stem."""
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:32]
        h, w = self.input_shape[1:]
        return f"{self.precision}_{w}x{h}_b{self.batch[0]}-{self.batch[2]}_{digest}"


def engine_spec(manifest: dict, *, tensorrt_version: str, gpu: str, compute_capability: str,
                batch: Optional[Sequence[int]] = None) -> EngineSpec:
    """The :class:`EngineSpec` of an exported folder's manifest on one GPU with one TensorRT version.

    Parameters
    ----------
    manifest : dict
        From :func:`~diffcut_engine.encoders.artifacts.load_manifest`.
    tensorrt_version, gpu, compute_capability : str
        ``tensorrt.__version__``, ``torch.cuda.get_device_name()``, ``"major.minor"``.
    batch : (int, int) or (int, int, int), optional
        Batch range (min, max) or (min, opt, max); default the manifest's.
    """
    files = manifest["files"]
    onnx_digest = hashlib.sha256("".join(f"{name}:{files[name]['sha256']};" for name in sorted(files))
                                 .encode()).hexdigest()
    m = manifest["model"]
    model = "|".join(str(x) for x in (m.get("id"), m.get("revision"), m.get("commit"), m.get("folder_sha256")))
    h, w = manifest["input"]["size"]
    return EngineSpec(onnx_sha256=onnx_digest, model=model, input_shape=(3, int(h), int(w)),
                      batch=_batch_triple(manifest, batch), precision=manifest["dtype"],
                      tensorrt_version=str(tensorrt_version), gpu=str(gpu),
                      compute_capability=str(compute_capability))


def _batch_triple(manifest, batch) -> Tuple[int, int, int]:
    if batch is None:
        b = manifest["batch"]
        triple = (b["min"], b.get("opt", b["max"]), b["max"])
    elif len(batch) == 2:
        triple = (batch[0], batch[1], batch[1])
    elif len(batch) == 3:
        triple = tuple(batch)
    else:
        raise InputError(f"batch must be (min, max) or (min, opt, max), got {batch!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in triple) or \
            not 1 <= triple[0] <= triple[1] <= triple[2]:
        raise InputError(f"batch range must satisfy 1 <= min <= opt <= max, got {triple}")
    return tuple(int(v) for v in triple)


def profile_shapes(manifest: dict, batch: Optional[Sequence[int]] = None) -> dict:
    """Optimisation profile: ``{input name: (min shape, opt shape, max shape)}``.

    ``pixels`` varies over the batch range; constant inputs (exports with ``constants="inputs"``) are fixed.
    """
    lo, opt, hi = _batch_triple(manifest, batch)
    h, w = manifest["input"]["size"]
    shapes = {"pixels": ((lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))}
    for item in manifest.get("constant_inputs", []):
        shape = tuple(int(d) for d in item["shape"])
        shapes[item["name"]] = (shape, shape, shape)
    return shapes


def plan_batches(batch: int, lo: int, hi: int) -> List[Tuple[int, int, int]]:
    """Split ``batch`` images into engine calls that fit the profile.

    Returns
    -------
    list of (start, stop, run_size)
        Images ``start:stop`` go in one call of ``run_size`` images (``run_size > stop - start`` means the call
        is padded up to the profile's minimum by repeating the last image).
    """
    if batch < 1:
        raise InputError(f"batch must be positive, got {batch}")
    calls = []
    for start in range(0, batch, hi):
        stop = min(start + hi, batch)
        calls.append((start, stop, max(stop - start, lo)))
    return calls


class EngineCache:
    """A folder of serialized engines: ``<key>.plan`` with a ``<key>.json`` sidecar.

    Parameters
    ----------
    root : str, optional
        Default ``$DIFFCUT_TENSORRT_CACHE``, else ``$XDG_CACHE_HOME/diffcut-engine/tensorrt`` (``~/.cache/...``).
    """

    def __init__(self, root: Optional[str] = None):
        if root is None:
            root = os.environ.get("DIFFCUT_TENSORRT_CACHE") or os.path.join(
                os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                "diffcut-engine", "tensorrt")
        self.root = os.fspath(root)

    def paths(self, spec: EngineSpec) -> Tuple[str, str]:
        """(plan path, sidecar path) of ``spec``."""
        base = os.path.join(self.root, spec.key)
        return base + ".plan", base + ".json"

    def timing_cache_path(self, spec: EngineSpec) -> str:
        """Timing cache shared by every engine of one TensorRT version on one GPU model."""
        tag = hashlib.sha256(f"{spec.tensorrt_version}|{spec.gpu}|{spec.compute_capability}".encode()).hexdigest()
        return os.path.join(self.root, f"timing_{tag[:16]}.cache")

    def lookup(self, spec: EngineSpec) -> Optional[str]:
        """Path of a valid cached plan for ``spec``, or None (missing, or its sidecar does not match)."""
        plan, meta = self.paths(spec)
        if not (os.path.isfile(plan) and os.path.isfile(meta)):
            return None
        try:
            with open(meta, encoding="utf-8") as fh:
                facts = json.load(fh)
        except (OSError, ValueError):
            logger.warning("ignoring cached TensorRT engine %s: unreadable sidecar", plan)
            return None
        if facts.get("spec") != spec.as_dict():
            logger.warning("ignoring cached TensorRT engine %s: built for another configuration", plan)
            return None
        if os.path.getsize(plan) != facts.get("bytes") or artifacts.file_digest(plan) != facts.get("sha256"):
            logger.warning("ignoring cached TensorRT engine %s: truncated or modified", plan)
            return None
        return plan

    def store(self, spec: EngineSpec, plan_bytes: bytes, **extra) -> str:
        """Write a plan and its sidecar atomically; return the plan's path."""
        os.makedirs(self.root, exist_ok=True)
        plan, meta = self.paths(spec)
        _atomic_write(plan, bytes(plan_bytes))
        facts = {"spec": spec.as_dict(), "bytes": len(plan_bytes),
                 "sha256": hashlib.sha256(plan_bytes).hexdigest(), **extra}
        _atomic_write(meta, json.dumps(facts, indent=1, sort_keys=True).encode())
        return plan


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------------------------
# TensorRT calls (not run on machines without TensorRT and a GPU)
# ------------------------------------------------------------------------------------------------------------

def _require_tensorrt():
    trt = require("tensorrt", "the tensorrt backend")
    check_tensorrt_version(getattr(trt, "__version__", ""))
    return trt


def require_engine_build():
    """The ``tensorrt`` module, once TensorRT imports and torch sees a CUDA GPU (what building and running an
    engine need); :class:`BackendUnavailableError` naming what is missing. ``diffcut export --format tensorrt``
    calls it before the model loads and exports."""
    trt = _require_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("the tensorrt backend needs a CUDA GPU, and torch sees none")
    return trt


def check_tensorrt_version(version: str) -> Tuple[int, int]:
    """(major, minor) of a ``tensorrt.__version__`` string such as ``"10.3.0.26"`` or ``"11.0.0"``.

    Raises
    ------
    BackendUnavailableError
        If the version cannot be read or is older than :data:`SUPPORTED_TENSORRT_MAJORS`; a newer major
        version only logs a warning (it may work; it has not been tried).
    """
    parts = str(version).strip().split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise BackendUnavailableError(f"cannot read the TensorRT version {version!r}; the tensorrt backend "
                                      f"supports TensorRT {_supported_text()}") from None
    if major < SUPPORTED_TENSORRT_MAJORS[0]:
        raise BackendUnavailableError(f"TensorRT {version} is too old: the tensorrt backend supports TensorRT "
                                      f"{_supported_text()}; install it with: pip install 'diffcut-engine[tensorrt]'")
    if major > SUPPORTED_TENSORRT_MAJORS[-1]:
        logger.warning("TensorRT %s is newer than the versions this backend was written for (%s); trying it",
                       version, _supported_text())
    return major, minor


def _supported_text() -> str:
    return " and ".join(f"{m}.x" for m in SUPPORTED_TENSORRT_MAJORS)


def network_flags(trt) -> int:
    """Network creation flags: ``STRONGLY_TYPED`` where the enum has it (TensorRT 10; kept or default in 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


#: One forwarding logger per ``tensorrt`` module, alive as long as the process: TensorRT keeps a raw pointer to
#: the logger of every builder and runtime (a collected Python logger crashes the next message) and wants the
#: same one for all of them.
_TRT_LOGGERS: dict = {}


def _trt_logger(trt):
    """The ``trt.ILogger`` that forwards TensorRT's messages to this module's ``logging`` logger (one per
    ``tensorrt`` module, kept referenced for the life of the process)."""
    cached = _TRT_LOGGERS.get(id(trt))
    if cached is not None and cached[0] is trt:
        return cached[1]
    levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL, trt.ILogger.Severity.ERROR: logging.ERROR,
              trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.INFO,
              trt.ILogger.Severity.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            logger.log(levels.get(severity, logging.INFO), "tensorrt: %s", msg)

    instance = _Logger()
    _TRT_LOGGERS[id(trt)] = (trt, instance)
    return instance


def build_engine(onnx_path: str, shapes: dict, *, timing_cache: Optional[str] = None,
                 workspace_bytes: Optional[int] = None, trt=None) -> bytes:
    """Build a serialized engine from an ONNX graph (strongly typed network, one optimisation profile).

    Parameters
    ----------
    onnx_path : str
        ``model.onnx`` of an export folder (its external data next to it).
    shapes : dict
        From :func:`profile_shapes`.
    timing_cache : str, optional
        Timing cache file, read if present and written back after the build.
    workspace_bytes : int, optional
        Workspace memory pool limit (TensorRT's default: the GPU's memory).

    Raises
    ------
    ModelLoadError
        If the ONNX parser or the builder fails (the parser's errors are in the message).
    """
    if trt is None:
        trt = _require_tensorrt()
    else:
        check_tensorrt_version(getattr(trt, "__version__", ""))
    trt_logger = _trt_logger(trt)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT could not parse {onnx_path!r}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache:
        blob = b""
        if os.path.isfile(timing_cache):
            with open(timing_cache, "rb") as fh:
                blob = fh.read()
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    logger.info("building TensorRT engine from %s (profile %s); this takes minutes", onnx_path, shapes["pixels"])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"TensorRT failed to build an engine from {onnx_path!r} (see the tensorrt log)")
    if cache is not None:
        os.makedirs(os.path.dirname(timing_cache) or ".", exist_ok=True)
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


class TensorRTEncoder(FeatureEncoder):
    """DiffCut features from a TensorRT engine built (once, then cached) from an exported ONNX folder.

    Parameters
    ----------
    engine_dir : str
        Folder written by ``diffcut export --format onnx`` (use ``--fp16`` for an fp16 engine, and ``--batch``
        for the batch range of the optimisation profile).
    device : {"auto", "cuda", "cuda:N"}
        A CUDA device (``auto``: the current one).
    cache_dir : str, optional
        Engine cache folder (see :class:`EngineCache`).
    batch : (int, int), optional
        Batch range of the profile; default the manifest's.
    expect, verify_hashes
        As for :func:`~diffcut_engine.encoders.artifacts.load_manifest`.

    Raises
    ------
    BackendUnavailableError
        If TensorRT is not installed or no CUDA device is available.
    ModelLoadError
        If the folder is damaged or does not match ``expect``, or the build fails.
    """

    def __init__(self, engine_dir: str, *, device="auto", cache_dir: Optional[str] = None,
                 batch: Optional[Sequence[int]] = None, expect: Optional[dict] = None, verify_hashes: bool = True,
                 workspace_bytes: Optional[int] = None):
        trt = require_engine_build()
        import torch

        if device not in (None, "auto") and not str(device).startswith("cuda"):
            raise InputError(f"the tensorrt backend runs on CUDA devices only, got device={device!r}")
        self.device = torch.device("cuda" if device in (None, "auto") else device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.engine_dir = os.fspath(engine_dir)
        self.manifest = artifacts.load_manifest(self.engine_dir, expect=expect, verify_hashes=verify_hashes)
        self.size = tuple(self.manifest["input"]["size"])
        self.family = self.manifest["model"]["family"]
        self.stride = self.manifest["model"]["stride"]
        self.model = self.manifest["model"]["id"]
        self._out_tail = tuple(self.manifest["output"]["shape"][1:])
        major, minor = torch.cuda.get_device_capability(self.device)
        self.spec = engine_spec(self.manifest, tensorrt_version=trt.__version__,
                                gpu=torch.cuda.get_device_name(self.device), compute_capability=f"{major}.{minor}",
                                batch=batch)
        if self.spec.precision != "fp16":
            logger.warning("building a %s TensorRT engine: export with --fp16 for an fp16 engine",
                           self.spec.precision)
        self.cache = EngineCache(cache_dir)
        plan = self.cache.lookup(self.spec)
        with torch.cuda.device(self.device):
            if plan is None:
                data = build_engine(os.path.join(self.engine_dir, artifacts.ONNX_NAME),
                                    profile_shapes(self.manifest, self.spec.batch),
                                    timing_cache=self.cache.timing_cache_path(self.spec),
                                    workspace_bytes=workspace_bytes, trt=trt)
                plan = self.cache.store(self.spec, data, engine_dir=os.path.abspath(self.engine_dir))
                logger.info("cached TensorRT engine %s", plan)
            with open(plan, "rb") as fh:
                data = fh.read()
            # The logger, the runtime and the engine are kept referenced as long as the context that uses them.
            self._trt_logger = _trt_logger(trt)
            self._runtime = trt.Runtime(self._trt_logger)
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise ModelLoadError(f"TensorRT could not load the cached engine {plan!r}; delete it to rebuild")
            self.context = self.engine.create_execution_context()
        self._constants = self._device_constants(torch)
        self.name = f"{self.model} (tensorrt, {self.spec.precision}, {self.spec.gpu})"
        logger.info("loaded %s from %s", self.name, plan)

    def encode(self, pixels):
        """Encode images into DiffCut features (see :meth:`FeatureEncoder.encode`); batches outside the
        profile's range are split or padded (:func:`plan_batches`)."""
        import torch

        pixels = self.check_pixels(pixels).contiguous()
        if tuple(pixels.shape[-2:]) != self.size:
            h, w = self.size
            raise InputError(f"this engine was built for {w}x{h} px input (width x height), got "
                             f"{pixels.shape[-1]}x{pixels.shape[-2]}")
        b = pixels.shape[0]
        out = torch.empty((b,) + self._out_tail, dtype=torch.float32, device=self.device)
        lo, _, hi = self.spec.batch
        stream = torch.cuda.current_stream(self.device)
        for start, stop, run in plan_batches(b, lo, hi):
            chunk = pixels[start:stop]
            if run > stop - start:
                chunk = torch.cat([chunk, chunk[-1:].expand(run - (stop - start), -1, -1, -1)]).contiguous()
            target = out[start:stop] if run == stop - start else torch.empty(
                (run,) + self._out_tail, dtype=torch.float32, device=self.device)
            self.context.set_input_shape("pixels", tuple(chunk.shape))
            self.context.set_tensor_address("pixels", chunk.data_ptr())
            for name, value in self._constants.items():
                self.context.set_input_shape(name, tuple(value.shape))
                self.context.set_tensor_address(name, value.data_ptr())
            self.context.set_tensor_address("features", target.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the tensorrt log)")
            if run > stop - start:
                out[start:stop] = target[: stop - start]
        return out

    def describe(self) -> dict:
        info = super().describe()
        info.update({"backend": "tensorrt", "model": self.model, "engine_dir": self.engine_dir,
                     "precision": self.spec.precision, "batch": self.spec.batch, "cache_key": self.spec.key,
                     "tensorrt": self.spec.tensorrt_version})
        return info

    def _device_constants(self, torch) -> dict:
        names = [i["name"] for i in self.manifest.get("constant_inputs", [])]
        if not names:
            return {}
        import numpy as np

        with np.load(os.path.join(self.engine_dir, artifacts.CONSTANTS_NAME)) as data:
            dtypes = {i["name"]: i["dtype"] for i in self.manifest["constant_inputs"]}
            return {n: torch.from_numpy(data[n].astype(dtypes[n])).to(self.device).contiguous() for n in names}


__all__ = ["EngineSpec", "engine_spec", "profile_shapes", "plan_batches", "EngineCache", "build_engine",
           "TensorRTEncoder", "CACHE_FORMAT", "SUPPORTED_TENSORRT_MAJORS", "check_tensorrt_version", "network_flags"]
