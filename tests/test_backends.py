"""Backend selection and the TensorRT backend's pure-Python parts (engine key, cache, profile, batching).

TensorRT itself cannot be installed on CPU machines: its build and run are exercised by the GPU check only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import pytest

from diffcut_engine import EngineConfig
from diffcut_engine.encoders import artifacts
from diffcut_engine.encoders.tensorrt import EngineCache, TensorRTEncoder, engine_spec, plan_batches, profile_shapes
from diffcut_engine.errors import BackendUnavailableError, InputError, ModelLoadError
from diffcut_engine.utils import imports

GPU = dict(tensorrt_version="10.3.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0")


def _manifest(**changes):
    m = {
        "files": {"model.onnx": {"bytes": 10, "sha256": "a" * 64},
                  "model.onnx.data": {"bytes": 99, "sha256": "b" * 64}},
        "model": {"id": "segmind/SSD-1B", "revision": None, "commit": "c0ffee", "folder_sha256": None},
        "input": {"size": [1024, 1024]},
        "batch": {"min": 1, "opt": 8, "max": 8},
        "dtype": "fp16",
        "constant_inputs": [],
    }
    for path, value in changes.items():
        node = m
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return m


# ------------------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------------------

def test_config_backend_validation(tmp_path):
    assert EngineConfig().backend == "torch"
    cfg = EngineConfig(backend="onnx", engine_dir=tmp_path)
    assert cfg.engine_dir == str(tmp_path)
    with pytest.raises(InputError, match="unknown backend"):
        EngineConfig(backend="openvino")
    with pytest.raises(InputError, match="needs engine_dir"):
        EngineConfig(backend="onnx")
    with pytest.raises(InputError, match="torch backend"):
        EngineConfig(backend="tensorrt", engine_dir=tmp_path, backbone="efficientnet-lite0")


def test_manifest_defaults_need_an_export_folder(tmp_path):
    assert artifacts.apply_manifest_defaults({"model": "x"}) == {"model": "x"}
    with pytest.raises(InputError, match="needs engine_dir"):
        artifacts.apply_manifest_defaults({"backend": "onnx"})
    with pytest.raises(ModelLoadError, match="no manifest.json"):
        artifacts.apply_manifest_defaults({"backend": "onnx", "engine_dir": str(tmp_path)})


# ------------------------------------------------------------------------------------------------------------
# TensorRT: guarded import
# ------------------------------------------------------------------------------------------------------------

def test_tensorrt_unavailable_is_backend_unavailable_error(tmp_path, monkeypatch):
    real = imports.is_available
    monkeypatch.setattr(imports, "is_available", lambda module: False if module == "tensorrt" else real(module))
    with pytest.raises(BackendUnavailableError, match=r"pip install 'diffcut-engine\[tensorrt\]'"):
        TensorRTEncoder(str(tmp_path))
    # through the engine too, before any folder or weights are read
    from diffcut_engine import Engine

    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        Engine(EngineConfig(backend="tensorrt", engine_dir=str(tmp_path)))
    assert issubclass(BackendUnavailableError, ImportError)


# ------------------------------------------------------------------------------------------------------------
# TensorRT: engine key
# ------------------------------------------------------------------------------------------------------------

def test_engine_key_changes_with_every_input():
    base = engine_spec(_manifest(), **GPU)
    assert base.key == engine_spec(copy.deepcopy(_manifest()), **GPU).key  # deterministic
    assert base.key.startswith("fp16_1024x1024_b1-8_")
    variants = {
        "onnx file": engine_spec(_manifest(files={"model.onnx": {"bytes": 10, "sha256": "a" * 64},
                                                  "model.onnx.data": {"bytes": 99, "sha256": "c" * 64}}), **GPU),
        "model commit": engine_spec(_manifest(**{"model.commit": "beef"}), **GPU),
        "model id": engine_spec(_manifest(**{"model.id": "segmind/Segmind-Vega"}), **GPU),
        "size": engine_spec(_manifest(**{"input.size": [576, 1024]}), **GPU),
        "batch max": engine_spec(_manifest(**{"batch.max": 16}), **GPU),
        "batch min": engine_spec(_manifest(**{"batch.min": 2}), **GPU),
        "batch opt": engine_spec(_manifest(), batch=(1, 4, 8), **GPU),
        "precision": engine_spec(_manifest(dtype="fp32"), **GPU),
        "tensorrt": engine_spec(_manifest(), **{**GPU, "tensorrt_version": "10.4.0"}),
        "gpu": engine_spec(_manifest(), **{**GPU, "gpu": "NVIDIA H200"}),
        "arch": engine_spec(_manifest(), **{**GPU, "compute_capability": "8.9"}),
    }
    keys = {name: spec.key for name, spec in variants.items()}
    assert base.key not in keys.values()
    assert len(set(keys.values())) == len(keys), keys
    # the key covers every field of the spec
    fields = {f.name for f in dataclasses.fields(base)}
    assert fields == set(base.as_dict())


def test_batch_override_and_validation():
    assert engine_spec(_manifest(), batch=(2, 4), **GPU).batch == (2, 4, 4)
    for bad in ((0, 4), (4, 2), (1, 8, 4), (1,)):
        with pytest.raises(InputError):
            engine_spec(_manifest(), batch=bad, **GPU)


# ------------------------------------------------------------------------------------------------------------
# TensorRT: profile and batching
# ------------------------------------------------------------------------------------------------------------

def test_profile_shapes():
    shapes = profile_shapes(_manifest(**{"input.size": [576, 1024]}))
    assert shapes == {"pixels": ((1, 3, 576, 1024), (8, 3, 576, 1024), (8, 3, 576, 1024))}
    m = _manifest(constant_inputs=[{"name": "noise", "shape": [1, 4, 128, 128], "dtype": "float32"}])
    shapes = profile_shapes(m, batch=(2, 4, 16))
    assert shapes["pixels"][0][0] == 2 and shapes["pixels"][1][0] == 4 and shapes["pixels"][2][0] == 16
    assert shapes["noise"] == ((1, 4, 128, 128),) * 3


def test_profile_shapes_of_a_real_export(tiny_sdxl_onnx):
    onnx = pytest.importorskip("onnx")
    m = artifacts.load_manifest(tiny_sdxl_onnx)
    shapes = profile_shapes(m)
    assert shapes == {"pixels": ((1, 3, 96, 128), (4, 3, 96, 128), (4, 3, 96, 128))}
    # The ONNX TensorRT parses: valid, one dynamic axis (the batch), static features, a supported opset.
    proto = onnx.load(os.path.join(tiny_sdxl_onnx, "model.onnx"))
    onnx.checker.check_model(proto)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert isinstance(dims(inp)[0], str) and dims(inp)[1:] == [3, 96, 128]
    assert isinstance(dims(out)[0], str) and dims(out)[1:] == [3, 4, 64]
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert 17 <= max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) <= 20
    assert engine_spec(m, **GPU).precision == "fp32"


def test_plan_batches():
    assert plan_batches(3, 1, 8) == [(0, 3, 3)]
    assert plan_batches(8, 1, 8) == [(0, 8, 8)]
    assert plan_batches(19, 1, 8) == [(0, 8, 8), (8, 16, 8), (16, 19, 3)]
    assert plan_batches(1, 2, 8) == [(0, 1, 2)]            # padded up to the profile's minimum
    assert plan_batches(9, 4, 8) == [(0, 8, 8), (8, 9, 4)]
    with pytest.raises(InputError):
        plan_batches(0, 1, 8)


# ------------------------------------------------------------------------------------------------------------
# TensorRT: on-disk cache
# ------------------------------------------------------------------------------------------------------------

def test_engine_cache_roundtrip_and_invalidation(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    spec = engine_spec(_manifest(), **GPU)
    assert cache.lookup(spec) is None
    path = cache.store(spec, b"serialized engine", engine_dir="/somewhere")
    assert cache.lookup(spec) == path and open(path, "rb").read() == b"serialized engine"
    assert sorted(os.listdir(cache.root)) == sorted(os.path.basename(p) for p in cache.paths(spec))  # no temp files
    # another configuration never finds this plan
    other = engine_spec(_manifest(), **{**GPU, "gpu": "NVIDIA L4"})
    assert cache.lookup(other) is None
    # a sidecar that describes another spec (e.g. a renamed file) is not trusted
    plan, meta = cache.paths(spec)
    facts = json.load(open(meta))
    facts["spec"]["gpu"] = "NVIDIA L4"
    json.dump(facts, open(meta, "w"))
    assert cache.lookup(spec) is None
    # truncated or modified plans are rebuilt, not loaded
    cache.store(spec, b"serialized engine")
    with open(plan, "wb") as fh:
        fh.write(b"serialized")
    assert cache.lookup(spec) is None
    with open(plan, "wb") as fh:
        fh.write(b"serialized engin3")
    assert cache.lookup(spec) is None
    with open(meta, "w") as fh:
        fh.write("{not json")
    assert cache.lookup(spec) is None


def test_engine_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFCUT_TENSORRT_CACHE", str(tmp_path / "env"))
    assert EngineCache().root == str(tmp_path / "env")
    monkeypatch.delenv("DIFFCUT_TENSORRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert EngineCache().root == os.path.join(str(tmp_path / "xdg"), "diffcut-engine", "tensorrt")
    spec = engine_spec(_manifest(), **GPU)
    timing = EngineCache(tmp_path).timing_cache_path(spec)
    # one timing cache per TensorRT version and GPU, shared across models and shapes
    assert timing == EngineCache(tmp_path).timing_cache_path(engine_spec(_manifest(dtype="fp32"), **GPU))
    assert timing != EngineCache(tmp_path).timing_cache_path(
        engine_spec(_manifest(), **{**GPU, "tensorrt_version": "10.4.0"}))


# ------------------------------------------------------------------------------------------------------------
# TensorRT: supported versions, network flags and the logger's lifetime, against a stub ``tensorrt`` module
# ------------------------------------------------------------------------------------------------------------

def _stub_tensorrt(version, strongly_typed_flag=True, parse_ok=True):
    """A stand-in for the ``tensorrt`` module: just the calls :func:`build_engine` makes, recorded."""
    import enum
    import types

    calls = {}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    members = {"EXPLICIT_BATCH": 0, **({"STRONGLY_TYPED": 5} if strongly_typed_flag else {})}
    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", members)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def add_optimization_profile(self, profile):
            calls["profile"] = profile.shapes

        def create_timing_cache(self, blob):
            calls["timing_cache_in"] = blob
            return types.SimpleNamespace(serialize=lambda: b"timings")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            calls["builder_logger"] = logger

        def create_network(self, flags):
            calls["flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"plan"

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            calls["parser_logger"] = logger

        def parse_from_file(self, path):
            return parse_ok

        def get_error(self, i):
            return "unsupported op Foo"

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt, calls


def test_tensorrt_version_logic(caplog):
    from diffcut_engine.encoders.tensorrt import SUPPORTED_TENSORRT_MAJORS, check_tensorrt_version

    assert SUPPORTED_TENSORRT_MAJORS == (10, 11)
    assert check_tensorrt_version("10.3.0.26") == (10, 3)
    assert check_tensorrt_version("11.0.0") == (11, 0)
    assert check_tensorrt_version("10") == (10, 0)
    for old in ("8.6.1", "9.3.0.post12.dev1"):
        with pytest.raises(BackendUnavailableError, match=r"too old.*10\.x and 11\.x"):
            check_tensorrt_version(old)
    with pytest.raises(BackendUnavailableError, match="cannot read"):
        check_tensorrt_version("")
    caplog.clear()
    with caplog.at_level("WARNING", logger="diffcut_engine.encoders.tensorrt"):
        assert check_tensorrt_version("12.1.0") == (12, 1)
    assert "newer than" in caplog.text


@pytest.mark.parametrize("version, typed_flag, expected_flags", [
    ("10.3.0", True, 1 << 5),   # TensorRT 10: strongly typed on request
    ("11.0.0", True, 1 << 5),   # TensorRT 11 keeping the flag
    ("11.2.0", False, 0),       # TensorRT 11 without it: every network is strongly typed
])
def test_build_engine_with_stub_tensorrt(tmp_path, version, typed_flag, expected_flags):
    import gc
    import weakref

    from diffcut_engine.encoders.tensorrt import build_engine

    trt, calls = _stub_tensorrt(version, strongly_typed_flag=typed_flag)
    shapes = profile_shapes(_manifest())
    cache = tmp_path / "cache" / "timing.bin"
    assert build_engine("model.onnx", shapes, timing_cache=str(cache), workspace_bytes=1 << 30, trt=trt) == b"plan"
    assert calls["flags"] == expected_flags
    assert calls["profile"] == shapes and calls["workspace"] == 1 << 30
    assert cache.read_bytes() == b"timings" and calls["timing_cache_in"] == b""
    # one logger for the builder and the parser, still alive after the build, and the same one next time
    assert calls["builder_logger"] is calls["parser_logger"]
    ref = weakref.ref(calls.pop("builder_logger"))
    calls.pop("parser_logger")
    gc.collect()
    assert ref() is not None
    build_engine("model.onnx", shapes, trt=trt)
    assert calls["builder_logger"] is ref()


def test_build_engine_refuses_old_tensorrt_and_reports_parser_errors():
    from diffcut_engine.encoders.tensorrt import build_engine

    trt, calls = _stub_tensorrt("9.3.0")
    with pytest.raises(BackendUnavailableError, match="too old"):
        build_engine("model.onnx", profile_shapes(_manifest()), trt=trt)
    assert "flags" not in calls
    trt, _ = _stub_tensorrt("10.3.0", parse_ok=False)
    with pytest.raises(ModelLoadError, match="unsupported op Foo"):
        build_engine("model.onnx", profile_shapes(_manifest()), trt=trt)


def test_tensorrt_encoder_refuses_old_tensorrt_module(tmp_path, monkeypatch):
    import sys

    trt, _ = _stub_tensorrt("8.6.1")
    real = imports.is_available
    monkeypatch.setattr(imports, "is_available", lambda module: True if module == "tensorrt" else real(module))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(BackendUnavailableError, match="TensorRT 8.6.1 is too old"):
        TensorRTEncoder(str(tmp_path))


def test_a_tensorrt_that_fails_to_import_and_a_machine_without_cuda_are_named_before_any_export(tmp_path,
                                                                                                  monkeypatch):
    """A TensorRT install whose import raises OSError (libnvinfer missing) or RuntimeError (CUDA init) gave a raw
    traceback (only ImportError was caught); `diffcut export --format tensorrt` on a machine with TensorRT but no
    CUDA GPU ran the whole ONNX export before refusing."""
    import sys

    from diffcut_engine.cli import main

    for name, body in (("oserror", "raise OSError('libnvinfer.so.10: cannot open shared object file')"),
                       ("runtime", "raise RuntimeError('CUDA initialization failure with error: 35')"),
                       ("v10", "__version__ = '10.3.0'")):
        pkg = tmp_path / name / "tensorrt"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(body + "\n")
        monkeypatch.syspath_prepend(str(tmp_path / name))
        monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
        if name != "v10":
            with pytest.raises(BackendUnavailableError, match="installed but fails to import") as info:
                imports.require("tensorrt", "the tensorrt backend")
            assert "\n" not in str(info.value)
        elif __import__("torch").cuda.is_available():
            continue
        loaded = []
        monkeypatch.setattr("diffcut_engine.encoders.onnx_export.export_onnx",
                            lambda *a, **k: loaded.append(1), raising=True)
        code = main(["export", "--model", "no-such-org/never-loaded", "--out", str(tmp_path / f"out_{name}"),
                     "--format", "tensorrt", "--quiet"])
        assert code == 2 and not loaded, name
        monkeypatch.syspath_prepend(str(tmp_path))  # (the next fake first on the path)
        sys.path.remove(str(tmp_path / name))
