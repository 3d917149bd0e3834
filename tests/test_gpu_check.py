"""benchmarks/gpu_check.sh: the one prepared device check. Its ``--smoke`` mode runs every step on the CPU at toy
sizes (Triton interpreter, numpy for CuPy, a tiny UNet) so that the script itself is tested before a GPU runs it;
in GPU mode on a machine without CUDA its preflight must stop at once with its documented exit code."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def _run(out, *args, timeout=280):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(sys.platform != "linux", reason="the device check is a Linux bash script")
def test_smoke_mode_runs_every_step(tmp_path):
    pytest.importorskip("triton")
    pytest.importorskip("diffusers")
    proc = _run(tmp_path, "--smoke")
    log = (tmp_path / "gpu_check.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["gpu_check.log", "results.json"]   # at most 2 files come back
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["mode"] == "smoke" and r["exit_code"] == 0
    assert r["preflight"]["exit_code"] == 0 and r["preflight"]["seconds"] < 30
    assert {k: v["status"] for k, v in r["steps"].items()} == {"triton": "ok", "graph": "ok", "encoder": "ok"}
    for case in r["steps"]["triton"]["cases"]:      # interpreted kernel: parity, symmetry, exact 0 and 1
        assert case["parity_ok"] and case["symmetric"] and case["exact_0_and_1"]
        assert case["ieee_vs_fp64_max_abs"] < 1e-5
        assert set(case["speed"]) == {"triton_ieee", "triton_tf32", "torch_reference", "numpy"}
    for grid in r["steps"]["graph"]["grids"]:         # every eigensolver gives the host's partitions
        assert set(grid["methods"]) == {"auto", "batched", "loop", "torch"}
        for m in grid["methods"].values():
            assert m["same_partitions"] == m["compared"] > 0
    runs = [x for x in r["steps"]["encoder"]["runs"] if "batch" in x]
    assert [x["batch"] for x in runs] == [1, 2] and all(x["features_finite"] for x in runs)
    assert all(0 < x["vae_share"] and x["encoder_img_per_s"] > 0 for x in runs)


@pytest.mark.skipif(sys.platform != "linux", reason="the device check is a Linux bash script")
def test_gpu_mode_without_cuda_stops_in_preflight(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _run(tmp_path, timeout=120)
    assert proc.returncode == 10, proc.stdout[-2000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["exit_code"] == 10 and "no CUDA" in r["status"] and r["steps"] == {}
    assert sorted(os.listdir(tmp_path)) == ["gpu_check.log", "results.json"]


def test_bad_usage_exit_code(tmp_path):
    assert _run(tmp_path, "--fast", timeout=30).returncode == 2


def test_gpu_extras_for_cuda_12_and_13():
    """``gpu-cu12`` / ``gpu-cu13`` pick CuPy's wheel for the CUDA major version; ``gpu`` stays (as gpu-cu12), and
    the TensorRT extra states the supported majors. Read through setuptools, which validates the table."""
    from setuptools.config.pyprojecttoml import read_configuration

    extras = read_configuration(os.path.join(ROOT, "pyproject.toml"))["project"]["optional-dependencies"]
    assert any(r.startswith("cupy-cuda12x") for r in extras["gpu-cu12"])
    assert any(r.startswith("cupy-cuda13x") for r in extras["gpu-cu13"])
    assert all(any(r.startswith("triton") for r in extras[k]) for k in ("gpu-cu12", "gpu-cu13"))
    assert extras["gpu"] == ["diffcut-engine[gpu-cu12]"]
    assert "tensorrt>=10.0,<12" in extras["tensorrt"]
