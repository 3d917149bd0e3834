"""The checkout must never shadow another package's import name (issue 13).

Hugging Face's PyPI package ``kernels`` is a dependency of ``transformers``; a top-level ``kernels/`` package in the
checkout once hid it whenever Python ran from the checkout root (pytest, ``python -c``, notebooks), and diffusers
then failed to import. These tests run Python from the checkout root, as a user would.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(code: str, *, extra_path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # the checkout root first on sys.path, as with `python -c` (cwd) or pytest's rootdir insertion
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), extra_path, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_no_top_level_package_but_ours():
    """Only ``diffcut_engine`` (and the test/benchmark helpers) may be importable from the checkout root."""
    allowed = {"diffcut_engine", "tests", "benchmarks", "examples", "docs"}
    offenders = sorted(p.name for p in ROOT.iterdir()
                       if p.is_dir() and not p.name.startswith(".") and p.name not in allowed
                       and (p / "__init__.py").exists())
    assert offenders == [], f"top-level importable packages would shadow PyPI packages: {offenders}"


@pytest.mark.skipif(importlib.util.find_spec("kernels") is None,
                    reason="Hugging Face's `kernels` package is not installed (transformers < 5 does not need it)")
def test_hf_kernels_is_not_shadowed_and_diffusers_imports():
    code = ("import kernels, os; "
            "from diffusers import AutoencoderKL, UNet2DConditionModel; "
            "print(os.path.realpath(kernels.__file__))")
    proc = _run_from_root(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels_file = Path(proc.stdout.strip().splitlines()[-1])
    # CI's virtual environment lives inside the checkout (.venv): an installed package there is fine
    prefix = Path(sys.prefix).resolve()
    inside_sources = ROOT in kernels_file.parents and prefix not in kernels_file.parents
    assert not inside_sources, f"`kernels` resolved to the checkout's sources: {kernels_file}"


def test_shadowing_package_would_be_caught(tmp_path):
    """The check above can fail: a `kernels/__init__.py` first on sys.path is what `import kernels` finds."""
    fake = tmp_path / "kernels"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", "import kernels, os; print(os.path.realpath(kernels.__file__))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).parent == fake.resolve()


def test_triton_kernels_importable_from_plain_checkout():
    """``diffcut_engine.kernels.affinity`` is a real subpackage: importable with only the checkout on sys.path."""
    code = ("import diffcut_engine.kernels.affinity as k, os; "
            "print(os.path.realpath(k.__file__))")
    proc = _run_from_root(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == (ROOT / "diffcut_engine" / "kernels" / "affinity.py").resolve()


def test_import_error_of_our_own_kernel_module_surfaces(monkeypatch):
    """The device path may fall back when Triton or a GPU is missing, never when our own module is broken."""
    pytest.importorskip("torch")
    from diffcut_engine.graph import device

    import diffcut_engine.kernels as kernels_pkg

    # a broken diffcut_engine.kernels.affinity: importing it raises (also when an earlier test imported it)
    monkeypatch.delattr(kernels_pkg, "affinity", raising=False)
    monkeypatch.setitem(sys.modules, "diffcut_engine.kernels.affinity", None)
    with pytest.raises(ImportError):
        device._fused_affinity_module()


def test_wheel_ships_every_subpackage_and_nothing_else():
    """pyproject's package discovery finds every folder of ``diffcut_engine`` that holds code (a hand-kept list
    once left ``methods/`` and ``video/`` out of wheels), and no other top-level name."""
    tomllib = pytest.importorskip("tomllib")
    from setuptools import find_namespace_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = set(find_namespace_packages(where=str(ROOT), include=find["include"], exclude=find.get("exclude", ())))
    code_dirs = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "diffcut_engine").rglob("*.py")
                 if "__pycache__" not in p.parts}
    assert code_dirs - found == set(), f"subpackages missing from the wheel: {sorted(code_dirs - found)}"
    assert {name.split(".")[0] for name in found} == {"diffcut_engine"}
