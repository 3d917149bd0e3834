"""What a PyPI release would ship: ``python -m build`` makes an sdist and, from it, a wheel; the wheel installed
on its own (outside this checkout) holds the compiled C++ core and every subpackage, and segments.

Built with ``--no-isolation`` from this environment (setuptools, wheel and pybind11 come with the test extras), so
the test runs offline."""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                         capture_output=True, text=True, cwd=str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return sdists[0], wheels[0]


def test_sdist_holds_the_sources_of_the_core(dist):
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("setup.py", "pyproject.toml", "README.md", "csrc/CMakeLists.txt", "csrc/src/tree.cpp",
                   "csrc/include/diffcut/diffcut.h", "diffcut_engine/__init__.py", "diffcut_engine/graph/native.py"):
        assert needed in names, needed


def test_wheel_installed_alone_has_the_core_and_segments(dist, tmp_path):
    _, wheel = dist
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(n.startswith("diffcut_engine/_native") and n.endswith((".so", ".pyd")) for n in names), names[:20]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"diffcut_engine"}
    target = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
                          str(wheel)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    smoke = (
        "import numpy as np, diffcut_engine\n"
        "from diffcut_engine import graph\n"
        "from diffcut_engine.graph import native\n"
        "from diffcut_engine.kernels import pamr_native\n"
        f"assert diffcut_engine.__file__.startswith({str(target)!r}), diffcut_engine.__file__\n"
        "assert native.native_available()\n"
        "rng = np.random.default_rng(0)\n"
        "f = np.repeat(np.repeat(rng.standard_normal((2, 2, 16)), 6, 0), 7, 1)\n"
        "f = (f + 0.1 * rng.standard_normal((12, 14, 16))).astype(np.float32)\n"
        "a = graph.recursive_ncut(f, tau=0.5, graph_backend='native')\n"
        "b = graph.recursive_ncut(f, tau=0.5, graph_backend='numpy')\n"
        "assert (a == b).all() and len(np.unique(a)) == 4, np.unique(a)\n"
        "print('ok', diffcut_engine.__version__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run([sys.executable, "-c", smoke], capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout[-2000:] + run.stderr[-2000:]
