"""Options of the random-walk NCut method (``method="rwncut"``, :mod:`diffcut_engine.methods.rwncut`).

Kept apart from the method's pipeline so that :mod:`diffcut_engine.config` can use them without importing torch.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import InputError

__all__ = ["RWNCutOptions"]


@dataclass(frozen=True)
class RWNCutOptions:
    """Options of ``method="rwncut"``, the random-walk NCut on self-attention.

    Each open choice of the method is an option; defaults are documented with their reasoning in
    :mod:`diffcut_engine.graph.rwncut` and :mod:`diffcut_engine.encoders.attention`.

    Parameters
    ----------
    source : {"auto", "attention", "features"}
        The transition matrix P. ``attention``: the aggregated UNet self-attention (needs the PyTorch diffusion
        backbone). ``features``: the random walk on DiffCut's feature affinity, P = D^-1 A (the lite backbone and
        the exported ONNX/TensorRT encoders, which return no attention). ``auto``: attention when available.
    extraction : {"single", "inversion"}
        One UNet call at ``timestep`` (DiffSeg), or the first ``steps`` of a ``num_inference_steps`` DDIM
        inversion with attention averaged over the visited steps.
    timestep : int
        Timestep of ``single`` (DiffSeg: 300).
    noise : bool
        ``single`` on the latent noised to ``timestep`` instead of the clean latent (DiffSeg: clean).
    steps, num_inference_steps : int
        Inversion length (10 of 50).
    layers : tuple of str, optional
        Keep self-attention layers whose module path contains one of these strings (default: all).
    factors : tuple of int, optional
        Keep layers at these grid factors relative to the latent (1, 2, 4, 8; default: all).
    resolution_weights : {"side", "uniform"}
        Per-resolution weights: proportional to the side length (DiffSeg) or equal.
    grid_factor : int, optional
        Factor of the target attention grid (default: the finest selected, e.g. 64x64 at 1024 px for SDXL).
    graph : {"flow", "symmetric", "raw", "cooccurrence", "cosine", "bhattacharyya"}
        What is cut (default ``flow``, the exact random-walk NCut).
    k : int
        Random-walk steps (P^k), default 1.
    threshold : {"tree", "random", "mean", "gap", "null", "constant"}
        Split acceptance (default ``tree``, parameter-free, chosen by measurement on the reference photos: see the
        README and benchmarks/rwncut_rules.py; ``constant`` uses the engine's ``tau``).
    blank_null : bool
        With ``threshold="tree"``: keep no split whose NCut reaches the best split of a blank image through the
        same encoder (the backbone's structureless null, computed once per input size). Default on.
    min_size : int
        Smallest segment in grid nodes a split may leave (default 16, 1/256 of a 64x64 grid).
    subgraph : {"restrict", "renormalize"}
        How a side's graph is formed in the recursion.
    labels : {"diffseg", "concept"}
        Pixel labels: segment-mean attention rows upsampled bilinearly and argmax (DiffSeg), or DiffCut's concept
        assignment; PAMR follows either when ``refine`` is on.
    """

    source: str = "auto"
    extraction: str = "single"
    timestep: int = 300
    noise: bool = False
    steps: int = 10
    num_inference_steps: int = 50
    layers: Optional[Tuple[str, ...]] = None
    factors: Optional[Tuple[int, ...]] = None
    resolution_weights: str = "side"
    grid_factor: Optional[int] = None
    graph: str = "flow"
    k: int = 1
    threshold: str = "tree"
    min_size: int = 16
    subgraph: str = "restrict"
    labels: str = "diffseg"
    blank_null: bool = True

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        choices = {"source": ("auto", "attention", "features"), "extraction": ("single", "inversion"),
                   "resolution_weights": ("side", "uniform"),
                   "graph": ("flow", "symmetric", "raw", "cooccurrence", "cosine", "bhattacharyya"),
                   "threshold": ("tree", "random", "mean", "gap", "null", "constant"),
                   "subgraph": ("restrict", "renormalize"),
                   "labels": ("diffseg", "concept")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"unknown rwncut {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        for name, lo in (("timestep", 0), ("steps", 1), ("num_inference_steps", 1), ("k", 1), ("min_size", 1)):
            v = getattr(self, name)  # numpy integers accepted (stored as int), bool refused
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise InputError(f"rwncut {name} must be an integer >= {lo}, got {v!r}")
            set_(name, int(v))
        if self.timestep >= 1000:
            raise InputError(f"rwncut timestep must be in [0, 999], got {self.timestep}")
        if self.steps > self.num_inference_steps:
            raise InputError(f"rwncut steps={self.steps} exceeds num_inference_steps={self.num_inference_steps}")
        if self.grid_factor is not None:
            if not (isinstance(self.grid_factor, numbers.Integral) and not isinstance(self.grid_factor, bool)
                    and self.grid_factor >= 1):
                raise InputError(f"rwncut grid_factor must be a positive integer, got {self.grid_factor!r}")
            set_("grid_factor", int(self.grid_factor))
        if self.layers is not None:
            set_("layers", (self.layers,) if isinstance(self.layers, str) else tuple(self.layers))
        if self.factors is not None:
            f = (self.factors,) if isinstance(self.factors, numbers.Integral) else tuple(self.factors)
            if not f or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1 for x in f):
                raise InputError(f"rwncut factors must be positive integers, got {self.factors!r}")
            set_("factors", tuple(int(x) for x in f))
        set_("noise", bool(self.noise))
        set_("blank_null", bool(self.blank_null))

    @classmethod
    def from_options(cls, **options) -> "RWNCutOptions":
        """Build from keyword options, rejecting unknown names with an :class:`InputError`."""
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown rwncut option(s): {', '.join(sorted(unknown))}")
        return cls(**options)
