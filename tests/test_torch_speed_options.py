"""Torch backend speed options of the diffusion encoder: compile, channels-last, attention processor, CUDA graphs.

Everything here runs on the CPU with the tiny SDXL-type pipeline. No real ``torch.compile`` runs (inductor is far
too slow for the test suite): only its fallback path, with ``torch.compile`` monkeypatched.
"""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffcut_engine.config import EngineConfig  # noqa: E402
from diffcut_engine.errors import InputError  # noqa: E402
from tiny_models import random_pixels  # noqa: E402




@pytest.fixture
def fresh_encoder(tiny_sdxl_path):
    """A private encoder (the options mutate the UNet, so the shared session encoder is not used)."""
    from diffcut_engine.encoders.diffusion import DiffusionEncoder

    return DiffusionEncoder.from_pretrained(tiny_sdxl_path, device="cpu", dtype="fp32")


def test_channels_last_features_equal_default(tiny_sdxl_encoder, fresh_encoder):
    x = random_pixels()
    expected = tiny_sdxl_encoder.encode(x)
    fresh_encoder.configure_speed(channels_last=True)
    assert fresh_encoder.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    got = fresh_encoder.encode(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert fresh_encoder.describe()["channels_last"] is True


def test_attention_sdpa_matches_default(fresh_encoder):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    enc = fresh_encoder
    x = random_pixels(1)
    hooked = enc.hooked_module
    enc.configure_speed(attention="default")
    assert type(hooked.processor) is AttnProcessor
    classic = enc.encode(x)
    enc.configure_speed(attention="sdpa")
    assert type(hooked.processor) is AttnProcessor2_0
    sdpa = enc.encode(x)
    torch.testing.assert_close(sdpa, classic, atol=1e-4, rtol=0)
    assert enc.describe()["attention"] == "sdpa"


@pytest.mark.parametrize("options, match", [
    ({"compile": "fast"}, "compile mode"),
    ({"compile": True}, "compile mode"),
    ({"attention": "flash"}, "attention"),
    ({"channels_last": "yes"}, "channels_last"),
    ({"cuda_graphs": 1}, "cuda_graphs"),
    ({"cuda_graphs": True, "device": "cpu"}, "needs CUDA"),
    ({"cuda_graphs": True, "compile": "default", "device": "cuda"}, "cannot be combined"),
    ({"channels_last": True, "backbone": "efficientnet-lite0"}, "PyTorch diffusion encoder"),
    ({"compile": "default", "backend": "onnx", "engine_dir": "x"}, "PyTorch diffusion encoder"),
])
def test_config_validation(options, match):
    with pytest.raises(InputError, match=match):
        EngineConfig(**options)


def test_config_defaults_and_accepted_values():
    cfg = EngineConfig()
    assert (cfg.compile, cfg.channels_last, cfg.attention, cfg.cuda_graphs) == (None, False, "auto", False)
    for mode in ("default", "reduce-overhead", "max-autotune"):
        assert EngineConfig(compile=mode).compile == mode
    cfg = EngineConfig(channels_last=True, attention="sdpa", cuda_graphs=True, device="cuda")
    assert cfg.cuda_graphs and cfg.channels_last and cfg.attention == "sdpa"


def test_cuda_graphs_on_cpu_raise(fresh_encoder, tiny_sdxl_path, monkeypatch):
    with pytest.raises(InputError, match="needs CUDA"):
        fresh_encoder.configure_speed(cuda_graphs=True)
    # Through the config ("auto" resolves to the CPU here): the encoder refuses once the device is known.
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from diffcut_engine.encoders import load_encoder

    cfg = EngineConfig(model=tiny_sdxl_path, cuda_graphs=True, local_files_only=True, size=64)
    with pytest.raises(InputError, match="needs CUDA"):
        load_encoder(cfg)


@pytest.mark.parametrize("where", ["call", "wrap"])
def test_compile_failure_falls_back_to_eager(tiny_sdxl_encoder, fresh_encoder, monkeypatch, caplog, where):
    calls = []

    def broken_compile(module, mode=None, **kwargs):
        calls.append(mode)
        if where == "wrap":
            raise RuntimeError("torch.compile is not supported here")

        def compiled(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler found\nsecond line")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = random_pixels(1)
    expected = tiny_sdxl_encoder.encode(x)
    fresh_encoder.configure_speed(compile="max-autotune")
    with caplog.at_level(logging.WARNING, logger="diffcut_engine.encoders.speed"):
        got = fresh_encoder.encode(x)
        again = fresh_encoder.encode(x)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
    assert calls == ["max-autotune"]  # compiled once, lazily; the failure is remembered
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "torch.compile" in r.getMessage()]
    assert len(warnings) == 1
    assert "eagerly" in warnings[0].getMessage()


def test_compile_is_lazy(fresh_encoder, monkeypatch):
    calls = []

    def fake_compile(module, mode=None, **kwargs):
        calls.append(mode)
        return module  # the "compiled" module is the eager one: same output
    monkeypatch.setattr(torch, "compile", fake_compile)
    fresh_encoder.configure_speed(compile="default")
    assert calls == []
    fresh_encoder.encode(random_pixels(1))
    fresh_encoder.encode(random_pixels(1))
    assert calls == ["default"]
    assert fresh_encoder.describe()["compile"] == "default"


def test_cli_speed_options():
    from diffcut_engine.cli import build_parser, config_from_args

    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["segment", "a.png", "-o", "out"]))
    assert (cfg.compile, cfg.channels_last, cfg.attention, cfg.cuda_graphs) == (None, False, "auto", False)
    args = parser.parse_args(["segment", "a.png", "-o", "out", "--compile", "reduce-overhead", "--channels-last",
                              "--attention", "sdpa"])
    cfg = config_from_args(args)
    assert (cfg.compile, cfg.channels_last, cfg.attention) == ("reduce-overhead", True, "sdpa")
    cfg = config_from_args(parser.parse_args(["segment", "a.png", "-o", "out", "--cuda-graphs", "--device",
                                               "cuda"]))
    assert cfg.cuda_graphs
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "a.png", "-o", "out", "--compile", "fast"])


class _CPUGraph:
    """A stand-in for a captured CUDA graph: replay re-runs the function on the static inputs, in place."""

    def __init__(self, fn, static_in, static_out):
        self.fn, self.static_in, self.static_out = fn, static_in, static_out

    def replay(self):
        self.static_out.copy_(self.fn(*self.static_in))


class _CPUCapture:
    def __init__(self, device=None):
        self.captures = 0

    def capture(self, fn, static_in):
        self.captures += 1
        out = fn(*static_in)
        return _CPUGraph(fn, static_in, out), out


def test_cuda_graph_buffers_made_in_inference_mode_accept_later_calls_outside_it():
    from diffcut_engine.encoders.speed import CUDAGraphs

    capture = _CPUCapture()
    runner = CUDAGraphs(lambda x, y, z: x * 2 + y, torch.device("cpu"), capture=capture)
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(2, 3, generator=g) for _ in range(4))
    with torch.inference_mode():
        first = runner(a, b, None)  # captured here, inside inference mode (as under Engine.segment)
    second = runner(c, d, None)  # replayed outside it: the static inputs must accept copy_
    with torch.no_grad():
        third = runner(a, d, None)
    torch.testing.assert_close(first, a * 2 + b, atol=0, rtol=0)
    torch.testing.assert_close(second, c * 2 + d, atol=0, rtol=0)
    torch.testing.assert_close(third, a * 2 + d, atol=0, rtol=0)
    assert capture.captures == 1
    (_, static_in, static_out), = runner.graphs.values()
    assert not any(t.is_inference() for t in static_in if t is not None) and not static_out.is_inference()
    runner(torch.zeros(1, 3), torch.zeros(1, 3), None)  # a new shape: a second graph
    assert capture.captures == 2 and len(runner.graphs) == 2


def test_encoder_cuda_graph_path_inside_then_outside_inference_mode(tiny_sdxl_encoder, fresh_encoder, monkeypatch):
    """The encoder's CUDA-graph path, with the capture replaced by the CPU stand-in: same features as eager,
    first inside inference mode, then outside it."""
    from diffcut_engine.encoders import diffusion, speed

    monkeypatch.setattr(diffusion, "check_speed_options", lambda **kw: None)  # it refuses cuda_graphs on a CPU
    monkeypatch.setattr(speed, "_CUDACapture", _CPUCapture)
    fresh_encoder.configure_speed(cuda_graphs=True)
    x, y = random_pixels(1), random_pixels(1, seed=1)
    with torch.inference_mode():
        got_x = fresh_encoder.encode(x)
    got_y = fresh_encoder.encode(y)
    torch.testing.assert_close(got_x, tiny_sdxl_encoder.encode(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(got_y, tiny_sdxl_encoder.encode(y), atol=1e-6, rtol=0)


def test_vae_tf32_option_sets_cudnn_flag_for_the_vae_only():
    from diffcut_engine.encoders.speed import vae_precision

    before = torch.backends.cudnn.allow_tf32
    cuda = torch.device("cuda")  # the context only reads the device type; no GPU needed
    for tf32 in (False, True):
        with vae_precision(cuda, tf32=tf32):
            assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 == before
    with pytest.raises(ValueError):
        with vae_precision(cuda, tf32=False):
            raise ValueError("restored on errors too")
    assert torch.backends.cudnn.allow_tf32 == before
    with vae_precision(torch.device("cpu"), tf32=False):  # nothing changes on the CPU
        assert torch.backends.cudnn.allow_tf32 == before


def test_vae_tf32_on_the_encoder(tiny_sdxl_path, tiny_sdxl_encoder, monkeypatch):
    from diffcut_engine.encoders import diffusion
    from diffcut_engine.encoders.diffusion import DiffusionEncoder

    assert tiny_sdxl_encoder.describe()["vae_tf32"] is True  # the default: as the official code ran
    enc = DiffusionEncoder.from_pretrained(tiny_sdxl_path, device="cpu", dtype="fp32", vae_tf32=False)
    assert enc.vae_tf32 is False and enc.describe()["vae_tf32"] is False
    seen, real = [], diffusion.vae_precision

    def recording(device, *, tf32):
        seen.append(tf32)
        return real(device, tf32=tf32)

    monkeypatch.setattr(diffusion, "vae_precision", recording)
    x = random_pixels(1)
    torch.testing.assert_close(enc.encode(x), tiny_sdxl_encoder.encode(x), atol=0, rtol=0)  # no change on a CPU
    assert seen == [False, True]  # the VAE ran under each encoder's own setting
    with pytest.raises(InputError, match="vae_tf32"):
        DiffusionEncoder.from_pretrained(tiny_sdxl_path, device="cpu", dtype="fp32", vae_tf32="no")


def test_vae_tf32_from_the_engine_config_and_the_cli(tiny_sdxl_path):
    """EngineConfig(vae_tf32=False) (``--no-vae-tf32``) reaches the diffusion encoder; the default keeps TF32."""
    import argparse

    from diffcut_engine import EngineConfig
    from diffcut_engine.cli.options import add_engine_options, config_from_args
    from diffcut_engine.encoders import load_encoder

    enc = load_encoder(EngineConfig(model=tiny_sdxl_path, device="cpu", dtype="fp32", vae_tf32=False))
    assert enc.vae_tf32 is False
    assert load_encoder(EngineConfig(model=tiny_sdxl_path, device="cpu", dtype="fp32")).vae_tf32 is True
    with pytest.raises(InputError, match="vae_tf32 must be True or False"):
        EngineConfig(vae_tf32="no")
    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    assert config_from_args(parser.parse_args(["--no-vae-tf32"])).vae_tf32 is False
    assert config_from_args(parser.parse_args([])).vae_tf32 is True
