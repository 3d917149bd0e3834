"""Dense affinity of DiffCut: min-max scaled cosine similarity raised to the power alpha.

The one definition, implemented here for numpy (:func:`affinity_from_tokens`, and :func:`namespace_affinity` for
any array namespace, which the CuPy device path runs) and by the Triton kernel
(``diffcut_engine.kernels.affinity``); all are parity-tested against :func:`reference_affinity`::

    Xn = X / max(||X_i||, NORM_EPS)            (a zero token stays a zero vector)
    S = Xn Xn^T, lo = min S, hi = max S        (global)
    W = ((S - lo) / (hi - lo)) ** alpha        (in [0, 1]: lo and hi are reduced from the stored S)
    W = 1 everywhere if hi - lo <= C * eps_float32 * max(|hi|, |lo|)   (constant features; C the token width)

in float32. See docs/ALGORITHM.md.

Reference: Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features",
NeurIPS 2024 (arXiv 2406.02842), section 3; official code ``diffcut/recursive_normalized_cut.py``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import InputError
from . import memory
from ._blas import gram_lower
from .validation import check_alpha
from .xp import host_array

#: epsilon of ``torch.nn.functional.normalize``; a zero token stays a zero vector.
NORM_EPS = 1e-12


def spread_tolerance(channels: int) -> float:
    """Relative spread of the similarities at or below which the features count as constant (W all ones).

    Dot products of identical unit tokens of width C differ by up to about ``C * eps_float32`` from rounding alone;
    min-max scaling such a spread would turn rounding noise into the whole [0, 1] range.
    """
    return float(channels) * float(np.finfo(np.float32).eps)


def as_token_matrix(features, *, name: str = "features") -> tuple:
    """Validate a feature grid and flatten it to tokens.

    Parameters
    ----------
    features : array_like
        (h, w, C) grid of feature vectors (anything ``numpy.asarray`` accepts, including CPU torch tensors).

    Returns
    -------
    tokens : numpy.ndarray
        (h*w, C) float32, row-major over (h, w).
    grid : tuple of int
        (h, w).

    Raises
    ------
    InputError
        If ``features`` is not 3-D, is empty, or contains NaN or infinity.
    """
    x = host_array(features, name)  # torch tensors too: detached (requires_grad), bfloat16 widened to float32
    if x.ndim != 3:
        raise InputError(f"{name} must be an (h, w, C) array, got shape {tuple(x.shape)}")
    h, w, c = x.shape
    if h * w == 0 or c == 0:
        raise InputError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise InputError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    x = x.reshape(h * w, c)
    wide = x.dtype.kind == "f" and x.dtype.itemsize > 4
    if wide and not np.all(np.isfinite(x)):  # (NaN / inf named before the float32 rounding, which adds its own)
        bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
        raise InputError(f"{name} contain NaN or infinite values ({bad} of {h * w} tokens)")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
        if wide:
            raise InputError(f"{name} hold values beyond float32's range ({bad} of {h * w} tokens), where the graph "
                             "stage works; scale the features (the cosine affinity does not depend on their scale)")
        raise InputError(f"{name} contain NaN or infinite values ({bad} of {h * w} tokens)")
    return x, (h, w)


def row_norms(tokens: np.ndarray) -> np.ndarray:
    """The divisors of :func:`l2_normalize`: ``max(||x_i||, 1e-12)`` per row, float32 (NaN or inf where a row is
    not finite).

    ``||x_i||`` is ``float32(sqrt(float64(s_i)))`` with ``s_i`` the exact sum of the row's squares (each square of
    a float32 is exact in float64), so the value does not depend on a summation order and the C++ core
    (``row_norm`` in csrc/src/affinity.cpp, the C API's normalisation) computes the same bits. Here: a float64 sum
    in numpy's order is within ``4 (C - 1) 2^-53`` of ``s_i``, the function is monotone, so where both ends of that
    interval give one float32 it is the answer; the rare rows whose interval straddles a float32 rounding boundary
    take the exactly rounded sum (``math.fsum``).
    """
    x = np.asarray(tokens)
    s = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    g = 4.0 * (x.shape[1] - 1) * 2.0 ** -53 if x.shape[1] > 1 else 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(s - s * g).astype(np.float32)
        open_rows = np.flatnonzero(norms != np.sqrt(s + s * g).astype(np.float32))  # (NaN rows too)
        for i in open_rows:
            row = x[i].astype(np.float64)
            norms[i] = np.float32(math.sqrt(math.fsum((row * row).tolist())))
    return np.maximum(norms, NORM_EPS)


def l2_normalize(tokens: np.ndarray) -> np.ndarray:
    """Normalise rows to unit L2 norm (float32), as ``F.normalize(x, dim=-1)``: zero rows stay zero."""
    return (tokens / row_norms(tokens)[:, None]).astype(np.float32, copy=False)


def power_inplace(s, k: int, work=None):
    """s ** k for a positive integer k by binary powering; ``s`` is destroyed.

    Returns the array that holds the result: ``s`` itself when k is a power of two, else ``work`` (an array
    shaped like ``s``, allocated when not given). In-place operators only, so it runs on numpy and CuPy arrays
    alike (the device affinity uses it too).
    """
    result = None
    while True:
        if k & 1:
            if result is None:
                if work is None:
                    result = s.copy()
                else:
                    work[...] = s
                    result = work
            else:
                result *= s
        k >>= 1
        if not k:
            return result
        s *= s


#: Integer exponents up to this use binary powering (a few multiplications) instead of ``np.power``.
MAX_SQUARING_EXPONENT = 64
#: Elements per chunk of the scale-and-power pass (a chunk and its temporary stay in the L2 cache).
_CHUNK_ELEMENTS = 1 << 16
#: Side of the square tiles of the mirror pass.
_MIRROR_TILE = 128


def affinity_from_tokens(tokens: np.ndarray, alpha: float = 10.0, *, exact_power: bool = False,
                         dtype=np.float32, pooled: bool = False) -> np.ndarray:
    """W = ((S - min S) / (max S - min S)) ** alpha with S = X X^T, computed in float32.

    ``tokens`` must already be L2-normalised. The min-max scaling is global over the whole matrix, so the diagonal
    is 1 and the least similar pair is exactly 0. If all similarities are equal (constant features) every entry
    is 1.

    Two paths:

    - default: S by BLAS ``ssyrk`` (one triangle: half the flops of a general product, and exactly symmetric;
      from 256 tokens in two bands, every call single-threaded: :func:`._blas.gram_lower`, the C++ core's calls),
      mirrored to the other triangle in cache-sized tiles, then passes over the whole matrix as one contiguous
      array (NumPy's element-wise loops run slower on row blocks of a wider matrix): min and max,
      then, chunk by chunk in cache, the min-max scaling, the power (an integer ``alpha``, the paper's 10, by
      binary powering: within a few float32 ulps of ``np.power``, and cheaper) and the write in ``dtype``. A
      spread ``max S - min S`` at rounding level (at most ``C * eps_float32``, C the token width) is treated as
      constant features: min-max scaling would otherwise blow float32 rounding noise of identical tokens up to
      the whole [0, 1] range.
    - ``exact_power=True`` (``compat="official"``): the official operations on full matrices, S by a general
      product and the correctly rounded ``np.power``; the exact pattern of float32 zeros (the global minimum pair
      and entries that underflow for large alpha) decides there which nodes the official code drops, and no
      rounding-level guard is applied.

    Parameters
    ----------
    dtype : numpy dtype, default float32
        Dtype of the returned matrix. ``numpy.float64`` returns exactly the float32 result widened (what the
        float64 eigensolvers consume), without a separate full-size conversion pass.
    pooled : bool
        Take the matrices from :mod:`.memory` (the result must then be given back to it, and the
        caller owns it exclusively).
    """
    if exact_power:
        return _affinity_official(tokens, alpha, dtype)
    n, c = tokens.shape
    s = _gram_lower(tokens, pooled=pooled)
    _mirror_lower(s)
    flat = s.reshape(-1)
    lo, hi = flat.min(), flat.max()
    if np.dtype(dtype) == s.dtype:
        out = s
    else:
        out = memory.empty((n, n), dtype) if pooled else np.empty((n, n), dtype=dtype)
    if not hi - lo > spread_tolerance(c) * max(abs(hi), abs(lo)):
        out[...] = 1
        if pooled and out is not s:
            memory.give_back(s)
        return out
    lo, span = np.float32(lo), np.float32(hi - lo)
    squaring = float(alpha).is_integer() and 1 <= alpha <= MAX_SQUARING_EXPONENT
    chunk = _CHUNK_ELEMENTS
    work = np.empty(min(chunk, flat.size), dtype=s.dtype)
    dst = out.reshape(-1)
    for a in range(0, flat.size, chunk):
        blk = flat[a:a + chunk]
        blk -= lo
        blk /= span
        if squaring:
            res = power_inplace(blk, int(alpha), work[:blk.size])
        else:
            res = np.power(blk, np.float32(alpha), out=blk, dtype=np.float32)
        if out is not s or res is not blk:
            dst[a:a + chunk] = res
    if pooled and out is not s:
        memory.give_back(s)
    return out


def _mirror_lower(s: np.ndarray, tile: int = _MIRROR_TILE) -> None:
    """Copy the lower triangle of a square C-ordered matrix onto its upper one, tile by tile (a transposed
    read stays in cache)."""
    n = s.shape[0]
    for i in range(0, n, tile):
        e = min(i + tile, n)
        diag = s[i:e, i:e]
        np.copyto(diag, diag.T, where=_upper_mask(e - i))
        for j in range(e, n, tile):
            s[i:e, j:j + tile] = s[j:j + tile, i:e].T


@functools.lru_cache(maxsize=8)
def _upper_mask(m: int) -> np.ndarray:
    """Mask of the strict upper triangle of an (m, m) block (cached: the blocks repeat)."""
    return np.triu(np.ones((m, m), dtype=bool), 1)


def _gram_lower(tokens: np.ndarray, pooled: bool = False) -> np.ndarray:
    """X X^T in float32 by :func:`._blas.gram_lower` (a fixed set of single-threaded BLAS calls, the C++ core's:
    the same floats on every CPU and at every thread count); C-ordered, valid on and below the diagonal only."""
    x = np.ascontiguousarray(tokens, dtype=np.float32)
    n = x.shape[0]
    s = memory.empty((n, n), np.float32) if pooled else np.empty((n, n), dtype=np.float32)
    gram_lower(x, s)
    return s


def _affinity_official(tokens: np.ndarray, alpha: float, dtype) -> np.ndarray:
    """The official operations on the full float32 matrix: general product, min-max, ``np.power``."""
    s = tokens @ tokens.T
    lo, hi = s.min(), s.max()
    if not hi > lo:
        s[...] = 1
    else:
        s -= lo
        s /= hi - lo
        np.power(s, np.float32(alpha), out=s, dtype=np.float32)
    return s.astype(dtype, copy=False)


def affinity(features, alpha: float = 10.0) -> np.ndarray:
    """DiffCut affinity matrix of a feature grid.

    Parameters
    ----------
    features : array_like
        (h, w, C) feature grid; tokens are L2-normalised here (normalised input is unchanged).
    alpha : float, default 10
        Exponent applied to the min-max scaled cosine similarity (the paper's soft threshold).

    Returns
    -------
    numpy.ndarray
        (N, N) float32 with N = h*w, symmetric, entries in [0, 1], tokens in row-major (h, w) order.

    Raises
    ------
    InputError
        On a wrong shape, NaN or infinite features, or a non-positive alpha.
    """
    alpha = check_alpha(alpha)
    tokens, _ = as_token_matrix(features)
    return affinity_from_tokens(l2_normalize(tokens), alpha)


def namespace_affinity(xp, tokens, alpha: float):
    """W of (N, C) float32 tokens in array namespace ``xp`` (numpy or CuPy): no validation, no host sync.

    The module's definition with the namespace's own product (``xp.matmul``) and in-place passes; what the
    device graph stage runs on CuPy arrays. The degenerate case (constant features) is decided by a 0-d array,
    so no value is read back.
    """
    norms = xp.sqrt(xp.einsum("ij,ij->i", tokens, tokens))
    s = tokens / xp.maximum(norms, NORM_EPS)[:, None]  # as l2_normalize: a zero token stays zero
    s = xp.matmul(s, s.T)
    lo, hi = s.min(), s.max()
    spread = (hi - lo) > spread_tolerance(tokens.shape[1]) * xp.maximum(abs(hi), abs(lo))
    s -= lo
    s /= xp.where(spread, hi - lo, xp.ones_like(hi))
    if float(alpha).is_integer() and 1 <= alpha <= MAX_SQUARING_EXPONENT:
        s = power_inplace(s, int(alpha))
    else:
        xp.power(s, xp.float32(alpha), out=s)
    # constant similarities: every entry is 1 (s holds rounding noise raised to alpha there, up to ~6e-4 above 0 for
    # alpha 0.5, so it is cleared first); otherwise s is multiplied by 1 and 0 is added, exactly
    s *= spread
    s += ~spread
    return s


def reference_affinity(tokens, alpha: float) -> np.ndarray:
    """The definition, written plainly in float64 from (N, C) tokens (not necessarily normalised): the
    reference that every implementation is parity-tested against (to float32 rounding)."""
    x = np.asarray(tokens, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1), NORM_EPS)[:, None]
    s = x @ x.T
    lo, hi = s.min(), s.max()
    if not hi - lo > spread_tolerance(x.shape[1]) * max(abs(hi), abs(lo)):
        return np.ones_like(s)
    return ((s - lo) / (hi - lo)) ** float(alpha)
