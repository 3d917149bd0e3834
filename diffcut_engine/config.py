"""Engine configuration: one frozen, validated dataclass.

This module imports neither torch nor diffusers, so a configuration can be built, validated and printed anywhere.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from .errors import InputError
from .graph.validation import COMPAT_MODES, DEFAULT_COMPAT, GRAPH_BACKENDS, check_alpha, check_tau
from .methods.rwncut_options import RWNCutOptions

#: Default diffusion model of the paper (SDXL-type UNet with 1.3B parameters).
DEFAULT_MODEL = "segmind/SSD-1B"

#: Short names accepted for ``model`` (the names of the official code, ``tools/ldm.py``).
MODEL_ALIASES = {
    "SSD-1B": "segmind/SSD-1B",
    "SSD-vega": "segmind/Segmind-Vega",
    "SD1.4": "CompVis/stable-diffusion-v1-4",
}

BACKBONES = ("diffusion", "efficientnet-lite0")
RESIZE_MODES = ("resize", "center_crop")
DTYPES = ("auto", "fp32", "fp16", "bf16")
#: Encoder runtimes: the PyTorch reference, or a folder written by ``diffcut export`` run by onnxruntime or TensorRT.
BACKENDS = ("torch", "onnx", "tensorrt")
GRAPH_DEVICES = ("auto", "host", "device")
#: Segmentation methods: DiffCut (recursive NCut of feature affinities), the random-walk NCut of self-attention, or
#: AutoSC (one-shot K-way spectral clustering of DiffCut's affinity, K and alpha by an eigengap heuristic).
METHODS = ("diffcut", "rwncut", "autosc")
#: ``torch.compile`` modes accepted for ``compile`` (``None``: no compilation).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
#: Attention kernels of the truncated UNet: keep the checkpoint's processors, PyTorch SDPA, or the classic one.
ATTENTION_MODES = ("auto", "sdpa", "default")
#: Refinement presets (issue 19): where PAMR runs ("network": the encoder's input size, "output": the label size,
#: or a fixed (H, W)), its iterations and dilations. "demo" is the official notebook (the default), "eval" the
#: official evaluation (128x128), "full" the former engine default at the output size.
REFINE_PRESETS = {
    "demo": {"work_size": "network", "iters": 30, "dilations": (1, 2, 4, 8, 12, 24, 32, 64)},
    "eval": {"work_size": (128, 128), "iters": 10, "dilations": (1, 2, 4, 8)},
    "full": {"work_size": "output", "iters": 10, "dilations": (1, 2, 4, 8)},
}
DEFAULT_REFINE = "demo"
#: Bounds of explicit PAMR settings (the official ones: 30 iterations, dilations up to 64); the C++ core refuses
#: the same (csrc/src/refine.cpp, check_pamr_options).
PAMR_MAX_ITERS = 10_000
PAMR_MAX_DILATION = 32_768


def check_pamr_iters(iters) -> int:
    """PAMR's number of iterations as an int; :class:`InputError` unless an integer in [0, PAMR_MAX_ITERS]."""
    if not is_int(iters) or not 0 <= iters <= PAMR_MAX_ITERS:
        raise InputError(f"iters must be an int in [0, {PAMR_MAX_ITERS}], got {iters!r}")
    return int(iters)


def check_pamr_dilations(dilations) -> Tuple[int, ...]:
    """PAMR's dilations as a tuple of ints; :class:`InputError` unless a non-empty sequence of integers in
    [1, PAMR_MAX_DILATION]."""
    try:
        dil = tuple(dilations)
    except TypeError:
        dil = ()
    if not dil or any(not is_int(d) or not 1 <= d <= PAMR_MAX_DILATION for d in dil):
        raise InputError(f"dilations must be a non-empty sequence of ints in [1, {PAMR_MAX_DILATION}], got "
                         f"{dilations!r}")
    return tuple(int(d) for d in dil)


def pamr_reach(dilations: Tuple[int, ...], h: int, w: int) -> Tuple[int, ...]:
    """The dilations with each capped at ``max(h, w)``: a tap that far clamps to the border in both directions
    (replicate padding), as does any larger one, so the taps, and the floats, are the same; the padding then stays
    within the image's size (a dilation of 32768 padded a 10 x 10 image to 65546 x 65546)."""
    cap = max(h, w)
    return tuple(min(d, cap) for d in dilations)

#: tau presets by feature family: the paper's value for SDXL-type UNets, the author's value for SD 1.x (issue #5 of
#: the official repository), and our own for the offline backbone (chosen on scikit-image photos, see encoders/lite.py).
TAU_PRESETS = {"sdxl": 0.5, "sd": 0.2, "efficientnet-lite0": 0.08}

#: Default network input size per backbone: the paper's 1024 px for diffusion UNets (a 32x32 grid); 768 px for the
#: ImageNet CNN, chosen on scikit-image photos with reference masks (see encoders/lite.py).
SIZE_PRESETS = {"diffusion": 1024, "efficientnet-lite0": 768}

Size = Tuple[int, int]


def check_seed(seed) -> int:
    """``seed`` as an int; :class:`InputError` unless it is an integer a torch generator takes ([-2^63, 2^64 - 1])."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"seed must be an integer, got {seed!r}")
    if not -2**63 <= int(seed) < 2**64:
        raise InputError(f"seed must be in [-2^63, 2^64 - 1] (a torch generator's range), got {seed}")
    return int(seed)


def parse_size(value: Union[int, str, Tuple[int, int], list, None], *, name: str = "size",
               multiple: int = 1) -> Optional[Size]:
    """Parse ``1024``, ``"1024"``, ``"1024x576"`` (width x height) or ``(height, width)`` into ``(height, width)``.

    Strings follow the usual image convention WIDTHxHEIGHT; tuples follow the array convention (height, width).

    Raises
    ------
    InputError
        If the value cannot be parsed, is not positive, or is not a multiple of ``multiple``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError(f"{name} must be an int, 'WxH' or (height, width), got {value!r}")
    if isinstance(value, numbers.Integral):  # numpy integers too (bool refused above)
        hw = (int(value), int(value))
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x,X*]\s*(\d+)\s*)?", value)
        if not m:
            raise InputError(f"{name} must look like 1024 or 1024x576 (width x height), got {value!r}")
        w = int(m.group(1))
        h = int(m.group(2)) if m.group(2) else w
        hw = (h, w)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        hw = (int(value[0]), int(value[1]))
    else:
        raise InputError(f"{name} must be an int, 'WxH' or (height, width), got {value!r}")
    if min(hw) <= 0:
        raise InputError(f"{name} must be positive, got {value!r}")
    if multiple > 1 and (hw[0] % multiple or hw[1] % multiple):
        raise InputError(f"{name} must be a multiple of {multiple} px on both sides (one feature token per "
                         f"{multiple} px), got {hw[1]}x{hw[0]} (width x height)")
    return hw


def is_int(value) -> bool:
    """An integer option: Python or numpy integers; ``bool`` is refused (``True`` is no batch size or seed)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class EngineConfig:
    """Everything that defines a segmentation run. Frozen and validated on construction.

    Parameters
    ----------
    model : str
        Hugging Face hub id or local folder of a diffusers pipeline (SDXL-type or SD 1.x/2.x), or one of the short
        names in ``MODEL_ALIASES``. Used when ``backbone="diffusion"``. Default ``segmind/SSD-1B``.
    backbone : {"diffusion", "efficientnet-lite0"}
        Feature extractor. ``efficientnet-lite0`` runs offline from the ``[lite]`` extra.
    revision : str, optional
        Hub revision (branch, tag or commit) of ``model``.
    size : int or (int, int) or str, optional
        Network input size, ``(height, width)`` or ``"WxH"``; multiple of 32. ``None`` takes the backbone's
        preset: 1024 for diffusion models (the paper's, a 32x32 grid), 768 for ``efficientnet-lite0``.
    resize_mode : {"resize", "center_crop"}
        ``resize`` squashes the whole image to ``size`` (the official demo); ``center_crop`` takes the centred
        square of side ``min(H, W) - 1`` first (the evaluation protocol; needs a square ``size``).
    timestep : int
        Raw training timestep at which noise is added (0..999). Paper: 50.
    seed : int
        Seed of the single noise tensor shared by every image. Paper: 42.
    alpha : float
        Exponent applied to the min-max scaled cosine affinity. Paper: 10.
    tau : float, optional
        NCut acceptance threshold; larger gives more segments. ``None`` takes the preset of the backbone
        (0.5 for SDXL-type models, 0.2 for SD 1.x/2.x, 0.08 for efficientnet-lite0).
    compat : {"official", "official-float32", "clean"}
        ``official`` (default): the official partitions (the official code's zero-row rule, on the fast solvers);
        ``official-float32``: the official float32 computation itself (slow); ``clean``: plain index sets.
    refine : {"demo", "eval", "full", "none"} or bool
        PAMR + 3x3 median after concept assignment, with a preset of ``REFINE_PRESETS`` (docs/REFINE.md):
        ``demo`` (default; ``True`` means it): the official notebook, 30 iterations, dilations 1..64, at the network
        size, labels brought back to the output size edge-aware; ``eval``: the official evaluation, 10 iterations,
        dilations 1, 2, 4, 8 at 128x128; ``full``: 10 iterations, dilations 1, 2, 4, 8 at the output size (the
        former default). ``none`` or ``False``: no refinement (stored as ``False``).
    pamr_iters : int, optional
        PAMR iterations; ``None`` takes the preset's.
    pamr_dilations : tuple of int, optional
        PAMR neighbourhood dilations; ``None`` takes the preset's.
    refine_backend : {"auto", "torch", "fast", "native"}
        PAMR implementation: ``torch`` (reference), ``fast`` (numba support-box path on the CPU, fused Triton kernel on
        CUDA; same labels), ``native`` (the C++ core on the CPU; same labels) or ``auto`` (on the CPU ``native``
        where it is built, else ``fast`` where numba is installed, else ``torch``; on CUDA ``fast``).
    output_size : (int, int) or str, optional
        Size of the returned label maps, ``(height, width)``. ``None``: each input image's own size.
    device : {"auto", "cpu", "cuda"} or str
        Where the encoder runs (``"cuda:1"`` accepted). ``auto`` picks CUDA when available.
    dtype : {"auto", "fp32", "fp16", "bf16"}
        Precision of the UNet / backbone. ``auto``: fp16 on CUDA, fp32 on CPU. The VAE always encodes in fp32.
    batch_size : int
        Images per encoder call.
    graph_device : {"auto", "host", "device"}
        Where the recursive NCut runs. ``host``: the CPU, one image at a time (numpy or the C++ core, as
        ``graph_backend`` picks; with ``graph_threads`` > 1 the core's pool takes a batch's grids together).
        ``device``: CuPy on the CUDA device, the trees of a whole batch built in one batched call (not with
        ``compat="official-float32"``; needs the ``[gpu]`` extra, CPU features are copied to the device).
        ``auto``: ``device`` when the features are on CUDA, CuPy sees a device and ``compat`` is not
        ``"official-float32"``, else ``host``.
    graph_backend : {"auto", "native", "numpy", "cupy"}
        Which implementation runs the recursive NCut (same partitions and label ids): ``native`` the C++ core
        (``diffcut_engine._native``, built by the package install), ``numpy`` the Python host path, ``cupy`` the
        device path (as ``graph_device="device"``). ``auto``: as ``graph_device`` decides, and on the host the
        native core where it is built and applies (``graph.native.resolve_graph_backend``).
    graph_threads : int
        Host graph stage of a batch: the grids that take the native core are solved together on this many threads
        (``graph.ncut_trees``; the same trees; SciPy's OpenBLAS runs single-threaded during such a call). Default 1
        (one grid at a time).
    backend : {"torch", "onnx", "tensorrt"}
        Encoder runtime. ``torch`` loads the diffusers weights; ``onnx`` (onnxruntime) and ``tensorrt`` run the
        folder ``engine_dir`` written by ``diffcut export`` instead, after checking that it was exported for this
        ``model``, ``size``, ``timestep`` and ``seed`` (``Engine.from_pretrained`` takes them from the folder).
    engine_dir : str, optional
        Exported encoder folder, required by the ``onnx`` and ``tensorrt`` backends.
    compile : {None, "default", "reduce-overhead", "max-autotune"}
        ``backend="torch"`` speed option: wrap the truncated UNet in ``torch.compile(mode=compile)`` at first
        use; if compilation fails at run time a warning is logged and the eager module is used. Default off.
    channels_last : bool
        ``backend="torch"``: keep the UNet weights and its input in the channels-last memory format.
    attention : {"auto", "sdpa", "default"}
        ``backend="torch"``: attention processor of the truncated UNet. ``auto`` keeps diffusers' choice,
        ``sdpa`` sets ``AttnProcessor2_0`` (``scaled_dot_product_attention``), ``default`` the classic
        ``AttnProcessor``.
    cuda_graphs : bool
        ``backend="torch"``: capture the truncated UNet call with ``torch.cuda.CUDAGraph`` once per input
        shape and replay it afterwards. Needs CUDA.
    vae_tf32 : bool, default True
        Diffusion backbone on CUDA: the float32 VAE's convolutions may use TF32 (PyTorch's default, under which the
        official code ran); ``False`` gives IEEE float32 convolutions, slower. No effect on the CPU.
    clip_model : str, optional
        CLIP model that names segments when ``Engine.segment(..., classes=[...])`` asks for class names: an
        open_clip model (``hf-hub:org/repo``, ``local-dir:/path``, ``open_clip:ARCH/TAG`` or a folder with
        ``open_clip_config.json``; needs the ``[openvocab]`` extra) or a transformers CLIP (any other hub id, or a
        folder with ``config.json``). ``None``: the official open_clip ConvNeXt-Large
        (``convnext_large_d_320``, ``laion2b_s29b_b131k_ft_soup``). Loaded at the first named segmentation.
    """

    model: str = DEFAULT_MODEL
    backbone: str = "diffusion"
    revision: Optional[str] = None
    size: Optional[Union[int, str, Size]] = None
    resize_mode: str = "resize"
    timestep: int = 50
    seed: int = 42
    alpha: float = 10.0
    tau: Optional[float] = None
    compat: str = DEFAULT_COMPAT
    refine: Union[bool, str] = DEFAULT_REFINE
    pamr_iters: Optional[int] = None
    pamr_dilations: Optional[Tuple[int, ...]] = None
    refine_backend: str = "auto"
    output_size: Optional[Union[int, str, Size]] = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 4
    local_files_only: bool = False
    graph_device: str = "auto"
    graph_backend: str = "auto"
    graph_threads: int = 1
    backend: str = "torch"
    engine_dir: Optional[str] = None
    method: str = "diffcut"
    rwncut: Optional[Union["RWNCutOptions", dict]] = None
    compile: Optional[str] = None
    channels_last: bool = False
    attention: str = "auto"
    cuda_graphs: bool = False
    clip_model: Optional[str] = None
    vae_tf32: bool = True

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("model", MODEL_ALIASES.get(self.model, self.model))
        if not isinstance(self.model, str) or not self.model:
            raise InputError(f"model must be a hub id or a folder, got {self.model!r}")
        if self.model in BACKBONES[1:] and not os.path.isdir(self.model):
            # model="efficientnet-lite0" names the offline backbone, not a hub id
            set_("backbone", self.model)
            set_("model", DEFAULT_MODEL)
        if self.backbone not in BACKBONES:
            raise InputError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.backbone != "diffusion" and (self.model != DEFAULT_MODEL or self.revision is not None):
            what = f"model={self.model!r}" if self.model != DEFAULT_MODEL else f"revision={self.revision!r}"
            raise InputError(f"{what} applies to backbone='diffusion'; backbone={self.backbone!r} loads its own "
                             "weights (leave model and revision out, or use backbone='diffusion')")
        size = SIZE_PRESETS[self.backbone] if self.size is None else self.size
        set_("size", parse_size(size, name="size", multiple=32))
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"unknown resize_mode {self.resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
        if self.resize_mode == "center_crop" and self.size[0] != self.size[1]:
            raise InputError(f"resize_mode='center_crop' needs a square size, got {self.size[1]}x{self.size[0]}")
        if not (is_int(self.timestep) and 0 <= self.timestep < 1000):
            raise InputError(f"timestep must be an integer in [0, 999], got {self.timestep!r}")
        check_seed(self.seed)
        for name in ("timestep", "seed", "batch_size", "graph_threads", "pamr_iters"):  # numpy ints stored as int
            if is_int(getattr(self, name)):
                set_(name, int(getattr(self, name)))
        set_("alpha", check_alpha(self.alpha))
        if self.tau is not None:
            set_("tau", check_tau(self.tau))
        if self.compat not in COMPAT_MODES:
            raise InputError(f"unknown compat {self.compat!r}; choose one of {', '.join(COMPAT_MODES)}")
        self._check_refine(set_)
        set_("output_size", parse_size(self.output_size, name="output_size"))
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if not (is_int(self.batch_size) and self.batch_size >= 1):
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.engine_dir is not None:
            set_("engine_dir", os.fspath(self.engine_dir))
        if self.backend != "torch":
            if self.backbone != "diffusion":
                raise InputError(f"backend={self.backend!r} runs exported diffusion encoders; backbone "
                                 f"{self.backbone!r} only has the torch backend")
            if not self.engine_dir:
                raise InputError(f"backend={self.backend!r} needs engine_dir, a folder written by "
                                 "`diffcut export --model M --format onnx --out DIR`")
        self._check_method(set_)
        if self.clip_model is not None and not (isinstance(self.clip_model, str) and self.clip_model.strip()):
            raise InputError(f"clip_model must be a hub id or a folder, got {self.clip_model!r}")
        self._check_speed_options()
        if self.graph_device not in GRAPH_DEVICES:
            raise InputError(f"unknown graph_device {self.graph_device!r}; choose one of {', '.join(GRAPH_DEVICES)}")
        if self.graph_device == "device" and self.compat == "official-float32":
            raise InputError(f"graph_device='device' needs compat='official' or 'clean' (compat={self.compat!r} "
                             f"runs on the host only)")
        if self.graph_backend not in GRAPH_BACKENDS:
            raise InputError(f"unknown graph_backend {self.graph_backend!r}; choose one of "
                             f"{', '.join(GRAPH_BACKENDS)}")
        if (self.graph_backend == "cupy" and self.graph_device == "host") or (
                self.graph_backend in ("native", "numpy") and self.graph_device == "device"):
            raise InputError(f"graph_backend={self.graph_backend!r} contradicts graph_device={self.graph_device!r}")
        if self.graph_backend == "native" and self.compat == "official-float32":  # (before a model loads)
            raise InputError("graph_backend='native' supports compat official and clean, not 'official-float32'")
        if not is_int(self.graph_threads) or self.graph_threads < 1:
            raise InputError(f"graph_threads must be an int >= 1, got {self.graph_threads!r}")

    def _check_refine(self, set_) -> None:
        """``refine`` (preset name or bool), ``pamr_iters``, ``pamr_dilations``, ``refine_backend``."""
        refine = self.refine
        if refine is True:
            refine = DEFAULT_REFINE
        elif refine is False or refine == "none":
            refine = False
        elif refine not in REFINE_PRESETS:
            raise InputError(f"unknown refine {self.refine!r}; choose one of {', '.join(REFINE_PRESETS)}, none "
                             f"(or True/False)")
        set_("refine", refine)
        if self.pamr_iters is not None:
            try:
                check_pamr_iters(self.pamr_iters)
            except InputError:
                raise InputError(f"pamr_iters must be an integer in [0, {PAMR_MAX_ITERS}], "
                                 f"got {self.pamr_iters!r}") from None
        if self.pamr_dilations is not None:
            try:
                set_("pamr_dilations", check_pamr_dilations(self.pamr_dilations))
            except InputError:
                raise InputError(f"pamr_dilations must be integers in [1, {PAMR_MAX_DILATION}], got "
                                 f"{self.pamr_dilations!r}") from None
        if self.refine_backend not in ("auto", "torch", "fast", "native"):
            raise InputError(f"unknown refine_backend {self.refine_backend!r}; choose one of auto, torch, fast, native")

    def refine_settings(self, preset: Optional[str] = None) -> Optional[dict]:
        """The refinement to run: ``{"preset", "work_size", "iters", "dilations"}`` or ``None`` when off.

        ``work_size`` is a (height, width), ``"network"`` resolved to ``size``, or ``None`` (the output size).
        ``preset`` overrides ``refine`` (the evaluation runner asks for ``"eval"``); explicit ``pamr_iters`` /
        ``pamr_dilations`` override the preset's.
        """
        name = preset or self.refine
        if not name:
            return None
        p = REFINE_PRESETS[name]
        work = p["work_size"]
        work = tuple(self.size) if work == "network" else (None if work == "output" else tuple(work))
        return {"preset": name, "work_size": work,
                "iters": p["iters"] if self.pamr_iters is None else self.pamr_iters,
                "dilations": p["dilations"] if self.pamr_dilations is None else self.pamr_dilations}

    def _check_speed_options(self) -> None:
        """The torch backend speed options: ``compile``, ``channels_last``, ``attention``, ``cuda_graphs``."""
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise InputError(f"unknown compile mode {self.compile!r}; choose None or one of "
                             f"{', '.join(COMPILE_MODES)}")
        for name in ("channels_last", "cuda_graphs", "vae_tf32"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.attention not in ATTENTION_MODES:
            raise InputError(f"unknown attention {self.attention!r}; choose one of {', '.join(ATTENTION_MODES)}")
        used = [name for name, on in (("compile", self.compile is not None), ("channels_last", self.channels_last),
                                      ("attention", self.attention != "auto"), ("cuda_graphs", self.cuda_graphs))
                if on]
        if used and (self.backend != "torch" or self.backbone != "diffusion"):
            raise InputError(f"{', '.join(used)} apply to the PyTorch diffusion encoder (backbone='diffusion', "
                             f"backend='torch'), not backbone={self.backbone!r}, backend={self.backend!r}")
        if self.cuda_graphs and self.compile is not None:
            raise InputError("compile and cuda_graphs cannot be combined; compile='reduce-overhead' already "
                             "uses CUDA graphs")
        if self.cuda_graphs and self.device == "cpu":
            raise InputError("cuda_graphs=True needs CUDA (device='cuda' or 'auto' on a machine with a GPU), "
                             "got device='cpu'")

    def _check_method(self, set_) -> None:
        """``method`` and its ``rwncut`` options (a dict becomes :class:`RWNCutOptions`)."""
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        opts = self.rwncut
        if isinstance(opts, dict):
            opts = RWNCutOptions.from_options(**opts)
        elif opts is None:
            opts = RWNCutOptions() if self.method == "rwncut" else None
        elif not isinstance(opts, RWNCutOptions):
            raise InputError(f"rwncut must be an RWNCutOptions or a dict, got {type(opts).__name__}")
        set_("rwncut", opts)
        if self.method == "rwncut" and opts.source == "attention" and (
                self.backbone != "diffusion" or self.backend != "torch"):
            raise InputError("rwncut source='attention' needs the PyTorch diffusion UNet (backbone='diffusion', "
                             "backend='torch'): exported encoders and the lite backbone return no attention; "
                             "use source='features' (or 'auto')")

    @property
    def grid_size(self) -> Size:
        """Feature grid (h, w): one token per 32x32 pixels."""
        return (self.size[0] // 32, self.size[1] // 32)

    @classmethod
    def from_options(cls, **options) -> "EngineConfig":
        """Build a config from keyword options, rejecting unknown names with an :class:`InputError`."""
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown EngineConfig option(s): {', '.join(sorted(unknown))}")
        return cls(**options)

    def replace(self, **changes) -> "EngineConfig":
        """Return a copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(f"unknown EngineConfig option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)
