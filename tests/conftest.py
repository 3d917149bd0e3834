"""Shared pytest fixtures.

Everything runs offline: the Hugging Face libraries are put in offline mode here, at import time, before any
test module imports them (huggingface_hub reads these variables once, when it is first imported).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402


# ------------------------------------------------------------------------------------------------------------
# Tiny diffusion pipelines (tests/tiny_models.py), built once per session into a temporary folder
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory) -> str:
    """Folder of a tiny random SDXL-type (SSD-1B layout) pipeline saved with ``save_pretrained``."""
    from tiny_models import make_tiny_sdxl

    return make_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> str:
    """Folder of a tiny random SD 1.x-type pipeline saved with ``save_pretrained``."""
    from tiny_models import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sdxl_encoder(tiny_sdxl_path):
    """``DiffusionEncoder`` on the tiny SDXL pipeline, CPU, float32. Shared: do not mutate it."""
    from diffcut_engine.encoders.diffusion import DiffusionEncoder

    return DiffusionEncoder.from_pretrained(tiny_sdxl_path, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_sd_encoder(tiny_sd_path):
    """``DiffusionEncoder`` on the tiny SD 1.x pipeline, CPU, float32. Shared: do not mutate it."""
    from diffcut_engine.encoders.diffusion import DiffusionEncoder

    return DiffusionEncoder.from_pretrained(tiny_sd_path, device="cpu", dtype="fp32")


# ------------------------------------------------------------------------------------------------------------
# Exported encoder folders (diffcut export), built once per session from the tiny encoders above
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_sdxl_onnx(tiny_sdxl_encoder, tmp_path_factory) -> str:
    """The tiny SDXL encoder exported to ONNX: 128x96 px (width x height), batch 1..4, constants baked in.

    Uses the TorchScript exporter (about ten times faster than the dynamo one on these models).
    """
    pytest.importorskip("onnxruntime")
    from diffcut_engine.encoders.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny_sdxl"
    export_onnx(None, out, size=(96, 128), batch=4, encoder=tiny_sdxl_encoder, exporter="torchscript")
    return str(out)


@pytest.fixture(scope="session")
def tiny_sd_onnx(tiny_sd_encoder, tmp_path_factory) -> str:
    """The tiny SD 1.x encoder exported to ONNX: 64 px, constants kept as inputs, weights as external data."""
    pytest.importorskip("onnxruntime")
    from diffcut_engine.encoders.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny_sd"
    export_onnx(None, out, size=64, batch="1..2", encoder=tiny_sd_encoder, exporter="torchscript",
                constants="inputs", external_data=True)
    return str(out)


# ------------------------------------------------------------------------------------------------------------
# The C++ extension (tests/test_native*.py): it must be built wherever a compiler is
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built():
    import shutil

    from diffcut_engine.graph import native

    if not native.native_available():
        if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            pytest.skip("no C++ compiler on this machine, so the install could not build diffcut_engine._native")
        pytest.fail("diffcut_engine._native is not built although a C++ compiler is present: "
                    "`pip install -e .` (or `python setup.py build_ext --inplace`) must build it")
    return True
