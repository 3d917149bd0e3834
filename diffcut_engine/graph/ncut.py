"""Recursive two-way Normalized Cut, exactly as DiffCut runs it.

References
----------
J. Shi and J. Malik, "Normalized Cuts and Image Segmentation", IEEE TPAMI 22(8), 2000.
P. Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features",
NeurIPS 2024 (arXiv 2406.02842); official code ``diffcut/recursive_normalized_cut.py`` (commit aa16df4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np
import scipy.linalg

from ..errors import InputError
from .affinity import affinity_from_tokens, as_token_matrix, l2_normalize

COMPAT_MODES = ("clean", "official")

#: Number of candidate thresholds along the Fiedler vector (official value).
NUM_THRESHOLDS = 100


def fiedler_vector(A: np.ndarray, d: np.ndarray, *, solver: str = "subset") -> np.ndarray:
    """Generalised Fiedler vector of a graph: the y solving (D - A) y = lambda D y for the second-smallest lambda.

    Computed as y = D^-1/2 u2 where u2 is the eigenvector of the second-smallest eigenvalue of the symmetric
    normalised Laplacian D^-1/2 (D - A) D^-1/2. The sign is fixed so that the entry of largest magnitude is
    positive (the official rule; it only decides which side is "1" and hence the traversal order).

    Parameters
    ----------
    A : numpy.ndarray
        (n, n) symmetric non-negative affinity of the (sub)graph, n >= 2, float32 or float64.
    d : numpy.ndarray
        (n,) degrees ``A.sum(1)``, positive.
    solver : {"subset", "full"}
        ``subset``: LAPACK ``syevr`` for the two smallest eigenpairs only; ``full``: all eigenpairs with
        ``syevd`` (what ``torch.linalg.eigh`` does; used by ``compat="official"``).

    Returns
    -------
    numpy.ndarray
        (n,) Fiedler vector in the dtype of ``A``.
    """
    dis = 1.0 / np.sqrt(d)
    # (D^-1/2 (D - A)) D^-1/2 in this association order, as the official product of diagonal matrices computes it.
    lap = -A.copy()
    lap[np.diag_indices_from(lap)] += d
    lap = (dis[:, None] * lap) * dis[None, :]
    if solver == "subset":
        _, vecs = scipy.linalg.eigh(lap, subset_by_index=[0, 1], driver="evr", check_finite=False)
    elif solver == "full":
        _, vecs = np.linalg.eigh(lap)
    else:
        raise InputError(f"unknown eigensolver {solver!r}; choose 'subset' or 'full'")
    y = dis * vecs[:, 1]
    big = np.argmax(np.abs(y))
    if y[big] < 0:
        y = -y
    return y


def candidate_thresholds(y: np.ndarray, num: int = NUM_THRESHOLDS) -> np.ndarray:
    """The official candidates: ``num`` evenly spaced values in [0.99 min(y), 0.99 max(y)]."""
    return np.linspace(y.min() * 0.99, y.max() * 0.99, num, dtype=y.dtype)


def ncut_values(A: np.ndarray, d: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Exact Shi-Malik NCut of many candidate bipartitions at once.

    NCut(S) = cut(S, S') / vol(S) + cut(S, S') / vol(S'), with cut(S, S') = vol(S) - assoc(S, S). This equals the
    official ``z^T (D - A) z / z^T D z`` with ``z = (1 + x) - b (1 - x)``, ``b = vol(S) / vol(S')``.

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
    vol_all = d.sum()
    assoc = np.einsum("ik,ik->k", X, A @ X)
    cut = vol_s - assoc
    with np.errstate(divide="ignore", invalid="ignore"):
        values = cut / vol_s + cut / (vol_all - vol_s)
    values[~np.isfinite(values)] = np.inf
    return values


def best_threshold_split(A: np.ndarray, d: np.ndarray, y: np.ndarray, *, num_thresholds: int = NUM_THRESHOLDS):
    """Best of ``num_thresholds`` splits ``y > theta`` by exact NCut (the first one on ties, as ``argmin``).

    Returns
    -------
    side : numpy.ndarray
        (n,) bool, True on the "1"-side.
    value : float
        Its NCut value (``inf`` if no candidate splits the graph).
    """
    thresholds = candidate_thresholds(y, num_thresholds)
    X = y[:, None] > thresholds[None, :]
    values = ncut_values(A, d, X)
    best = int(np.argmin(values))
    return X[:, best], float(values[best])


@dataclass
class NCutRecord:
    """What one recursive NCut run did (for inspection and tests).

    Attributes
    ----------
    masks : list of numpy.ndarray
        Accepted "1"-sides in the order the official code accumulates them (pre-order), as index arrays.
    visits : list of tuple
        ``(indices, ncut_value, accepted)`` for every subgraph that was solved, in visiting order.
    """

    masks: List[np.ndarray] = field(default_factory=list)
    visits: list = field(default_factory=list)


def _recurse(W: np.ndarray, *, tau: float, compat: str, num_thresholds: int, record: NCutRecord) -> None:
    n = W.shape[0]
    solve_dtype = np.float32 if compat == "official" else np.float64
    solver = "full" if compat == "official" else "subset"
    # The official code keeps, below the root, only nodes whose row of the masked W has no exact zero; painted
    # nodes are excluded by it and so are nodes with a zero anywhere in their original row (see DIFFCUT.md 3.5).
    zero_row = (W == 0).any(axis=1) if compat == "official" else None
    stack = [(np.arange(n), 0)]
    while stack:
        idx, depth = stack.pop()
        if zero_row is not None and depth > 0:
            idx = idx[~zero_row[idx]]
        if idx.size < 2:
            continue
        A = W[np.ix_(idx, idx)].astype(solve_dtype, copy=False)
        d = A.sum(axis=1)
        if not np.all(d > 0):  # an isolated node (all-zero row): no meaningful Laplacian
            record.visits.append((idx, float("inf"), False))
            continue
        y = fiedler_vector(A, d, solver=solver)
        side, value = best_threshold_split(A, d, y, num_thresholds=num_thresholds)
        accepted = value < tau
        record.visits.append((idx, value, accepted))
        if accepted:
            one = idx[side]
            record.masks.append(one)
            # LIFO: the "1"-side subtree is finished before the "0"-side, as the official pre-order recursion.
            stack.append((idx[~side], depth + 1))
            stack.append((one, depth + 1))


def labels_from_masks(masks: List[np.ndarray], n: int) -> np.ndarray:
    """Number the leaves 0..K-1 as the official ``assemble_clusters`` does.

    The official code sums the masks with weights w_k = max(current sum) + 1 and ranks the sums. Because w_k
    exceeds every partial sum before it, the rank is the lexicographic order of each node's membership pattern
    read from the last mask to the first; computing it that way is exact for any depth (the float32 sum of the
    official code loses precision after about 24 nested masks).
    """
    if not masks:
        return np.zeros(n, dtype=np.int32)
    member = np.zeros((len(masks), n), dtype=np.uint8)
    for k, m in enumerate(masks):
        member[k, m] = 1
    _, labels = np.unique(member[::-1].T, axis=0, return_inverse=True)
    return labels.reshape(n).astype(np.int32)


def validate_compat(compat: str) -> None:
    if compat not in COMPAT_MODES:
        raise InputError(f"unknown compat {compat!r}; choose one of {', '.join(COMPAT_MODES)}")


def recursive_ncut_affinity(W, *, tau: float = 0.5, compat: str = "clean",
                            num_thresholds: int = NUM_THRESHOLDS, return_record: bool = False):
    """Recursive NCut of a given dense affinity matrix; see :func:`recursive_ncut`.

    Parameters
    ----------
    W : numpy.ndarray
        (N, N) symmetric non-negative affinity.

    Returns
    -------
    labels : numpy.ndarray
        (N,) int32 labels 0..K-1.
    record : NCutRecord
        Only if ``return_record``.
    """
    validate_compat(compat)
    if not (isinstance(tau, (int, float, np.floating)) and tau > 0):
        raise InputError(f"tau must be a positive number, got {tau!r}")
    if not (isinstance(num_thresholds, (int, np.integer)) and num_thresholds >= 2):
        raise InputError(f"num_thresholds must be an integer >= 2, got {num_thresholds!r}")
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise InputError(f"affinity must be a square (N, N) matrix, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise InputError("affinity contains NaN or infinite values")
    record = NCutRecord()
    _recurse(W, tau=float(tau), compat=compat, num_thresholds=int(num_thresholds), record=record)
    labels = labels_from_masks(record.masks, W.shape[0])
    return (labels, record) if return_record else labels


def recursive_ncut(features, *, alpha: float = 10.0, tau: float = 0.5, compat: str = "clean",
                   num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
    """Segment a feature grid by DiffCut's recursive two-way Normalized Cut.

    The affinity is W = ((S - min S) / (max S - min S)) ** alpha with S the cosine similarity of the L2-normalised
    tokens (dense, self-loops included). Starting from the whole graph, each subgraph is split at the best of
    ``num_thresholds`` thresholds on its Fiedler vector y = D^-1/2 u2 (degrees recomputed inside the subgraph),
    scored by exact NCut; the split is accepted while that NCut is below ``tau``, and the recursion visits the
    "1"-side (the side of the largest |y|) before the "0"-side. Each leaf becomes one segment.

    Parameters
    ----------
    features : array_like
        (h, w, C) feature grid, float. NaN or infinite values are rejected.
    alpha : float, default 10
        Affinity exponent (the paper's value for every dataset).
    tau : float, default 0.5
        Accept a split while its NCut < tau; larger gives more segments. Paper: 0.5 with SSD-1B, 0.2 with SD1.4.
    compat : {"clean", "official"}, default "clean"
        ``clean`` recurses on explicit index sets and solves in float64 with LAPACK ``syevr`` (two eigenpairs).
        ``official`` also reproduces the official code's zero-row quirk: below the root, a node whose row of the
        float32 W contains an exact zero (always the globally least similar pair; also entries that underflow
        for large alpha) is left out of every later subgraph and so keeps the label it had when it was dropped;
        it also solves in float32 with a full ``syevd``, as ``torch.linalg.eigh`` does. Bit-for-bit agreement
        with the official code needs float32 and that kind of solver: a float64 solve can put a node within
        rounding of a threshold on the other side.
    num_thresholds : int, default 100
        Candidate thresholds per split.

    Returns
    -------
    numpy.ndarray
        (h, w) int32 labels numbered 0..K-1 in the order of the official ``assemble_clusters`` (ranked by the
        leaves' membership in the accepted "1"-sides, latest split most significant). One segment if no split is
        accepted or all features are identical.

    Raises
    ------
    InputError
        On a wrong shape, NaN/inf features, a non-positive alpha or tau, or an unknown compat mode.

    References
    ----------
    .. [1] P. Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features",
       NeurIPS 2024, arXiv:2406.02842.
    .. [2] J. Shi and J. Malik, "Normalized Cuts and Image Segmentation", TPAMI 2000.
    """
    validate_compat(compat)
    if not (isinstance(alpha, (int, float, np.floating, np.integer)) and alpha > 0):
        raise InputError(f"alpha must be a positive number, got {alpha!r}")
    tokens, (h, w) = as_token_matrix(features)
    W = affinity_from_tokens(l2_normalize(tokens), float(alpha))
    labels = recursive_ncut_affinity(W, tau=tau, compat=compat, num_thresholds=num_thresholds)
    return labels.reshape(h, w)
