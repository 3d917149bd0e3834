"""Split scoring: the candidate thresholds along a Fiedler vector and the exact NCut of every candidate split.

One formulation serves every path. The ``num`` official thresholds cut the nodes into ``num + 1`` bins (node i
is on the "1"-side of candidate t iff its bin exceeds t), the bin-to-bin association ``B = G^T A G`` (G the
one-hot bin matrix) holds every cut, and :func:`ncut_from_bins` reads all candidates' NCut off cumulative sums
of B (non-negative terms only: no ``vol - assoc`` cancellation). The host computes ``G^T A`` with a sparse
product (:func:`binned_scores`), a batch of padded subgraphs with one-hot products in its array namespace
(:func:`stacked_scores`). See docs/ALGORITHM.md.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from .xp import array_namespace

#: Number of candidate thresholds along the Fiedler vector (official value).
NUM_THRESHOLDS = 100


def candidate_thresholds(y, num: int = NUM_THRESHOLDS, *, lo=None, hi=None):
    """The official candidates: ``num`` evenly spaced values in [0.99 min(y), 0.99 max(y)], in y's dtype.

    Computed as ``numpy.linspace`` computes them, operation by operation, so that a stack of vectors (last axis;
    any array namespace with numpy's operators) gets, row by row, exactly ``numpy.linspace``'s values.

    Parameters
    ----------
    y : array
        (..., n) vectors.
    num : int
        Number of thresholds.
    lo, hi : array, optional
        (...) minimum and maximum of each vector, when the caller knows them (e.g. over the valid entries only).

    Returns
    -------
    array
        (..., num) increasing thresholds.
    """
    if y.ndim == 1 and lo is None and hi is None:
        return np.linspace(y.min() * 0.99, y.max() * 0.99, num, dtype=y.dtype)
    xp = array_namespace(y)
    start = (y.min(axis=-1) if lo is None else lo) * 0.99
    stop = (y.max(axis=-1) if hi is None else hi) * 0.99
    div = num - 1
    delta = stop - start
    step = delta / div
    ramp = xp.arange(num, dtype=y.dtype)
    # numpy's linspace divides first when the step underflows to zero (gh-5437)
    thr = xp.where((step == 0)[..., None], (ramp / div) * delta[..., None], ramp * step[..., None])
    thr = thr + start[..., None]
    thr[..., -1] = stop
    return thr


def threshold_bins(y, thresholds):
    """Bin of every node: the number of thresholds strictly below its y (0..k), along the last axis.

    Node i is on the "1"-side (``y > theta_t``) of candidate t exactly when ``bin_i > t``, so each candidate
    split is a union of whole bins and ties in y never separate.
    """
    if y.ndim == 1 and isinstance(y, np.ndarray):
        return np.searchsorted(thresholds, y, side="left")
    return (y[..., :, None] > thresholds[..., None, :]).sum(axis=-1)


def ncut_from_bins(B, vol_bin, cnt_bin):
    """NCut of the ``k`` candidate splits from the bin sums (leading axes are a batch).

    Parameters
    ----------
    B : array
        (..., k+1, k+1) association between bins, ``B[c, c'] = sum_{i in c, j in c'} A_ij``.
    vol_bin, cnt_bin : array
        (..., k+1) volume and node count of each bin.

    Returns
    -------
    array
        (..., k) float64 NCut values, ``inf`` where a side is empty or the value is not finite.
    """
    xp = array_namespace(B)
    k = B.shape[-1] - 1
    # cut(t) = sum_{c > t} sum_{c' <= t} B[c, c']: prefix over c', then suffix over c, read at c = t + 1
    right = xp.cumsum(B, axis=-1)
    below = xp.flip(xp.cumsum(xp.flip(right, axis=-2), axis=-2), axis=-2)
    cut = xp.diagonal(below[..., 1:, :k], axis1=-2, axis2=-1)
    vol_one = xp.flip(xp.cumsum(xp.flip(vol_bin, axis=-1), axis=-1), axis=-1)[..., 1:]
    vol_zero = xp.cumsum(vol_bin, axis=-1)[..., :k]
    cnt_one = xp.flip(xp.cumsum(xp.flip(cnt_bin, axis=-1), axis=-1), axis=-1)[..., 1:]
    cnt_zero = xp.cumsum(cnt_bin, axis=-1)[..., :k]
    with np.errstate(divide="ignore", invalid="ignore") if xp is np else nullcontext():
        values = cut / vol_one + cut / vol_zero
    bad = (cnt_one == 0) | (cnt_zero == 0) | ~xp.isfinite(values)
    return xp.where(bad, xp.inf, values)


def binned_scores(A: np.ndarray, d: np.ndarray, y: np.ndarray, thresholds: np.ndarray):
    """NCut of every split ``y > theta`` of one graph in one O(n^2) pass: ``(values, bins, GA)``.

    ``GA`` (k+1, n) holds the sums of A's rows over each bin (``GA[c, i]`` is node i's affinity to bin c): one
    sparse-times-dense product, a single pass over A.
    """
    import scipy.sparse

    n, k = y.size, thresholds.size
    bins = threshold_bins(y, thresholds)
    count = np.bincount(bins, minlength=k + 1)
    indptr = np.zeros(k + 2, dtype=np.intp)
    np.cumsum(count, out=indptr[1:])
    # the one-hot (k+1, n) bin matrix built as CSR directly: row c holds the nodes of bin c, in increasing order
    G = scipy.sparse.csr_matrix((np.ones(n), np.argsort(bins, kind="stable"), indptr), shape=(k + 1, n))
    GA = np.asarray(G @ np.asarray(A, dtype=np.float64))  # (k+1, n): row c = sum of A's rows in bin c
    # B = G A G^T as one weighted histogram of GA's entries (no transposed copy of GA)
    flat = (np.arange(k + 1)[:, None] * (k + 1) + bins[None, :]).ravel()
    B = np.bincount(flat, weights=GA.ravel(), minlength=(k + 1) ** 2).reshape(k + 1, k + 1).T
    vol_bin = np.bincount(bins, weights=d, minlength=k + 1)
    return ncut_from_bins(B, vol_bin, count), bins, GA


def binned_ncut_values(A: np.ndarray, d: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exact NCut of every split ``y > theta`` in one O(n^2) pass, with no loop over the thresholds.

    Parameters
    ----------
    A : numpy.ndarray
        (n, n) symmetric non-negative affinity.
    d : numpy.ndarray
        (n,) degrees ``A.sum(1)``.
    y : numpy.ndarray
        (n,) Fiedler vector.
    thresholds : numpy.ndarray
        (k,) candidate thresholds, increasing.

    Returns
    -------
    numpy.ndarray
        (k,) float64 NCut values, equal (to rounding) to :func:`ncut_values` of the indicators
        ``y > thresholds``; +inf where a side is empty.
    """
    return binned_scores(A, d, y, thresholds)[0]


def stacked_scores(xp, A, d, y, real, num_thresholds: int):
    """Best threshold split of each padded subgraph of a stack, all in namespace ``xp``.

    Parameters
    ----------
    A : array
        (b, n, n) float64 affinities, zero outside each subgraph's ``real`` block.
    d, y : array
        (b, n) degrees and Fiedler vectors (zero on the padding).
    real : array
        (b, n) bool, the valid entries.

    Returns
    -------
    values : array
        (b, k) NCut of every candidate (``inf`` for an empty side).
    thresholds : array
        (b, k).
    """
    K = num_thresholds
    thr = candidate_thresholds(y, K, lo=xp.where(real, y, xp.inf).min(axis=1),
                               hi=xp.where(real, y, -xp.inf).max(axis=1))
    bins = threshold_bins(y, thr)  # c_i in 0..K
    G = ((bins[:, :, None] == xp.arange(K + 1)[None, None, :]) & real[:, :, None]).astype(xp.float64)
    Gt = G.transpose(0, 2, 1)
    B = xp.matmul(Gt, xp.matmul(A, G))  # (b, K+1, K+1) affinity between bins
    vol_bin = xp.matmul(Gt, d[:, :, None])[:, :, 0]
    return ncut_from_bins(B, vol_bin, G.sum(axis=1)), thr


def ncut_values(A: np.ndarray, d: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Exact Shi-Malik NCut of many candidate bipartitions given as indicators, in A's dtype.

    NCut(S) = cut(S, S') / vol(S) + cut(S, S') / vol(S'), with cut(S, S') = vol(S) - assoc(S, S). This equals the
    official ``z^T (D - A) z / z^T D z`` with ``z = (1 + x) - b (1 - x)``, ``b = vol(S) / vol(S')``; computed in
    the dtype of ``A`` from the (n, k) indicators, as the official code does (``compat="official"``).

    Parameters
    ----------
    A : numpy.ndarray
        (n, n) affinity.
    d : numpy.ndarray
        (n,) degrees.
    X : numpy.ndarray
        (n, k) 0/1 indicators of the "1"-side of each candidate.

    Returns
    -------
    numpy.ndarray
        (k,) NCut values; +inf for a candidate with an empty side.
    """
    X = X.astype(A.dtype, copy=False)
    vol_s = d @ X
    assoc = np.einsum("ik,ik->k", X, A @ X)
    cut = vol_s - assoc
    with np.errstate(divide="ignore", invalid="ignore"):
        values = cut / vol_s + cut / (d.sum() - vol_s)
    values[~np.isfinite(values)] = np.inf
    return values


def expected_random_ncut(A: np.ndarray, d: np.ndarray) -> float:
    """Expected NCut of a uniformly random split of a graph, n / (n - 1) * (1 - trace(A) / vol).

    For a uniformly random subset S of m nodes, E[cut(S, S')] = m (n - m) / (n (n - 1)) * (vol - trace(A)) and
    E[vol(S)] = m / n * vol; the ratio of expectations E[cut]/E[vol(S)] + E[cut]/E[vol(S')] then no longer
    depends on m. For a structureless (rank-one) graph every split has exactly this NCut when the weights are
    uniform, and at least it otherwise.
    """
    n = A.shape[0]
    vol = float(d.sum())
    return n / (n - 1) * (1.0 - float(np.trace(A)) / vol)


def mean_sweep_ncut(A, d, y, num) -> float:
    """Mean NCut of the splits at ``num`` evenly spaced rank positions of y (ties broken by node order)."""
    n = y.size
    rank = np.empty(n, dtype=np.float64)
    rank[np.argsort(y, kind="stable")] = np.arange(n)
    positions = np.unique(np.linspace(0.5, n - 1.5, min(num, n - 1)))
    values = binned_ncut_values(A, d, rank, positions)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("inf")


def best_threshold_split(A: np.ndarray, d: np.ndarray, y: np.ndarray, *, num_thresholds: int = NUM_THRESHOLDS,
                         method: str = "binned"):
    """Best of ``num_thresholds`` splits ``y > theta`` by exact NCut (the first one on ties, as ``argmin``).

    ``method="binned"`` scores all candidates with :func:`binned_ncut_values` (O(n^2)); ``"indicators"``
    forms the (n, k) indicator matrix and scores it with :func:`ncut_values` (O(n^2 k)), in the dtype of ``A``
    as the official code does (used by ``compat="official"``).

    Returns
    -------
    side : numpy.ndarray
        (n,) bool, True on the "1"-side.
    value : float
        Its NCut value (``inf`` if no candidate splits the graph).
    """
    thresholds = candidate_thresholds(y, num_thresholds)
    if method == "binned":
        values = binned_ncut_values(A, d, y, thresholds)
    else:
        values = ncut_values(A, d, y[:, None] > thresholds[None, :])
    best = int(np.argmin(values))
    return y > thresholds[best], float(values[best])
