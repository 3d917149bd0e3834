"""AutoSC: one-shot K-way spectral clustering of a feature grid, with K and alpha chosen by an eigengap heuristic.

The variant ``DiffCut_AutoSC`` of the official DiffCut code (``diffcut/autosc.py``), which the paper's evaluation
scripts do not use. On DiffCut's affinity (:mod:`.affinity`: min-max scaled cosine similarity raised to the power
alpha), for every alpha in ``alphas``:

1. ``W = S ** alpha`` with S the min-max scaled similarity (computed once), ``D = diag(W 1)``;
2. all eigenpairs of the normalised Laplacian ``L = D^-1/2 (D - W) D^-1/2`` (ascending eigenvalues ``lam``), and
   the generalised eigenvectors ``D^-1/2 U``;
3. the eigengap score ``g_i = (lam_i - m_i) / (m_i + 1e-6)`` with ``m_i = mean(lam_0 .. lam_i)``.

The alpha with the largest ``max g`` wins (the first one on ties, and only a score above 0 counts); K is the
index of that maximum, i.e. the number of eigenvalues before the gap. The first K generalised eigenvectors are
discretised by ``cluster_qr`` (Damle, Minden and Ying, "Simple, direct and efficient multi-way spectral
clustering", 2019): a column-pivoted QR of ``V^T`` picks K representative nodes, the SVD of their rows gives the
rotation ``U Vt`` and each node takes the column of the largest ``|V U Vt|``.

``compat="official"`` (default, like every stage: the published behaviour) and ``"official-float32"`` reproduce
the official code: float32 throughout and -- its bug, ``autosc.py:59`` -- the eigenvectors of the *last* alpha of
the loop, whichever alpha was selected. ``compat="clean"`` uses the selected alpha's eigenvectors and solves the
eigenproblems in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from ..errors import InputError
from .affinity import affinity_from_tokens, as_token_matrix, l2_normalize
from .validation import DEFAULT_COMPAT, check_alpha, check_compat

__all__ = ["AUTOSC_ALPHAS", "AutoSCResult", "autosc", "autosc_labels", "eigengap_scores", "cluster_qr"]

#: The alphas the official code tries.
AUTOSC_ALPHAS = (1, 5, 10, 15)
#: Regulariser of the eigengap heuristic's denominator (official value).
GAP_EPS = 1e-6


@dataclass(frozen=True)
class AutoSCResult:
    """The outcome of :func:`autosc`.

    Attributes
    ----------
    labels : numpy.ndarray
        (h, w) int32 cluster ids 0..K'-1 (K' <= K: ``cluster_qr`` may leave a column unused).
    alpha : float
        The selected exponent.
    num_clusters : int
        K chosen by the eigengap heuristic.
    gap : float
        The winning eigengap score (0 when no alpha gave a positive score; then one cluster).
    """

    labels: np.ndarray
    alpha: float
    num_clusters: int
    gap: float


def eigengap_scores(eigenvalues: np.ndarray) -> np.ndarray:
    """``(lam_i - m_i) / (m_i + 1e-6)`` with ``m_i`` the running mean of the ascending eigenvalues up to i."""
    lam = np.asarray(eigenvalues)
    cummean = np.cumsum(lam) / np.arange(1, lam.size + 1, dtype=lam.dtype)
    return (lam - cummean) / (cummean + lam.dtype.type(GAP_EPS))


def cluster_qr(vectors: np.ndarray) -> np.ndarray:
    """Discretise (N, K) spectral embedding vectors into K clusters by pivoted QR and an SVD rotation.

    Returns
    -------
    numpy.ndarray
        (N,) int64 cluster ids in 0..K-1 (the column of the largest rotated magnitude).
    """
    from scipy.linalg import qr, svd

    k = vectors.shape[1]
    if k < 1:
        raise InputError("cluster_qr needs at least one vector")
    _, piv = qr(vectors.T, pivoting=True, mode="r")
    u, _, vt = svd(vectors[piv[:k], :].T)
    return np.abs(vectors @ (u @ vt.conj())).argmax(axis=1)


def _spectrum(w: np.ndarray, dtype) -> Tuple[np.ndarray, np.ndarray]:
    """Ascending eigenvalues of ``D^-1/2 (D - W) D^-1/2`` and its generalised eigenvectors ``D^-1/2 U``."""
    w = w.astype(dtype, copy=False)
    d_isqrt = 1.0 / np.sqrt(w.sum(axis=1))
    lap = -w * d_isqrt[:, None] * d_isqrt[None, :]
    lap[np.diag_indices_from(lap)] += 1.0  # D^-1/2 D D^-1/2 = I
    lam, u = np.linalg.eigh(lap)
    return lam, u * d_isqrt[:, None]


def autosc(features, alphas: Sequence[float] = AUTOSC_ALPHAS, *, compat: str = DEFAULT_COMPAT) -> AutoSCResult:
    """AutoSC of one feature grid, with the selected alpha and K (see the module docstring).

    Parameters
    ----------
    features : array_like
        (h, w, C) feature grid; tokens are L2-normalised here.
    alphas : sequence of float, default (1, 5, 10, 15)
        Exponents tried, in order.
    compat : {"official", "official-float32", "clean"}, default "official"
        ``official`` and ``official-float32``: float32 and the official code's last-alpha eigenvectors;
        ``clean``: float64 and the selected alpha's eigenvectors.

    Returns
    -------
    AutoSCResult

    Raises
    ------
    InputError
        On a wrong feature shape, NaN/inf features, an empty ``alphas`` or a non-positive alpha.

    References
    ----------
    Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features", NeurIPS
    2024 (arXiv 2406.02842); official code ``diffcut/autosc.py``.
    """
    compat = check_compat(compat)
    if isinstance(alphas, (int, float)) or not len(alphas):
        raise InputError(f"alphas must be a non-empty sequence of positive numbers, got {alphas!r}")
    alphas = tuple(check_alpha(a) for a in alphas)
    tokens, (h, w) = as_token_matrix(features)
    official = compat != "clean"
    dtype = np.float32 if official else np.float64
    # The min-max scaled similarity, computed once (alpha 1), as the official code does.
    scaled = affinity_from_tokens(l2_normalize(tokens), 1.0, exact_power=official)
    best_gap, best_alpha, k, vectors, last = 0.0, alphas[0], 0, None, None
    for alpha in alphas:
        wa = scaled if alpha == 1 else np.power(scaled, np.float32(alpha), dtype=np.float32)
        lam, vecs = _spectrum(wa, dtype)
        gaps = eigengap_scores(lam)
        i = int(np.argmax(gaps))
        if gaps[i] > best_gap:
            best_gap, best_alpha, k, vectors = float(gaps[i]), alpha, i, vecs
        last = vecs
    if official and vectors is not None:
        vectors = last  # autosc.py:59 slices the eigenvectors of the loop's last alpha
    if k < 1 or vectors is None:
        raw = np.zeros(h * w, dtype=np.int64)  # no positive gap, or K=0: one cluster (the official code fails)
    else:
        raw = cluster_qr(np.ascontiguousarray(vectors[:, :k]))
    _, labels = np.unique(raw, return_inverse=True)
    return AutoSCResult(labels=labels.reshape(h, w).astype(np.int32), alpha=float(best_alpha), num_clusters=k,
                        gap=best_gap)


def autosc_labels(features, alphas: Sequence[float] = AUTOSC_ALPHAS, *, compat: str = DEFAULT_COMPAT) -> np.ndarray:
    """(h, w) int32 AutoSC cluster ids 0..K'-1 of an (h, w, C) feature grid (:func:`autosc`'s ``labels``)."""
    return autosc(features, alphas, compat=compat).labels
