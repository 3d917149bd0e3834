"""Fused DiffCut affinity: L2 normalisation + Gram tiles + global min-max + power alpha + degrees, in Triton.

Computes, from tokens ``X`` (N, C), the dense DiffCut affinity and its row sums::

    S = Xn Xn^T                         Xn = X / max(||X_i||, 1e-12)   (cosine similarity)
    W = ((S - min S) / (max S - min S)) ** alpha                        (all ones if max S == min S)
    d = W.sum(1)                                                        (degrees)

with the one definition of :mod:`diffcut_engine.graph.affinity` (its constants ``NORM_EPS`` and
``spread_tolerance`` are imported from there; parity-tested against :func:`affinity_reference`, torch, here).
The global min-max needs a reduction over the whole matrix before any entry of ``W`` can be written, so the
kernel runs in passes (docs/PERFORMANCE.md):

0. ``_row_inv_norm_kernel``: one inverse L2 norm per token; program 0 also initialises the two-float min/max
   buffer to (+inf, -inf), which saves a separate fill launch.
1. ``_gram_minmax_kernel`` (autotuned on GPU over the few tiles of :data:`GRAM_TILES`, keyed on a power-of-two
   bucket of N, with the min/max buffer reset before every trial): one program per (BLOCK x BLOCK) tile of the upper
   triangle of ``S`` (``S`` is symmetric, so the lower tiles are written as transposes of the upper ones: half the
   FLOPs, and ``W`` comes out exactly symmetric). The tokens are normalised inside the tile, the Gram tile is
   accumulated over C in ``BLOCK_K`` slices with ``tl.dot``, stored raw into the output, and its min/max are folded
   into the global buffer with ``tl.atomic_min`` / ``tl.atomic_max`` (order independent, hence deterministic).
2. ``_scale_pow_degree_kernel``: one program per block of rows, in place over the output: scale, clamp, power,
   store, and accumulate the row sums in registers (no atomics: the degrees are deterministic).

Storing ``S`` and re-reading it in pass 2 costs 2 x N^2 x 4 bytes of memory traffic (8 MB at N = 1024, a few
microseconds on an H100/H200), far less than recomputing the Gram matrix (2.7 GFLOP at N = 1024, C = 1280), and it
guarantees that the entries scaled in pass 2 are bit-identical to those reduced in pass 1: the least similar pair
maps to exactly 0 and the most similar to exactly 1, as in the reference.

Precision: ``tl.dot`` on fp32 inputs uses TF32 tensor cores by default on NVIDIA GPUs (10-bit mantissa), which
breaks fp32 parity; ``precision="ieee"`` (the default) asks for true fp32 products, ``"tf32"`` is faster on GPU
with ~1e-3 relative error on ``S`` (amplified by alpha in ``W``), ``"tf32x3"`` is a middle ground. The division
and square root use ``div_rn`` / ``sqrt_rn`` (IEEE rounding; Triton's ``/`` is approximate on NVIDIA), and the
power uses libdevice ``powf`` when compiled (the function torch's CUDA ``pow`` calls), ``exp2(alpha * log2(s))``
under the CPU interpreter (which cannot call libdevice).

Interpreter: with ``TRITON_INTERPRET=1`` set *before this module is imported* (Triton reads it when the kernels
are decorated), the kernels run on the CPU with numpy, program by program; large blocks keep that usable.

Reference: Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features",
NeurIPS 2024 (arXiv 2406.02842), section 3; official code ``diffcut/recursive_normalized_cut.py`` lines 84-91.
"""

from __future__ import annotations

import logging
import numbers
import os

import torch

from diffcut_engine.errors import BackendUnavailableError, InputError
from diffcut_engine.graph.affinity import NORM_EPS, spread_tolerance
from diffcut_engine.graph.validation import check_alpha
from diffcut_engine.utils.imports import install_hint, is_available

logger = logging.getLogger(__name__)

#: ``precision`` values accepted by :func:`fused_affinity` (Triton's ``tl.dot(input_precision=...)`` names).
PRECISIONS = ("ieee", "tf32", "tf32x3")

#: Pass-1 tile shapes (BLOCK, BLOCK_K, num_warps) autotuned per ``tl.dot`` precision (GPU only; square tiles, the
#: mirror write needs BLOCK_M == BLOCK_N). 32-wide tiles fill an H100/H200 at N = 1024 (528 upper tiles against
#: 136 at 64). With ``"ieee"`` the dot runs on FMA units and ptxas (sm_90) spills at 64 x 32 / 4 warps and at
#: 128-wide tiles, so those are tried only for the tensor-core precisions. Three configurations per precision,
#: one pipeline depth: the first call per (N bucket, C, precision) benchmarks three, not twelve.
GRAM_TILES = {
    "ieee": ((32, 32, 4), (64, 16, 4), (64, 16, 8)),
    "tf32": ((64, 32, 8), (128, 16, 8), (128, 32, 8)),
    "tf32x3": ((64, 32, 8), (128, 16, 8), (128, 32, 8)),
}
GRAM_STAGES = 3

#: Tile sides :func:`fused_affinity` accepts; 256 only under the CPU interpreter (a 256 x 256 float32 accumulator
#: is 256 KiB of registers per program on a GPU: it cannot compile, or spills everything).
GPU_BLOCKS = (16, 32, 64, 128)
INTERPRETER_BLOCKS = GPU_BLOCKS + (256,)

# Triton is optional (extra ``[gpu]``): the module imports without it, and only the Triton path needs it.
triton = None
tl = None
libdevice = None
_TRITON_IMPORT_ERROR = None
if is_available("triton"):
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:  # installed but broken (e.g. a missing CUDA library)
        triton, tl, _TRITON_IMPORT_ERROR = None, None, exc
    else:
        try:  # Triton >= 3.0: backend-neutral alias, resolved to CUDA's libdevice at compile time
            from triton.language.extra import libdevice
        except ImportError:  # pragma: no cover - very old Triton; the exp2/log2 power is used instead
            libdevice = None


def n_bucket(n: int) -> int:
    """The autotuning key of N: the next power of two, at least 256 (one benchmark per bucket, not per N)."""
    return max(256, 1 << max(0, int(n) - 1).bit_length())


def gram_configs() -> list:
    """Every pass-1 configuration of :data:`GRAM_TILES` as a ``triton.Config`` (duplicates removed); the
    precision's own subset is chosen by :func:`prune_gram_configs` at launch."""
    shapes = sorted({shape for tiles in GRAM_TILES.values() for shape in tiles})
    return [triton.Config({"BLOCK": block, "BLOCK_K": block_k}, num_warps=warps, num_stages=GRAM_STAGES)
            for block, block_k, warps in shapes]


def prune_gram_configs(configs, named_args, **kwargs) -> list:
    """``early_config_prune`` of the pass-1 autotuner: keep the tiles of the launch's precision
    (:data:`GRAM_TILES`), and drop tiles wider than the matrix (but the smallest), which only add masked work."""
    precision = kwargs.get("PRECISION", named_args.get("PRECISION", "ieee"))
    wanted = set(GRAM_TILES.get(precision, GRAM_TILES["ieee"]))
    kept = [c for c in configs if (c.kwargs["BLOCK"], c.kwargs["BLOCK_K"], c.num_warps) in wanted]
    n = int(named_args.get("N", 0) or 0)
    if n:
        small = min(c.kwargs["BLOCK"] for c in kept)
        kept = [c for c in kept if c.kwargs["BLOCK"] <= max(small, 1 << max(0, n - 1).bit_length())]
    return kept


def reset_minmax(nargs, reset_only=False):
    """Autotuner ``pre_hook``: set the min/max buffer back to (+inf, -inf) before every trial and before the
    real launch, so that no trial's rounding leaks into the extremes pass 2 reads."""
    buf = nargs["minmax_ptr"]
    buf[0:1].fill_(float("inf"))
    buf[1:2].fill_(float("-inf"))


if tl is not None:

    @triton.jit
    def _row_inv_norm_kernel(x_ptr, inv_ptr, minmax_ptr, N, C, stride_xn, stride_xc,
                             EPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """Pass 0: ``inv[i] = 1 / max(||x_i||, EPS)`` for BLOCK_R rows; program 0 resets the min/max buffer."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < N
        row_off = rows.to(tl.int64) * stride_xn
        cs = tl.arange(0, BLOCK_C)
        acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cmask = (c0 + cs) < C
            x = tl.load(x_ptr + row_off[:, None] + (c0 + cs)[None, :] * stride_xc,
                        mask=rmask[:, None] & cmask[None, :], other=0.0)
            acc += x * x
        # sqrt_rn / div_rn: IEEE rounding (plain sqrt and / are approximate on NVIDIA GPUs)
        norm = tl.math.sqrt_rn(tl.sum(acc, axis=1))
        one = tl.full((BLOCK_R,), 1.0, tl.float32)
        inv = tl.math.div_rn(one, tl.maximum(norm, EPS))
        tl.store(inv_ptr + rows, inv, mask=rmask)
        # The atomics of pass 1 need (+inf, -inf) to start from; doing it here avoids a separate fill launch.
        two = tl.arange(0, 2)
        init = tl.where(two == 0, float("inf"), float("-inf"))
        if pid == 0:  # a branch, not a scalar in the mask: Triton 3.9's interpreter rejects bool-scalar masks
            tl.store(minmax_ptr + two, init)

    @triton.jit
    def _gram_minmax_kernel(x_ptr, inv_ptr, s_ptr, minmax_ptr, N, C, stride_xn, stride_xc, N_BUCKET,
                            PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
        """Pass 1: Gram tile (pid_m, pid_n), pid_n >= pid_m, of the normalised tokens; raw S stored (and mirrored),
        tile min/max folded into ``minmax_ptr[0:2]`` with atomics. Tiles below the diagonal do nothing.
        ``N_BUCKET`` is not read: it is the autotuning key in place of N (see :func:`n_bucket`)."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        if pid_n >= pid_m:
            rows = pid_m * BLOCK + tl.arange(0, BLOCK)
            cols = pid_n * BLOCK + tl.arange(0, BLOCK)
            ks = tl.arange(0, BLOCK_K)
            rmask = rows < N
            cmask = cols < N
            inv_r = tl.load(inv_ptr + rows, mask=rmask, other=0.0)
            inv_c = tl.load(inv_ptr + cols, mask=cmask, other=0.0)
            a_off = rows.to(tl.int64)[:, None] * stride_xn
            b_off = cols.to(tl.int64)[:, None] * stride_xn
            acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
            for k0 in range(0, C, BLOCK_K):
                kk = k0 + ks
                kmask = kk < C
                a = tl.load(x_ptr + a_off + kk[None, :] * stride_xc, mask=rmask[:, None] & kmask[None, :], other=0.0)
                # both operands are read row-major (coalesced along C); the dot takes B transposed
                b = tl.load(x_ptr + b_off + kk[None, :] * stride_xc, mask=cmask[:, None] & kmask[None, :], other=0.0)
                # normalise inside the tile: no normalised copy of X in memory
                a = a * inv_r[:, None]
                b = b * inv_c[:, None]
                acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
            if pid_n == pid_m:
                # a diagonal tile computes both S[i, j] and S[j, i]: average them so that W is exactly symmetric
                # (float addition commutes), as the mirrored off-diagonal tiles are by construction
                acc = (acc + tl.trans(acc)) * 0.5
            valid = rmask[:, None] & cmask[None, :]
            tl.atomic_min(minmax_ptr, tl.min(tl.where(valid, acc, float("inf"))))
            tl.atomic_max(minmax_ptr + 1, tl.max(tl.where(valid, acc, float("-inf"))))
            rows64 = rows.to(tl.int64)
            cols64 = cols.to(tl.int64)
            tl.store(s_ptr + rows64[:, None] * N + cols64[None, :], acc, mask=valid)
            if pid_n > pid_m:
                # mirror tile: element (r, c) of acc goes to S[c, r]; tl.trans keeps the store coalesced
                tl.store(s_ptr + cols64[:, None] * N + rows64[None, :], tl.trans(acc),
                         mask=cmask[:, None] & rmask[None, :])

    @triton.jit
    def _scale_pow_degree_kernel(w_ptr, deg_ptr, minmax_ptr, N, alpha, spread_rtol,
                                 USE_LIBDEVICE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """Pass 2, in place over BLOCK_R full rows: W = clamp((S - lo) / (hi - lo), 0, 1) ** alpha; deg = W.sum(1)."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < N
        row_off = rows.to(tl.int64) * N
        cs = tl.arange(0, BLOCK_C)
        lo = tl.load(minmax_ptr)
        hi = tl.load(minmax_ptr + 1)
        # False for constant similarities (a spread at rounding level): every entry is then 1, as in the reference
        spread = (hi - lo) > spread_rtol * tl.maximum(tl.abs(hi), tl.abs(lo))
        span = tl.where(spread, hi - lo, 1.0)
        # 2-D float64 accumulator (the degrees the recursion uses, as accurate as a host float64 sum), reduced
        # once after the loop (one reduction per program instead of one per slice)
        deg = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float64)
        for c0 in range(0, N, BLOCK_C):
            cols = c0 + cs
            mask = rmask[:, None] & (cols < N)[None, :]
            ptrs = w_ptr + row_off[:, None] + cols[None, :]
            s = tl.load(ptrs, mask=mask, other=0.0)
            # (S - lo) >= 0 and <= span exactly (S was reduced from the same stored values); the clamp is a guard.
            t = tl.math.div_rn(s - lo, span)
            t = tl.minimum(tl.maximum(t, 0.0), 1.0)
            if USE_LIBDEVICE:
                w = libdevice.pow(t, alpha)       # powf: 0 -> 0, 1 -> 1 exactly, <= 2 ulp
            else:
                pos = t > 0.0                     # log2(0) = -inf is avoided rather than relied upon
                w = tl.where(pos, tl.exp2(alpha * tl.log2(tl.where(pos, t, 1.0))), 0.0)
            w = tl.where(spread, w, 1.0)
            w = tl.where(mask, w, 0.0)
            tl.store(ptrs, w, mask=mask)
            deg += w.to(tl.float64)
        tl.store(deg_ptr + rows, tl.sum(deg, axis=1), mask=rmask)

    # Re-running pass 1 while autotuning rewrites every entry of S, but the atomic min/max fold each trial's values
    # into the same buffer, and configurations that sum in another order round differently: without a reset the
    # buffer would hold the extremes over all trials, not those of the S that pass 2 scales (W would then miss
    # exact 0 and 1). ``reset_minmax`` runs before every trial and once more before the real launch (pass 2, in
    # place and not idempotent, is not autotuned).
    gram_minmax_autotuned = triton.autotune(configs=gram_configs(), key=["N_BUCKET", "C", "PRECISION"],
                                            prune_configs_by={"early_config_prune": prune_gram_configs},
                                            pre_hook=reset_minmax)(_gram_minmax_kernel)

    _INTERPRETED = type(_gram_minmax_kernel).__name__ == "InterpretedFunction"
else:
    _INTERPRETED = False


def triton_interpreted() -> bool:
    """True if the kernels of this module were built for Triton's CPU interpreter.

    That is decided once, when this module is imported: ``TRITON_INTERPRET=1`` must be set before then.
    """
    return _INTERPRETED


# ------------------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------------------

def spread_rtol(channels: int) -> float:
    """The constant-features rule of :func:`diffcut_engine.graph.affinity.spread_tolerance` (one definition)."""
    return spread_tolerance(channels)


def _check_alpha(alpha) -> float:
    return check_alpha(alpha)


def _check_tokens(tokens, *, check_finite: bool) -> torch.Tensor:
    """Validate ``tokens`` and return them as float32 (same device; a view when already float32)."""
    if not isinstance(tokens, torch.Tensor):
        raise InputError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.ndim != 2:
        raise InputError(f"tokens must be an (N, C) tensor, got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise InputError(f"tokens must not be empty, got shape {tuple(tokens.shape)}")
    if not tokens.is_floating_point():
        raise InputError(f"tokens must be a floating-point tensor, got dtype {tokens.dtype}")
    x = tokens.to(torch.float32)
    # One host sync on a device tensor; callers who have already checked can skip it (check_finite=False).
    if check_finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x).all(dim=1)).sum())
        raise InputError(f"tokens contain NaN or infinite values ({bad} of {x.shape[0]} tokens)")
    return x


# ------------------------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------------------------

def affinity_reference(tokens: torch.Tensor, alpha: float = 10.0, *, check_finite: bool = True):
    """DiffCut affinity and degrees in plain torch (normalise, matmul, min-max, pow, sum).

    The same semantics as the Triton kernel and as ``diffcut_engine.graph.affinity.affinity_from_tokens``;
    written without host synchronisation (the degenerate case is a ``torch.where``), so it is also the fair
    baseline for the benchmark. On CUDA the matmul follows torch's global setting
    (``torch.backends.cuda.matmul.allow_tf32``, off by default).

    Parameters
    ----------
    tokens : torch.Tensor
        (N, C) floating-point tokens, any device, not necessarily normalised; computed in float32.
    alpha : float, default 10
        Positive exponent applied to the min-max scaled cosine similarity.
    check_finite : bool, default True
        Reject NaN and infinite tokens (one host sync on a device tensor).

    Returns
    -------
    W : torch.Tensor
        (N, N) float32 on the device of ``tokens``, entries in [0, 1]; all ones if every similarity is equal.
    d : torch.Tensor
        (N,) float64, ``W.sum(1)`` accumulated in float64.

    Raises
    ------
    InputError
        If ``tokens`` is not a 2-D non-empty floating tensor, is not finite, or ``alpha`` is not positive.
    """
    alpha = _check_alpha(alpha)
    x = _check_tokens(tokens, check_finite=check_finite)
    xn = torch.nn.functional.normalize(x, dim=1, eps=NORM_EPS)
    s = xn @ xn.T
    lo, hi = s.min(), s.max()
    spread = (hi - lo) > spread_rtol(x.shape[1]) * torch.maximum(hi.abs(), lo.abs())
    span = torch.where(spread, hi - lo, torch.ones_like(hi))
    w = ((s - lo) / span).clamp_(0.0, 1.0).pow_(alpha)
    w = torch.where(spread, w, torch.ones_like(w))
    return w, w.sum(dim=1, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------------
# Triton wrapper
# ------------------------------------------------------------------------------------------------------------

def _require_triton():
    if tl is None:
        if _TRITON_IMPORT_ERROR is not None:
            raise BackendUnavailableError(f"the fused affinity kernel needs Triton, which is installed but fails to "
                                          f"import: {_TRITON_IMPORT_ERROR}")
        raise BackendUnavailableError(f"the fused affinity kernel needs Triton, which is not installed; install it "
                                      f"with: {install_hint('triton')}")
    major = int(triton.__version__.split(".")[0])
    if major < 3:
        raise BackendUnavailableError(f"the fused affinity kernel needs Triton >= 3.0 (tl.dot input_precision), "
                                      f"found {triton.__version__}; install it with: pip install 'diffcut-engine[gpu]'")


def _check_block(block, interpreted: bool):
    if block is None:
        return None
    allowed = INTERPRETER_BLOCKS if interpreted else GPU_BLOCKS
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block not in allowed:
        where = "under the CPU interpreter" if interpreted else "on a GPU (256 only under the CPU interpreter)"
        raise InputError(f"block must be None or one of {', '.join(map(str, allowed))} {where}, got {block!r}")
    return int(block)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def fused_affinity(tokens: torch.Tensor, alpha: float = 10.0, *, block: int | None = None, precision: str = "ieee",
                   check_finite: bool = True):
    """DiffCut affinity and degrees with the fused Triton kernel (three launches, no host sync after validation).

    Parameters
    ----------
    tokens : torch.Tensor
        (N, C) floating-point tokens on a CUDA device (or on the CPU when this module was imported with
        ``TRITON_INTERPRET=1``); not necessarily normalised, computed in float32. Any C (looped over in slices).
    alpha : float, default 10
        Positive exponent applied to the min-max scaled cosine similarity.
    block : int, optional
        Side of the square Gram tiles: 16, 32, 64 or 128 on a GPU (:data:`GPU_BLOCKS`), also 256 under the
        interpreter. ``None``: autotuned on GPU (the first call per (N bucket, C, precision) benchmarks the three
        configurations of :data:`GRAM_TILES`), 256 under the interpreter, where few large programs are fast.
    precision : {"ieee", "tf32", "tf32x3"}, default "ieee"
        ``tl.dot`` input precision. ``"ieee"``: fp32 products, parity with the float32 reference (rtol ~1e-5).
        ``"tf32"``: tensor cores with a 10-bit mantissa, several times faster on GPU but ~1e-3 relative error on
        the similarities, which the power alpha amplifies in ``W`` (use it only where that is acceptable);
        ``"tf32x3"``: three tf32 products, close to fp32 accuracy, faster than ``"ieee"`` on tensor cores.
    check_finite : bool, default True
        Reject NaN and infinite tokens (costs one host sync).

    Returns
    -------
    W : torch.Tensor
        (N, N) float32 on the device of ``tokens``, exactly symmetric, entries in [0, 1]; the least similar pair
        is exactly 0 and the most similar exactly 1 (the diagonal is 1 up to rounding, but for zero tokens, whose
        similarities are all 0); all ones if every similarity is equal.
    d : torch.Tensor
        (N,) float64 row sums of ``W`` (degrees), accumulated in float64.

    Raises
    ------
    InputError
        On a wrong shape, dtype, non-finite values, non-positive alpha, unknown precision or block, or a CPU tensor
        without the interpreter.
    BackendUnavailableError
        If Triton (extra ``[gpu]``) is not installed or older than 3.0.
    """
    # 1. Check inputs
    _require_triton()
    alpha = _check_alpha(alpha)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    block = _check_block(block, _INTERPRETED)
    x = _check_tokens(tokens, check_finite=check_finite)
    if x.device.type != "cuda" and not _INTERPRETED:
        raise InputError(f"fused_affinity needs a CUDA tensor, got device {x.device} (or set TRITON_INTERPRET=1 "
                         f"before importing diffcut_engine.kernels.affinity to use the CPU interpreter)")
    n, c = x.shape

    # 2. Allocate: W holds the raw similarities after pass 1 and is scaled in place by pass 2.
    w = torch.empty((n, n), dtype=torch.float32, device=x.device)
    deg = torch.empty((n,), dtype=torch.float64, device=x.device)
    inv_norm = torch.empty((n,), dtype=torch.float32, device=x.device)
    minmax = torch.empty((2,), dtype=torch.float32, device=x.device)

    # 3. Pass 0: inverse row norms (+ min/max buffer reset)
    if _INTERPRETED:
        norm_r, norm_c, norm_warps = 128, min(256, max(16, _next_pow2(c))), 4
    else:
        norm_r, norm_c, norm_warps = 16, 128, 4
    _row_inv_norm_kernel[(triton.cdiv(n, norm_r),)](
        x, inv_norm, minmax, n, c, x.stride(0), x.stride(1),
        EPS=NORM_EPS, BLOCK_R=norm_r, BLOCK_C=norm_c, num_warps=norm_warps)

    # 4. Pass 1: Gram tiles of the upper triangle, stored raw and mirrored; global min/max by atomics
    args = (x, inv_norm, w, minmax, n, c, x.stride(0), x.stride(1), n_bucket(n))
    if block is None and not _INTERPRETED:
        def grid(meta):
            t = triton.cdiv(n, meta["BLOCK"])
            return (t, t)
        gram_minmax_autotuned[grid](*args, PRECISION=precision)
    else:
        b = block or (256 if _INTERPRETED else 64)
        # a large K slice under the interpreter (fewer numpy steps); 32 on GPU keeps registers in check
        block_k = min(128, max(16, _next_pow2(c))) if _INTERPRETED else (32 if b <= 64 else 16)
        t = triton.cdiv(n, b)
        _gram_minmax_kernel[(t, t)](*args, PRECISION=precision, BLOCK=b, BLOCK_K=block_k,
                                    num_warps=4 if b <= 32 else 8, num_stages=3)

    # 5. Pass 2: scale, power, degrees (memory bound; rows per program chosen to fill the GPU)
    if _INTERPRETED:
        rows_r, rows_c, rows_warps = 128, 1024, 4
    else:
        rows_r, rows_c, rows_warps = (8 if n >= 1024 else 4), 256, 4
    _scale_pow_degree_kernel[(triton.cdiv(n, rows_r),)](
        w, deg, minmax, n, alpha, spread_rtol(c),
        USE_LIBDEVICE=(libdevice is not None and not _INTERPRETED),
        BLOCK_R=rows_r, BLOCK_C=rows_c, num_warps=rows_warps)
    return w, deg


# ------------------------------------------------------------------------------------------------------------
# Dispatcher
# ------------------------------------------------------------------------------------------------------------

def affinity_with_degrees(tokens: torch.Tensor, alpha: float = 10.0, *, precision: str = "ieee"):
    """DiffCut affinity and degrees, with the fused Triton kernel where it can run, else the torch reference.

    The Triton path is taken when Triton is importable and either ``tokens`` is on a CUDA device or the kernels
    were built for the CPU interpreter (``TRITON_INTERPRET=1`` set before this module was imported); the path
    taken is logged at debug level.

    Parameters
    ----------
    tokens : torch.Tensor
        (N, C) floating-point tokens, any device; computed in float32.
    alpha : float, default 10
        Positive exponent.
    precision : {"ieee", "tf32", "tf32x3"}, default "ieee"
        Passed to :func:`fused_affinity` (the reference uses torch's matmul setting).

    Returns
    -------
    W : torch.Tensor
        (N, N) float32, on the device of ``tokens``.
    d : torch.Tensor
        (N,) float64 degrees.

    Raises
    ------
    InputError
        On invalid tokens or alpha.
    """
    on_cuda = isinstance(tokens, torch.Tensor) and tokens.device.type == "cuda"
    if tl is not None and (on_cuda or _INTERPRETED):
        logger.debug("affinity: Triton kernel (%s)", "interpreter" if _INTERPRETED else "compiled")
        return fused_affinity(tokens, alpha, precision=precision)
    if os.environ.get("TRITON_INTERPRET") == "1" and tl is not None:
        logger.debug("affinity: TRITON_INTERPRET=1 was set after %s was imported; using the torch reference",
                     __name__)
    else:
        logger.debug("affinity: torch reference (%s)", "Triton not available" if tl is None else "no CUDA tensor")
    return affinity_reference(tokens, alpha)


__all__ = ["affinity_reference", "fused_affinity", "affinity_with_degrees", "triton_interpreted", "PRECISIONS",
           "GRAM_TILES", "GPU_BLOCKS", "INTERPRETER_BLOCKS", "n_bucket", "gram_configs", "prune_gram_configs",
           "reset_minmax"]
