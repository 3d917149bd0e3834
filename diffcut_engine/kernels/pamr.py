"""Fused PAMR propagation in Triton: all dilations of one step in one pass, affinities computed once and kept.

One PAMR step replaces every mask value by the affinity-weighted sum of its ``P = 8 x len(dilations)``
neighbours (replicate borders)::

    out[b, k, y, x] = sum_p aff[b, p, y, x] * m[b, k, clamp(y + dy_p), clamp(x + dx_p)]

The torch reference (:func:`propagate_reference`) is ``diffcut_engine.refine``'s loop: per tap, the product and then
the sum, each rounded to float32 (no fused multiply-add), taps in dilation-major order. The kernel
(:func:`propagate`) runs one program per (block of pixels, block of ``K_BLOCK`` masks): each tap's affinity row is
loaded once for ``K_BLOCK`` masks, the sum is kept in registers in the same tap order, and only the (K, H, W)
result is written. The kernel is compiled with ``enable_fp_fusion=False`` so that ``acc += v * a`` stays a rounded
product and a rounded sum, as in the reference (Triton fuses them into an FMA by default). There is no
(K, P, H, W) intermediate (the stacked tensor of the official ``LocalAffinityCopy``: 2.7 GB at 1024x1024, K = 10,
8 dilations). Memory traffic per
step is about ``ceil(K / K_BLOCK) x P x H x W x 4`` bytes of affinities plus the masks (cached).

The affinities come from ``diffcut_engine.refine.pamr_affinity`` (once per image; the caller keeps them).

Interpreter: set ``TRITON_INTERPRET=1`` before importing this module to run the kernel on the CPU (numpy, slow;
small sizes in tests). Triton is optional (extra ``[gpu]``): the module imports without it and :func:`available`
says whether the kernel can run.
"""

from __future__ import annotations

import os

import torch

from diffcut_engine.config import check_pamr_dilations, check_pamr_iters, pamr_reach
from diffcut_engine.errors import BackendUnavailableError, InputError
from diffcut_engine.utils.imports import install_hint, is_available

__all__ = ["available", "offsets_tensor", "propagate", "propagate_reference"]

triton = tl = None
if is_available("triton"):
    try:
        import triton
        import triton.language as tl
    except ImportError:  # installed but broken (no driver, wrong CUDA): the torch reference serves
        triton = tl = None

_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


#: Whether the kernel was built for Triton's CPU interpreter: decided when this module is imported (Triton reads
#: ``TRITON_INTERPRET`` when the kernel is defined), so setting the variable later changes nothing.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device=None) -> bool:
    """True when the kernel can run on ``device`` (CUDA with Triton, or any device when this module was imported
    with ``TRITON_INTERPRET=1``)."""
    if tl is None:
        return False
    if _INTERPRETED:
        return True
    dev = torch.device(device) if device is not None else None
    return torch.cuda.is_available() and (dev is None or dev.type == "cuda")


def offsets_tensor(dilations, device=None) -> torch.Tensor:
    """(P, 2) int32 tap offsets (dy, dx), dilation-major then row-major over the ring (the reference's order)."""
    return torch.tensor([(dy * d, dx * d) for d in dilations for dy, dx in _RING], dtype=torch.int32,
                        device=device)


def propagate_reference(masks: torch.Tensor, aff: torch.Tensor, dilations, iters: int) -> torch.Tensor:
    """Torch reference: ``iters`` PAMR steps of masks (B, K, H, W) with affinities (B, P, H, W)."""
    h, w = masks.shape[-2:]
    dilations = pamr_reach(tuple(dilations), h, w)
    pad = max(dilations)
    term = torch.empty_like(masks) if iters else None
    for _ in range(iters):
        padded = torch.nn.functional.pad(masks, [pad] * 4, mode="replicate")
        new = torch.zeros_like(masks)
        p = 0
        for d in dilations:
            for dy, dx in _RING:
                # product and sum rounded separately (addcmul_ may fuse them into an FMA, machine-dependent)
                torch.mul(padded[..., pad + dy * d:pad + dy * d + h, pad + dx * d:pad + dx * d + w],
                          aff[:, p:p + 1], out=term)
                new += term
                p += 1
        masks = new
    return masks


if tl is not None:
    @triton.jit
    def _pamr_step_kernel(m_ptr, aff_ptr, offs_ptr, out_ptr, K, H, W, P,
                          BLOCK: tl.constexpr, K_BLOCK: tl.constexpr):
        pid_pix = tl.program_id(0)
        pid_k = tl.program_id(1)
        b = tl.program_id(2)
        hw = H * W
        idx = pid_pix * BLOCK + tl.arange(0, BLOCK)
        valid = idx < hw
        y = idx // W
        x = idx % W
        ks = pid_k * K_BLOCK + tl.arange(0, K_BLOCK)
        kvalid = ks < K
        m_base = m_ptr + b * K * hw + ks[:, None] * hw
        a_base = aff_ptr + b * P * hw
        both = kvalid[:, None] & valid[None, :]
        acc = tl.zeros([K_BLOCK, BLOCK], dtype=tl.float32)
        for p in range(P):
            dy = tl.load(offs_ptr + 2 * p)
            dx = tl.load(offs_ptr + 2 * p + 1)
            y2 = tl.minimum(tl.maximum(y + dy, 0), H - 1)
            x2 = tl.minimum(tl.maximum(x + dx, 0), W - 1)
            a = tl.load(a_base + p * hw + idx, mask=valid, other=0.0)
            v = tl.load(m_base + (y2 * W + x2)[None, :], mask=both, other=0.0)
            acc += v * a[None, :]
        tl.store(out_ptr + b * K * hw + ks[:, None] * hw + idx[None, :], acc, mask=both)


def propagate(masks: torch.Tensor, aff: torch.Tensor, dilations, iters: int, *, block: int = 256,
              k_block: int = 16) -> torch.Tensor:
    """``iters`` fused PAMR steps of masks (B, K, H, W) float32 with affinities (B, P, H, W) float32.

    Raises
    ------
    BackendUnavailableError
        Without Triton, or on a device the kernel cannot use (CPU without ``TRITON_INTERPRET=1``).
    InputError
        On mismatched shapes or dtypes.
    """
    for name, value in (("block", block), ("k_block", k_block)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
            raise InputError(f"{name} must be a power of two, got {value!r}")
    if not available(masks.device):
        raise BackendUnavailableError("the fused PAMR kernel needs Triton and a CUDA device (or "
                                      f"TRITON_INTERPRET=1 set before this module is imported); install it with: "
                                      f"{install_hint('triton')}")
    iters, dilations = check_pamr_iters(iters), check_pamr_dilations(dilations)
    if masks.ndim != 4 or aff.ndim != 4 or aff.shape[0] != masks.shape[0] or aff.shape[-2:] != masks.shape[-2:] \
            or aff.shape[1] != 8 * len(dilations):
        raise InputError(f"masks (B, K, H, W) and aff (B, 8 x {len(dilations)}, H, W) do not match: "
                         f"{tuple(masks.shape)}, {tuple(aff.shape)}")
    if masks.dtype != torch.float32 or aff.dtype != torch.float32:
        raise InputError(f"masks and aff must be float32, got {masks.dtype} and {aff.dtype}")
    b, k, h, w = masks.shape
    if max(masks.numel(), aff.numel()) >= 2**31:
        raise InputError(f"the fused PAMR kernel indexes with 32-bit integers: masks {tuple(masks.shape)} and "
                         f"affinities {tuple(aff.shape)} must hold fewer than 2^31 values each; propagate fewer "
                         "masks per call")
    if iters == 0:
        return masks.clone()  # (never the caller's tensor)
    masks, aff = masks.contiguous(), aff.contiguous()
    offs = offsets_tensor(dilations, masks.device)
    k_block = max(1, min(k_block, triton.next_power_of_2(k)))
    grid = (triton.cdiv(h * w, block), triton.cdiv(k, k_block), b)
    bufs = [torch.empty_like(masks), torch.empty_like(masks) if iters > 1 else None]   # never the caller's
    for i in range(iters):
        dst = bufs[i % 2]
        _pamr_step_kernel[grid](masks, aff, offs, dst, k, h, w, aff.shape[1], BLOCK=block, K_BLOCK=k_block,
                                enable_fp_fusion=False)
        masks = dst
    return masks
