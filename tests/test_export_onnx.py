"""ONNX export and the onnxruntime backend on the tiny SDXL-type and SD 1.x-type pipelines (CPU, offline).

The exported folders come from the session fixtures ``tiny_sdxl_onnx`` (128x96 px, constants baked) and
``tiny_sd_onnx`` (64 px, constants as inputs, external data) in conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from diffcut_engine import Engine, EngineConfig  # noqa: E402
from diffcut_engine.cli import main  # noqa: E402
from diffcut_engine.encoders import artifacts  # noqa: E402
from diffcut_engine.encoders.onnx import OnnxEncoder  # noqa: E402
from diffcut_engine.encoders.onnx_export import export_onnx, parse_batch_range  # noqa: E402
from diffcut_engine.errors import BackendUnavailableError, InputError, ModelLoadError  # noqa: E402
from tiny_models import random_pixels  # noqa: E402




@pytest.fixture(params=["sdxl", "sd"])
def family(request):
    return request.param


@pytest.fixture
def exported(family, request):
    """(torch encoder, exported folder, (height, width)) of one tiny family."""
    size = {"sdxl": (96, 128), "sd": (64, 64)}[family]
    return (request.getfixturevalue(f"tiny_{family}_encoder"), request.getfixturevalue(f"tiny_{family}_onnx"),
            size)


@pytest.fixture
def damaged(tiny_sdxl_onnx, tmp_path):
    """A private copy of the SDXL export, free to break."""
    return str(shutil.copytree(tiny_sdxl_onnx, tmp_path / "copy"))


# ------------------------------------------------------------------------------------------------------------
# Parity with the PyTorch encoder
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_features_match_torch(exported, batch):
    encoder, folder, (h, w) = exported
    runner = OnnxEncoder(folder, device="cpu")
    pixels = random_pixels(batch, h, w, seed=batch)  # batch 3: the graph was traced with 2, the axis is dynamic
    ref = encoder.encode(pixels)
    got = runner.encode(pixels)
    assert got.shape == ref.shape == (batch, h // 32, w // 32, ref.shape[-1])
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert float((got - ref).abs().max()) < 1e-4
    np.testing.assert_allclose(got.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    assert runner.family == encoder.family and runner.stride == 32


def test_engine_labels_identical(tiny_sdxl_encoder, tiny_sdxl_path, tiny_sdxl_onnx):
    rng = np.random.default_rng(3)
    image = np.zeros((90, 120, 3), np.uint8)
    image[:, :50], image[:, 50:] = (220, 40, 40), (30, 80, 230)
    image[30:60, 70:100] = (40, 200, 60)
    image = (image + rng.integers(0, 25, image.shape)).astype(np.uint8)
    # refine=False: the 3x3 median filter of the refinement works on the numeric segment ids (as the official
    # code), so it is only comparable between runs that number the segments the same way (see below).
    # compat="clean": under the official zero-row rule (the default) the node left out is the one holding the
    # exact minimum of W, and on these 12 random-weight tokens two near-equal minima swap with 1e-5 feature
    # differences; this test is about the encoders, not that rule.
    reference = Engine(EngineConfig(model=tiny_sdxl_path, size=(96, 128), device="cpu", refine=False,
                                    compat="clean"), encoder=tiny_sdxl_encoder)
    onnx_engine = Engine.from_pretrained(backend="onnx", engine_dir=tiny_sdxl_onnx, device="cpu", refine=False,
                                         compat="clean")
    assert isinstance(onnx_engine.encoder, OnnxEncoder)
    # model, size, timestep and seed come from the folder
    cfg = onnx_engine.config
    assert (cfg.model, cfg.size, cfg.timestep, cfg.seed) == (tiny_sdxl_path, (96, 128), 50, 42)
    for tau in (0.2, 0.3, 0.5):
        a = reference.segment(image, tau=tau, return_features=True)
        b = onnx_engine.segment(image, tau=tau, return_features=True)
        assert np.abs(a.features - b.features).max() < 1e-4
        assert a.num_segments == b.num_segments > 1
        # The same segments. Their ids can differ: on these random weights some splits separate two tokens
        # whose Fiedler vector is (x, -x), whose sign (and so which side is numbered first) follows rounding.
        ids = _partition_map(a.grid_labels, b.grid_labels)
        # Pixels: the same, up to argmax near-ties of the concept scores (one pixel in 10^4 here).
        same = np.vectorize(ids.get)(a.labels) == b.labels
        assert same.mean() > 0.999


def _partition_map(a, b) -> dict:
    """The id bijection between two labelings of the same partition (fails if the partitions differ)."""
    pairs = dict(zip(a.ravel().tolist(), b.ravel().tolist()))
    assert len(set(zip(a.ravel().tolist(), b.ravel().tolist()))) == len(pairs) == len(set(pairs.values())), \
        "the segments differ, not only their ids"
    return pairs


def test_onnx_backend_loads_no_diffusers_weights(tiny_sd_onnx, monkeypatch):
    import diffusers

    from diffcut_engine.encoders.diffusion import DiffusionEncoder

    def forbidden(*args, **kwargs):
        raise AssertionError("diffusers weights were loaded")

    monkeypatch.setattr(DiffusionEncoder, "from_pretrained", forbidden)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", forbidden)
    engine = Engine.from_pretrained(backend="onnx", engine_dir=tiny_sd_onnx, device="cpu")
    assert engine.encoder.family == "sd" and engine.tau == 0.2  # the SD 1.x preset, from the manifest's family
    seg = engine.segment(np.full((64, 64, 3), 128, np.uint8))
    assert seg.labels.shape == (64, 64)


def test_constants_as_inputs_are_fed_from_constants_npz(tiny_sd_onnx, tiny_sd_encoder):
    manifest = artifacts.read_manifest(tiny_sd_onnx)
    assert manifest["constants"] == "inputs"
    assert [i["name"] for i in manifest["constant_inputs"]] == ["noise", "prompt_embeds"]
    with np.load(os.path.join(tiny_sd_onnx, artifacts.CONSTANTS_NAME)) as data:
        np.testing.assert_array_equal(data["noise"], tiny_sd_encoder.noise((8, 8)).numpy())
    # a different noise changes the features: the input is really used
    runner = OnnxEncoder(tiny_sd_onnx, device="cpu")
    pixels = random_pixels(1, 64, 64)
    base = runner.encode(pixels)
    runner._constants["noise"] = runner._constants["noise"] * 0
    assert float((runner.encode(pixels) - base).abs().max()) > 1e-3


def test_session_options(tiny_sd_onnx):
    runner = OnnxEncoder(tiny_sd_onnx, device="cpu", threads=1, graph_optimization="basic")
    assert runner.providers == ["CPUExecutionProvider"]
    assert runner.describe()["backend"] == "onnx"
    with pytest.raises(InputError, match="graph_optimization"):
        OnnxEncoder(tiny_sd_onnx, device="cpu", graph_optimization="max")
    with pytest.raises(InputError, match="threads"):
        OnnxEncoder(tiny_sd_onnx, device="cpu", threads=0)


def test_cuda_provider_missing_is_backend_unavailable(tiny_sd_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(BackendUnavailableError, match="onnxruntime"):
        OnnxEncoder(tiny_sd_onnx, device="cpu", providers=["cuda"])


# ------------------------------------------------------------------------------------------------------------
# Manifest
# ------------------------------------------------------------------------------------------------------------

def test_manifest_is_complete(tiny_sdxl_onnx, tiny_sdxl_path, tiny_sdxl_encoder):
    m = artifacts.read_manifest(tiny_sdxl_onnx)
    assert set(artifacts.REQUIRED_KEYS) <= set(m)
    assert m["model"]["id"] == tiny_sdxl_path and m["model"]["family"] == "sdxl"
    assert m["model"]["folder_sha256"] == artifacts.folder_digest(
        tiny_sdxl_path, ["model_index.json", "scheduler", "text_encoder", "text_encoder_2", "tokenizer",
                         "tokenizer_2", "unet", "vae"])
    assert m["model"]["hook_path"] == tiny_sdxl_encoder.hook_path
    assert m["input"]["size"] == [96, 128] and m["input"]["shape"] == ["batch", 3, 96, 128]
    assert m["output"]["shape"] == ["batch", 3, 4, 64]
    assert m["batch"] == {"min": 1, "opt": 4, "max": 4, "dynamic_axis": 0}
    assert m["dtype"] == "fp32" and m["precision"]["vae"] == "fp32" and m["constants"] == "baked"
    assert m["method"]["timestep"] == 50 and m["method"]["seed"] == 42 and m["method"]["noise_generator"] == "cpu"
    assert m["opset"] >= 17
    for dist in ("torch", "diffusers", "onnx", "onnxruntime", "diffcut-engine"):
        assert m["exporter"][dist]
    tol = m["tolerance"]
    assert tol["measured"] and tol["passed"] and tol["max_abs"] < 1e-4 and tol["min_cosine"] > 0.9999
    assert m["external_data"] is False and sorted(m["files"]) == ["model.onnx"]
    for name, facts in m["files"].items():
        path = os.path.join(tiny_sdxl_onnx, name)
        assert os.path.getsize(path) == facts["bytes"] and artifacts.file_digest(path) == facts["sha256"]
    # the graph's real signature: dynamic batch, static everything else
    (inp,), (out,) = m["graph"]["inputs"], m["graph"]["outputs"]
    assert inp["name"] == "pixels" and isinstance(inp["shape"][0], str) and inp["shape"][1:] == [3, 96, 128]
    assert out["name"] == "features" and out["shape"][1:] == [3, 4, 64]


def test_external_data_export(tiny_sd_onnx):
    m = artifacts.read_manifest(tiny_sd_onnx)
    assert m["external_data"] is True
    assert sorted(m["files"]) == ["constants.npz", "model.onnx", "model.onnx.data"]
    assert m["files"]["model.onnx.data"]["bytes"] > m["files"]["model.onnx"]["bytes"]


def test_parse_batch_range():
    assert parse_batch_range(None) == (1, 1)
    assert parse_batch_range(8) == (1, 8)
    assert parse_batch_range("2..8") == parse_batch_range("2-8") == (2, 8)
    for bad in ("0", "8..2", "x", 0, True):
        with pytest.raises(InputError):
            parse_batch_range(bad)


def test_export_refuses_bad_options(tiny_sd_encoder, tiny_sd_onnx, tmp_path):
    with pytest.raises(InputError, match="not empty"):
        export_onnx(None, tiny_sd_onnx, size=64, encoder=tiny_sd_encoder, exporter="torchscript")
    with pytest.raises(InputError, match="multiple of 32"):
        export_onnx(None, tmp_path / "x", size=48, encoder=tiny_sd_encoder, exporter="torchscript")
    with pytest.raises(InputError, match="constants"):
        export_onnx(None, tmp_path / "x", size=64, encoder=tiny_sd_encoder, constants="folded")
    with pytest.raises(InputError, match="exporter"):
        export_onnx(None, tmp_path / "x", size=64, encoder=tiny_sd_encoder, exporter="jit")
    assert not os.path.exists(tmp_path / "x")


# ------------------------------------------------------------------------------------------------------------
# Damaged or mismatched folders are refused
# ------------------------------------------------------------------------------------------------------------

def test_missing_folder_or_manifest(tmp_path, damaged):
    with pytest.raises(ModelLoadError, match="does not exist"):
        OnnxEncoder(str(tmp_path / "nowhere"), device="cpu")
    (tmp_path / "a_file").write_text("x")   # an existing file is named as such, not as missing
    with pytest.raises(ModelLoadError, match="is a file, not a folder"):
        OnnxEncoder(str(tmp_path / "a_file"), device="cpu")
    os.remove(os.path.join(damaged, "manifest.json"))
    with pytest.raises(ModelLoadError, match="no manifest.json"):
        OnnxEncoder(damaged, device="cpu")


def test_truncated_or_modified_file(damaged):
    path = os.path.join(damaged, "model.onnx")
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        OnnxEncoder(damaged, device="cpu")
    with open(path, "wb") as fh:  # same size, one byte changed
        fh.write(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    with pytest.raises(ModelLoadError, match="SHA-256"):
        OnnxEncoder(damaged, device="cpu")


def test_missing_external_data(tiny_sd_onnx, tmp_path):
    folder = shutil.copytree(tiny_sd_onnx, tmp_path / "copy")
    os.remove(folder / "model.onnx.data")
    with pytest.raises(ModelLoadError, match="model.onnx.data is missing"):
        OnnxEncoder(str(folder), device="cpu")


def test_manifest_of_another_export(damaged):
    path = os.path.join(damaged, "manifest.json")
    m = json.load(open(path))
    m["input"]["size"] = [64, 64]
    json.dump(m, open(path, "w"))
    with pytest.raises(ModelLoadError, match="different exports"):
        OnnxEncoder(damaged, device="cpu")
    m["format_version"] = 99
    json.dump(m, open(path, "w"))
    with pytest.raises(ModelLoadError, match="format_version"):
        OnnxEncoder(damaged, device="cpu")


@pytest.mark.parametrize("path, value, message", [
    (("input", "size"), "x", "input.size"), (("input", "size"), [64], "input.size"),
    (("input", "size"), [0, 64], "input.size"), (("input", "size"), [64.0, 64], "input.size"),
    (("method", "seed"), "42", "method.seed"), (("method", "timestep"), None, "method.timestep"),
    (("model",), ["tiny"], "'model' entry"), (("model", "id"), 7, "model.id"),
    (("model", "stride"), -8, "model.stride"), (("dtype",), "fp64", "dtype"), (("batch",), 1, "'batch' entry"),
    (("output", "shape"), 5, "output.shape"), (("output", "shape"), ["batch", 4, "x", 64], "output.shape"),
])
def test_malformed_manifest_entries_are_refused_in_one_line(damaged, path, value, message):
    # a manifest that parses but whose entries have the wrong type or shape: a ModelLoadError naming the entry
    # (a malformed input.size raised "ValueError: not enough values to unpack" from the configuration check)
    manifest_path = os.path.join(damaged, "manifest.json")
    m = json.load(open(manifest_path))
    target = m
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    json.dump(m, open(manifest_path, "w"))
    with pytest.raises(ModelLoadError, match="is damaged") as err:
        OnnxEncoder(damaged, device="cpu")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ({"size": 256}, "exported for 128x96"),
    ({"model": "someone/other-model"}, "exported from model"),
    ({"timestep": 100}, "timestep=50"),
    ({"seed": 0}, "seed=42"),
    ({"dtype": "fp16"}, "exported in fp32"),
])
def test_configuration_mismatch(tiny_sdxl_onnx, override, message):
    with pytest.raises(ModelLoadError, match=message):
        Engine.from_pretrained(backend="onnx", engine_dir=tiny_sdxl_onnx, device="cpu", **override)


def test_wrong_pixel_size_is_input_error(tiny_sdxl_onnx):
    runner = OnnxEncoder(tiny_sdxl_onnx, device="cpu")
    with pytest.raises(InputError, match="exported for 128x96"):
        runner.encode(random_pixels(1, 128, 128))


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_export_then_segment(tiny_sd_path, tmp_path, capsys):
    """The default exporter (dynamo, ~30 s here; the fixtures use the faster TorchScript one), end to end."""
    pytest.importorskip("onnxscript")
    out = tmp_path / "engine"
    code = main(["export", "--model", tiny_sd_path, "--format", "onnx", "--out", str(out), "--size", "64",
                 "--batch", "2"])
    stdout = capsys.readouterr().out
    assert code == 0 and "max |onnx - torch|" in stdout
    m = artifacts.read_manifest(str(out))
    assert m["batch"]["max"] == 2 and m["exporter"]["method"] == "torch.onnx.export(dynamo=True)"
    assert m["tolerance"]["passed"] and m["tolerance"]["max_abs"] < 1e-4
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)
    code = main(["segment", str(image), "-o", str(tmp_path / "seg"), "--backend", "onnx", "--engine-dir",
                 str(out), "--device", "cpu", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "onnx" in captured.err and (tmp_path / "seg" / "img_labels.png").exists()
    # a size the folder was not exported for: one error line, exit code 2
    code = main(["segment", str(image), "-o", str(tmp_path / "seg2"), "--backend", "onnx", "--engine-dir",
                 str(out), "--size", "128", "-q"])
    assert code == 2 and "exported for 64x64" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# Every variant (fp32/fp16, constants baked/as inputs, both exporters) is a valid graph that onnxruntime runs
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sdxl_fp16_encoder(tiny_sdxl_path):
    from diffcut_engine.encoders.diffusion import DiffusionEncoder

    return DiffusionEncoder.from_pretrained(tiny_sdxl_path, device="cpu", dtype="fp16")


def _variant(exporter):
    marks = [pytest.mark.slow] if exporter == "dynamo" else []
    return [pytest.param(exporter, dtype, constants, marks=marks, id=f"{exporter}-{dtype}-{constants}")
            for dtype in ("fp32", "fp16") for constants in ("baked", "inputs")]


@pytest.mark.parametrize("exporter, dtype, constants", _variant("torchscript") + _variant("dynamo"))
def test_every_export_variant_is_valid_and_close(exporter, dtype, constants, tiny_sdxl_encoder,
                                                 tiny_sdxl_fp16_encoder, tmp_path):
    """The SDXL-type UNet concatenates the pooled text embeddings with float32 time-id embeddings: the fp16
    dynamo export used to join float16 with float32 there (refused by the checker and by onnxruntime)."""
    import onnx

    from diffcut_engine.encoders.onnx_export import TOLERANCES

    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    encoder = tiny_sdxl_fp16_encoder if dtype == "fp16" else tiny_sdxl_encoder
    out = tmp_path / "engine"
    m = export_onnx(None, out, size=64, encoder=encoder, exporter=exporter, constants=constants)
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    assert m["dtype"] == dtype and m["constants"] == constants
    assert m["tolerance"]["measured"] and m["tolerance"]["passed"]
    assert m["tolerance"]["provider"] == "CPUExecutionProvider"
    runner = OnnxEncoder(str(out), device="cpu")
    pixels = random_pixels(2, 64, 64, seed=7)
    got = runner.encode(pixels)
    # The stated bound against the PyTorch encoder of the same precision ...
    assert float((got - encoder.encode(pixels).float()).abs().max()) <= TOLERANCES[dtype]
    # ... and, for fp16, against the fp32 encoder (the reference the method is defined by).
    assert float((got - tiny_sdxl_encoder.encode(pixels)).abs().max()) <= TOLERANCES["fp16"]


def test_export_failing_the_full_check_fails(tiny_sd_encoder, tmp_path, monkeypatch):
    """A graph whose declared types contradict its nodes: the export raises and leaves nothing behind."""
    import onnx

    from diffcut_engine.encoders import onnx_export
    from diffcut_engine.errors import ExportError

    real = onnx_export._export_graph

    def broken(module, args, input_names, opset, exporter, path, *rest):
        weights = real(module, args, input_names, opset, exporter, path, *rest)
        proto = onnx.load(path)
        proto.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16  # the graph computes float32
        onnx.save(proto, path)
        return weights

    monkeypatch.setattr(onnx_export, "_export_graph", broken)
    with pytest.raises(ExportError, match="full check"):
        export_onnx(None, tmp_path / "x", size=64, encoder=tiny_sd_encoder, exporter="torchscript", verify=False)
    assert not os.path.exists(tmp_path / "x") and os.listdir(tmp_path) == []


def test_fp16_graph_onnxruntime_refuses_is_an_error(tiny_sdxl_fp16_encoder, tmp_path, monkeypatch):
    """No more "fp16 graph not checked" warning: an fp16 graph onnxruntime cannot run fails the export."""
    from diffcut_engine.encoders import onnx as onnx_backend
    from diffcut_engine.errors import ExportError

    def refuse(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Type Error")

    monkeypatch.setattr(onnx_backend, "OnnxEncoder", refuse)
    with pytest.raises(ExportError, match="onnxruntime could not run the exported fp16 graph"):
        export_onnx(None, tmp_path / "x", size=64, encoder=tiny_sdxl_fp16_encoder, exporter="torchscript")
    assert not os.path.exists(tmp_path / "x")


def test_export_options_fail_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A malformed size, a timestep out of range and --format tensorrt without TensorRT used to fail only after
    the pipeline was loaded (and, for tensorrt, after a whole ONNX export)."""
    import importlib.util

    from diffcut_engine.encoders import onnx_export

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(onnx_export.DiffusionEncoder, "from_pretrained", no_load)
    cases = [(["--size", "64x6y"], "size must look like"), (["--timestep", "2000"], "timestep must be an integer")]
    if importlib.util.find_spec("tensorrt") is None:
        cases.append((["--format", "tensorrt"], "needs TensorRT"))
    for extra, match in cases:
        code = main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and match in err.splitlines()[0] and "Traceback" not in err
        assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="timestep"):
        export_onnx("m", str(tmp_path / "out"), timestep=-1)
    # a dangling link as the output: refused up front (it failed after the whole export, in os.replace)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    code = main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "dangling")])
    err = capsys.readouterr().err
    assert code == 2 and "symbolic link" in err.splitlines()[0] and "Traceback" not in err


def test_export_through_a_link_replaces_the_linked_folder(tiny_sd_encoder, tmp_path):
    """--out naming a link to an earlier export, with --overwrite: the export replaces the linked folder and the
    link stays (shutil.rmtree refused the link after the whole export before)."""
    real, link = tmp_path / "real", tmp_path / "link"
    export_onnx(None, real, size=64, encoder=tiny_sd_encoder, exporter="torchscript")
    first = artifacts.read_manifest(str(real))["created"]
    os.symlink(real, link)
    export_onnx(None, link, size=64, encoder=tiny_sd_encoder, exporter="torchscript", overwrite=True)
    assert os.path.islink(link) and os.path.realpath(link) == os.path.realpath(real)
    manifest = artifacts.load_manifest(str(link))
    assert manifest["created"] >= first and manifest["input"]["size"] == [64, 64]
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]


def test_manifest_file_names_with_nul_bytes_are_damage(damaged):
    """A NUL byte in a listed file name raised "ValueError: embedded null byte" from os.path.realpath."""
    manifest_path = os.path.join(damaged, "manifest.json")
    m = json.load(open(manifest_path))
    m["files"]["x\u0000y"] = {"bytes": 1, "sha256": "0" * 64}
    json.dump(m, open(manifest_path, "w"))
    with pytest.raises(ModelLoadError, match="file name") as err:
        OnnxEncoder(damaged, device="cpu")
    assert "\n" not in str(err.value)


def test_opset_beyond_the_installed_onnx_is_refused_before_the_model_loads(tmp_path):
    """--opset 99 was taken, then the exporters failed after loading and tracing the model (about 1,950 lines of IR
    on stdout with the TorchScript exporter)."""
    import onnx

    from diffcut_engine.encoders.onnx_export import export_onnx

    newest = onnx.defs.onnx_opset_version()
    for bad in (99, newest + 1, 16, True):
        with pytest.raises(InputError, match="opset must be an integer in"):
            export_onnx("no-such-org/never-loaded", str(tmp_path / "out"), opset=bad)
