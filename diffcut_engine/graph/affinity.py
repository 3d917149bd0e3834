"""Dense affinity of DiffCut: min-max scaled cosine similarity raised to the power alpha.

Reference: Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features",
NeurIPS 2024 (arXiv 2406.02842), section 3; official code ``diffcut/recursive_normalized_cut.py``.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

#: epsilon of ``torch.nn.functional.normalize``; a zero token stays a zero vector.
_NORM_EPS = 1e-12


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
    try:
        x = np.asarray(features)
    except Exception as exc:  # e.g. a CUDA tensor
        raise InputError(f"{name} must be an array convertible to numpy (move device tensors to the host): "
                         f"{exc}") from exc
    if x.ndim != 3:
        raise InputError(f"{name} must be an (h, w, C) array, got shape {tuple(x.shape)}")
    h, w, c = x.shape
    if h * w == 0 or c == 0:
        raise InputError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise InputError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    x = x.reshape(h * w, c).astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
        raise InputError(f"{name} contain NaN or infinite values ({bad} of {h * w} tokens)")
    return x, (h, w)


def l2_normalize(tokens: np.ndarray) -> np.ndarray:
    """Normalise rows to unit L2 norm (float32), as ``F.normalize(x, dim=-1)``: zero rows stay zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", tokens, tokens, dtype=np.float32))
    return (tokens / np.maximum(norms, _NORM_EPS)[:, None]).astype(np.float32, copy=False)


def _power_inplace(s: np.ndarray, k: int, work: np.ndarray = None) -> np.ndarray:
    """s ** k for a positive integer k by binary powering; ``s`` is destroyed.

    Returns the array that holds the result: ``s`` itself when k is a power of two, else ``work`` (an array
    shaped like ``s``, allocated when not given).
    """
    result = None
    while True:
        if k & 1:
            if result is None:
                if work is None:
                    result = s.copy()
                else:
                    np.copyto(work, s)
                    result = work
            else:
                result *= s
        k >>= 1
        if not k:
            return result
        np.multiply(s, s, out=s)


#: Integer exponents up to this use binary powering (a few multiplications) instead of ``np.power``.
_MAX_SQUARING_EXPONENT = 64
#: Elements per row block of the scale-and-power pass (a block and its temporary stay in the L2 cache).
_BLOCK_ELEMENTS = 1 << 16


def affinity_from_tokens(tokens: np.ndarray, alpha: float = 10.0, *, exact_power: bool = False,
                         dtype=np.float32) -> np.ndarray:
    """W = ((S - min S) / (max S - min S)) ** alpha with S = X X^T, computed in float32.

    ``tokens`` must already be L2-normalised. The min-max scaling is global over the whole matrix, so the diagonal
    is 1 and the least similar pair is exactly 0. If all similarities are equal (constant features) every entry
    is 1.

    For an integer ``alpha`` (the paper's 10) the power is taken by binary powering: about 3x faster than
    ``np.power`` and within a few float32 ulps of it. ``exact_power=True`` uses ``np.power`` (the correctly
    rounded ``powf``), which ``compat="official"`` needs: there the exact pattern of float32 zeros (the global
    minimum pair and entries that underflow for large alpha) decides which nodes the official code drops.
    Scaling and power run over row blocks that stay in cache, with one small temporary.

    Parameters
    ----------
    dtype : numpy dtype, default float32
        Dtype of the returned matrix. ``numpy.float64`` returns exactly the float32 result widened (what the
        float64 eigensolvers consume), without a separate full-size conversion pass.
    """
    s = tokens @ tokens.T
    n = s.shape[0]
    out = s if np.dtype(dtype) == s.dtype else np.empty((n, n), dtype=dtype)
    lo, hi = s.min(), s.max()
    if not hi > lo:
        out[...] = 1
        return out
    span = hi - lo
    squaring = not exact_power and float(alpha).is_integer() and 1 <= alpha <= _MAX_SQUARING_EXPONENT
    step = max(1, _BLOCK_ELEMENTS // n)
    work = np.empty((min(step, n), n), dtype=s.dtype)
    for a in range(0, n, step):
        blk = s[a:a + step]
        blk -= lo
        blk /= span
        if squaring:
            res = _power_inplace(blk, int(alpha), work[:blk.shape[0]])
        else:
            res = np.power(blk, np.float32(alpha), out=blk, dtype=np.float32)
        if out is not s:
            out[a:a + step] = res
        elif res is not blk:
            blk[...] = res
    return out


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
    if not (isinstance(alpha, (int, float, np.floating, np.integer)) and alpha > 0):
        raise InputError(f"alpha must be a positive number, got {alpha!r}")
    tokens, _ = as_token_matrix(features)
    return affinity_from_tokens(l2_normalize(tokens), float(alpha))
