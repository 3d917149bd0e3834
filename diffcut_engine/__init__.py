"""diffcut-engine: zero-shot image segmentation with diffusion features.

Implements DiffCut (Couairon et al., NeurIPS 2024, arXiv:2406.02842): diffusion UNet encoder features, a dense
cosine affinity raised to alpha, recursive two-way Normalized Cut, concept assignment and PAMR refinement.
"""

from ._version import __version__
from .config import EngineConfig
from .errors import (
    BackendUnavailableError,
    BatchError,
    DiffCutError,
    ExportError,
    InputError,
    ModelLoadError,
)

__all__ = [
    "__version__",
    "Engine",
    "EngineConfig",
    "Segmentation",
    "SegmentResult",
    "PreparedImage",
    "segment",
    "DiffCutError",
    "InputError",
    "ModelLoadError",
    "BackendUnavailableError",
    "ExportError",
    "BatchError",
]


def __getattr__(name):
    # The engine pulls in torch; keep `import diffcut_engine` (config, errors, graph) light until it is needed.
    if name in ("Engine", "segment"):
        from . import engine

        return getattr(engine, name)
    if name in ("Segmentation", "SegmentResult", "PreparedImage"):
        from . import result

        return getattr(result, name)
    raise AttributeError(f"module 'diffcut_engine' has no attribute {name!r}")
