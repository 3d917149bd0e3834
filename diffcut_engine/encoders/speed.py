"""PyTorch speed options of the diffusion encoder and the precision contexts it runs under.

All off by default: ``torch.compile`` (lazy, falling back to eager on failure), channels-last, the attention
processor (SDPA or classic), CUDA graphs (one per input shape), and the TF32 switch of the float32 VAE. What each
buys and why is in docs/PERFORMANCE.md; none changes what is computed beyond floating-point rounding.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Optional

from ..errors import InputError
from .base import torch
from .loading import first_line

logger = logging.getLogger(__name__)

__all__ = ["check_speed_options", "set_attention_processor", "LazyCompiled", "CUDAGraphs", "unet_autocast",
           "vae_precision"]


def check_speed_options(*, compile: Optional[str], attention: str, cuda_graphs: bool, device) -> None:
    """Refuse unknown values and impossible combinations of the speed options (one :class:`InputError` line)."""
    from ..config import ATTENTION_MODES, COMPILE_MODES

    if compile is not None and compile not in COMPILE_MODES:
        raise InputError(f"unknown compile mode {compile!r}; choose None or one of {', '.join(COMPILE_MODES)}")
    if attention not in ATTENTION_MODES:
        raise InputError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_MODES)}")
    if cuda_graphs and device.type != "cuda":
        raise InputError(f"cuda_graphs=True needs CUDA; this encoder runs on {device}")
    if cuda_graphs and compile is not None:
        raise InputError("compile and cuda_graphs cannot be combined; compile='reduce-overhead' already "
                         "uses CUDA graphs")


def set_attention_processor(blocks, attention: str) -> None:
    """Set ``AttnProcessor2_0`` (``"sdpa"``) or the classic ``AttnProcessor`` (``"default"``) on every attention
    module of ``blocks``; ``"auto"`` leaves diffusers' choice."""
    if attention == "auto":
        return
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    for block in blocks:
        for module in block.modules():
            if isinstance(module, Attention):
                module.set_processor(processor())


class LazyCompiled:
    """``torch.compile(module, mode=mode)``, compiled at the first call; any failure falls back to eager for good.

    A failure logs one warning and never gives a wrong output: the eager module runs instead.
    """

    def __init__(self, module, mode: str):
        self.module, self.mode = module, mode
        self._compiled = None  # None: not tried yet; False: failed

    def __call__(self, *args):
        if self._compiled is None:
            try:
                self._compiled = torch.compile(self.module, mode=self.mode)
            except Exception as exc:  # noqa: BLE001  (torch.compile itself refusing, e.g. unsupported Python)
                return self._failed(exc, args)
        if self._compiled is False:
            return self.module(*args)
        try:
            return self._compiled(*args)
        except Exception as exc:  # noqa: BLE001  (inductor/dynamo errors of many types)
            return self._failed(exc, args)

    def _failed(self, exc, args):
        logger.warning("torch.compile(mode=%r) of the truncated UNet failed (%s: %s); running it eagerly",
                       self.mode, type(exc).__name__, first_line(exc))
        self._compiled = False
        return self.module(*args)


class _CUDACapture:
    """Warm-up on a side stream and ``torch.cuda.CUDAGraph`` capture (the CUDA side of :class:`CUDAGraphs`)."""

    def __init__(self, device):
        self.device = device

    def capture(self, fn, static_in):
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(*static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(*static_in)
        return graph, static_out


class CUDAGraphs:
    """Run ``fn`` through one captured CUDA graph per input signature (shapes and dtypes).

    A signature seen for the first time is captured (after a warm-up on a side stream); later calls copy their
    inputs into the graph's static input buffers, replay it and return a clone of its static output.

    The static buffers are made outside inference mode (``torch.inference_mode(False)``) even when the first call
    runs inside it, so that a later call outside inference mode can still copy into them (an inference tensor
    cannot be updated in place outside inference mode).

    Parameters
    ----------
    fn : callable
        Takes tensors (or ``None``) and returns one tensor.
    device : torch.device
        The CUDA device.
    capture : object, optional
        Has ``capture(fn, static_in) -> (graph, static_out)``, with ``graph.replay()``; default: CUDA warm-up and
        ``torch.cuda.CUDAGraph`` capture. Tests pass a CPU stand-in.
    """

    def __init__(self, fn: Callable, device, capture=None):
        self.fn = fn
        self.capture = capture if capture is not None else _CUDACapture(device)
        self.graphs: dict = {}

    def __call__(self, *args):
        key = tuple(None if a is None else (tuple(a.shape), a.dtype) for a in args)
        entry = self.graphs.get(key)
        if entry is None:
            with torch.inference_mode(False), torch.no_grad():
                static_in = [None if a is None else a.clone() for a in args]
                graph, static_out = self.capture.capture(self.fn, static_in)
            entry = self.graphs[key] = (graph, static_in, static_out)
            logger.info("captured a CUDA graph of the truncated UNet for input shape %s", tuple(args[0].shape))
        graph, static_in, static_out = entry
        with torch.no_grad():
            for dst, src in zip(static_in, args):
                if dst is not None:
                    dst.copy_(src)
        graph.replay()
        return static_out.clone()


def unet_autocast(device, dtype, *, cuda_graphs: bool = False):
    """The precision context of the UNet: fp16/bf16 autocast on CUDA, as the official code; nothing elsewhere.

    Under autocast the norms and the softmax run in float32. The autocast weight cache is off under CUDA graphs:
    cached casts must not outlive a capture.
    """
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype, cache_enabled=not cuda_graphs)
    return contextlib.nullcontext()


@contextlib.contextmanager
def vae_precision(device, *, tf32: bool):
    """The precision context of the float32 VAE: autocast off, and cuDNN's TF32 convolutions on or off.

    ``tf32=True`` allows TF32 convolutions (``torch.backends.cudnn.allow_tf32 = True``, PyTorch's default, under
    which the official code ran): on Ampere and later GPUs the VAE's convolutions then multiply with 10-bit
    mantissas and accumulate in float32; the range stays float32's, so the SDXL VAE does not overflow as in float16.
    ``tf32=False`` gives IEEE float32 convolutions, slower. The flag is global in PyTorch: it is set for the call
    and restored on exit. Nothing changes on the CPU.
    """
    with torch.autocast(device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        previous = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = bool(tf32)
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = previous
