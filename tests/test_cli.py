import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffcut_engine.cli import main


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        arr = np.zeros((72, 96, 3), np.uint8)
        arr[:, : 30 + 10 * k] = (200, 40, 40)
        arr[:, 30 + 10 * k:] = (30, 90, 220)
        arr = (arr + rng.integers(0, 10, arr.shape)).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{k}.png")
    return folder


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_segment_folder_writes_outputs(image_folder, tmp_path, tiny_sdxl_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run(["segment", str(image_folder), "-o", str(out), "--model", tiny_sdxl_path,
                                "--size", "64", "--device", "cpu", "--quiet", "--save-npy", "--tau", "0.8"], capsys)
    assert code == 0, stderr
    for k in range(3):
        labels = np.array(Image.open(out / f"img{k}_labels.png"))
        assert labels.shape == (72, 96)
        np.testing.assert_array_equal(np.load(out / f"img{k}_labels.npy"), labels)
        overlay = Image.open(out / f"img{k}_overlay.png")
        assert overlay.size == (96, 72) and overlay.mode == "RGB"
    assert stdout.count(" segments at tau 0.8 -> ") == 3
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["results"]) == 3 and summary["tau"] == 0.8
    assert all(r["num_segments"] >= 1 for r in summary["results"])


def test_corrupt_file_is_reported_and_run_continues(image_folder, tmp_path, tiny_sdxl_path, capsys):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    out = tmp_path / "out"
    code, stdout, stderr = run(["segment", str(image_folder), str(tmp_path / "nope.png"), "-o", str(out),
                                "--model", tiny_sdxl_path, "--size", "64", "--device", "cpu", "-q"], capsys)
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert any("broken.jpg: cannot decode" in e for e in errors)
    assert any("nope.png: file not found" in e for e in errors)
    assert "2 of 5 inputs failed" in stderr
    assert sorted(p.name for p in out.glob("*_labels.png")) == ["img0_labels.png", "img1_labels.png",
                                                                 "img2_labels.png"]
    assert "Traceback" not in stderr


def test_fatal_errors_are_one_line_with_exit_code_2(image_folder, tmp_path, capsys):
    code, _, stderr = run(["segment", str(image_folder), "-o", str(tmp_path / "o"), "--model",
                           str(tmp_path / "no_such_model"), "--local-files-only", "-q"], capsys)
    assert code == 2
    assert stderr.splitlines()[0].startswith("error: ") and "no_such_model" in stderr.splitlines()[0]
    assert "Traceback" not in stderr
    code, _, stderr = run(["segment", str(image_folder), "-o", str(tmp_path / "o"), "--size", "1000"], capsys)
    assert code == 2 and "multiple of 32" in stderr
    # a glob that matches nothing is reported like a missing file (before any model is loaded)
    code, _, stderr = run(["segment", str(tmp_path / "empty*.png"), "-o", str(tmp_path / "o"), "--model",
                           str(tmp_path / "no_such_model")], capsys)
    assert code == 2 and "no input images" in stderr


def test_debug_shows_traceback(image_folder, tmp_path):
    with pytest.raises(Exception, match="multiple of 32"):
        main(["segment", str(image_folder), "-o", str(tmp_path / "o"), "--size", "1000", "--debug"])


def test_info(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0 and "diffcut-engine" in out and "torch" in out and "backbones:" in out
    code, out, _ = run(["info", "--json"], capsys)
    data = json.loads(out)
    assert data["packages"]["numpy"] == np.__version__ and "cuda" in data["devices"]


def test_info_reports_broken_and_deviceless_backends(tmp_path, monkeypatch, capsys):
    """A TensorRT that is installed but fails to import (a missing CUDA library) and a CuPy without a device were
    listed as usable ("tensorrt: yes"); the C++ core was not listed at all."""
    from diffcut_engine.cli.info import collect_info
    from diffcut_engine.graph import native
    from diffcut_engine.utils import imports

    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text("raise OSError('libnvinfer.so.10: cannot open shared object')\n")
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("def is_available():\n    return False\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("tensorrt", "cupy"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    imports.is_available.cache_clear()
    try:
        info = collect_info()
        assert info["backends"]["tensorrt"] is False and "libnvinfer" in info["backend_notes"]["tensorrt"]
        assert info["backends"]["cupy"] is False and "no CUDA device" in info["backend_notes"]["cupy"]
        assert info["backends"]["native"] is native.native_available()
        monkeypatch.setattr(native, "native_available", lambda: False)
        code, out, _ = run(["info"], capsys)
        assert code == 0
        assert "tensorrt: no (fails to import: OSError: libnvinfer.so.10" in out
        assert "cupy: no (installed, but no CUDA device)" in out
        assert "native: no (the C++ extension is not built)" in out
        data = json.loads(run(["info", "--json"], capsys)[1])
        assert data["backends"]["native"] is False and data["backend_notes"]["native"]
    finally:
        imports.is_available.cache_clear()


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "diffcut_engine", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("diffcut-engine ")
    proc = subprocess.run([sys.executable, "-m", "diffcut_engine"], capture_output=True, text=True)
    assert proc.returncode == 2


def test_several_taus_from_one_tree(image_folder, tmp_path, tiny_sdxl_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run(["segment", str(image_folder / "img0.png"), "-o", str(out), "--model",
                                tiny_sdxl_path, "--size", "64x96", "--device", "cpu", "-q", "--save-npy",
                                "--taus", "0.9,0.2,0.5"], capsys)
    assert code == 0, stderr
    for t in ("0.2", "0.5", "0.9"):
        assert (out / f"img0_tau{t}_labels.png").exists() and (out / f"img0_tau{t}_overlay.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [r["tau"] for r in summary["results"]] == [0.2, 0.5, 0.9]
    # each file equals a plain run at that tau
    for t in ("0.2", "0.9"):
        single = tmp_path / f"single{t}"
        assert main(["segment", str(image_folder / "img0.png"), "-o", str(single), "--model", tiny_sdxl_path,
                     "--size", "64x96", "--device", "cpu", "-q", "--save-npy", "--tau", t]) == 0
        np.testing.assert_array_equal(np.load(out / f"img0_tau{t}_labels.npy"),
                                      np.load(single / "img0_labels.npy"))
    capsys.readouterr()


@pytest.mark.parametrize("text", ["0.1,nan", "inf", "0.2,-0.1", "0", ","])
def test_taus_must_be_positive_finite_numbers(text):
    import argparse

    from diffcut_engine.cli.options import tau_list

    with pytest.raises(argparse.ArgumentTypeError, match="positive finite numbers|comma-separated"):
        tau_list(text)
    assert tau_list("0.5,0.2,0.5") == (0.2, 0.5)
