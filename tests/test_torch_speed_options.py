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
    with caplog.at_level(logging.WARNING, logger="diffcut_engine.encoders.diffusion"):
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
