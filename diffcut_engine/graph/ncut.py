"""Recursive two-way Normalized Cut, exactly as DiffCut runs it.

References
----------
J. Shi and J. Malik, "Normalized Cuts and Image Segmentation", IEEE TPAMI 22(8), 2000.
P. Couairon et al., "Zero-Shot Image Segmentation via Recursive Normalized Cut on Diffusion Features",
NeurIPS 2024 (arXiv 2406.02842); official code ``diffcut/recursive_normalized_cut.py`` (commit aa16df4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ._blas import matmul, matvec
from . import memory
from .affinity import affinity_from_tokens, as_token_matrix, l2_normalize
from .eigen import fiedler_vector, validate_solver
from .xp import is_device

COMPAT_MODES = ("clean", "official")

#: Number of candidate thresholds along the Fiedler vector (official value).
NUM_THRESHOLDS = 100
#: A subgraph is a leaf without solving when its spectral lower bound is at least tau_max plus this margin.
LEAF_BOUND_MARGIN = 1e-9
#: Largest subgraph for which :func:`spectral_lower_bound` also tries the sharper trace(M^4) bound.
LEAF_BOUND_GEMM_MAX = 512
#: Row-block size (in elements) of streamed passes over a subgraph's affinity.
_BLOCK_ELEMENTS = 1 << 18


def candidate_thresholds(y: np.ndarray, num: int = NUM_THRESHOLDS) -> np.ndarray:
    """The official candidates: ``num`` evenly spaced values in [0.99 min(y), 0.99 max(y)]."""
    return np.linspace(y.min() * 0.99, y.max() * 0.99, num, dtype=y.dtype)


def _ncut_from_cut(cut: np.ndarray, vol_s: np.ndarray, vol_all) -> np.ndarray:
    """cut / vol(S) + cut / vol(S'), +inf where it is not finite (an empty side)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        values = cut / vol_s + cut / (vol_all - vol_s)
    values[~np.isfinite(values)] = np.inf
    return values


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
    assoc = np.einsum("ik,ik->k", X, A @ X)
    return _ncut_from_cut(vol_s - assoc, vol_s, d.sum())


def threshold_bins(y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Bin of every node: the number of thresholds strictly below its y (0..k).

    Node i is on the "1"-side (``y > theta_t``) of candidate t exactly when ``bin_i > t``, so each candidate
    split is a union of whole bins and ties in y never separate.
    """
    return np.searchsorted(thresholds, y, side="left")


def binned_ncut_values(A: np.ndarray, d: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exact NCut of every split ``y > theta`` in one O(n^2) pass, with no loop over the thresholds.

    The nodes fall into k + 1 bins between consecutive thresholds (:func:`threshold_bins`), and each candidate's
    "1"-side is the union of the bins above it. With the one-hot bin matrix G (n, k+1), the bin-to-bin
    association ``B = G^T A G`` holds everything the k cuts need: ``cut(t) = sum_{c > t >= c'} B[c, c']``, read off
    two cumulative sums of B. Those sums add non-negative terms only, so a small cut is never the difference of
    two large volumes (no cancellation); ``G^T A`` is one sparse-times-dense product (a single pass over A).

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
    return _binned_scores(A, d, y, thresholds)[0]


def _binned_scores(A, d, y, thresholds):
    """:func:`binned_ncut_values` and what it computed on the way: ``(values, bins, GA)``, GA (k+1, n) the sums
    of A's rows over each bin (so ``GA[c, i]`` is node i's affinity to bin c)."""
    import scipy.sparse

    n, k = y.size, thresholds.size
    bins = threshold_bins(y, thresholds)
    count = np.bincount(bins, minlength=k + 1)
    indptr = np.zeros(k + 2, dtype=np.intp)
    np.cumsum(count, out=indptr[1:])
    # the one-hot (k+1, n) bin matrix built as CSR directly: row c holds the nodes of bin c, in increasing order
    G = scipy.sparse.csr_matrix((np.ones(n), np.argsort(bins, kind="stable"), indptr), shape=(k + 1, n))
    GA = np.asarray(G @ np.asarray(A, dtype=np.float64))  # (k+1, n): row c = sum of A's rows in bin c
    # B = G A G^T, (k+1, k+1), symmetric like A: B[c', c] = sum of GA[c, j] over the nodes j of bin c', as one
    # weighted histogram of GA's entries (no transposed copy of GA, which a sparse product would make)
    flat = (np.arange(k + 1)[:, None] * (k + 1) + bins[None, :]).ravel()
    B = np.bincount(flat, weights=GA.ravel(), minlength=(k + 1) ** 2).reshape(k + 1, k + 1).T
    below = np.cumsum(B, axis=1)  # below[c, t] = sum_{c' <= t} B[c, c']
    cut = np.cumsum(below[::-1], axis=0)[::-1]  # cut[c, t] = sum_{c2 >= c, c' <= t} B[c2, c']
    cut = cut[np.arange(1, k + 1), np.arange(k)]
    vol_bin = np.bincount(bins, weights=d, minlength=k + 1)
    vol_one = np.cumsum(vol_bin[::-1])[::-1][1:]  # bins above t
    vol_zero = np.cumsum(vol_bin)[:-1]  # bins at or below t
    with np.errstate(divide="ignore", invalid="ignore"):
        values = cut / vol_one + cut / vol_zero
    ones = np.cumsum(count[::-1])[::-1][1:]
    values[(ones == 0) | (ones == n) | ~np.isfinite(values)] = np.inf
    return values, bins, GA


def _best_binned_split(A, d, y, num_thresholds):
    """The clean recursion's split: :func:`best_threshold_split` with ``method="binned"``, plus the degrees of
    both sides inside their own subgraph (read off the bin sums, no pass over A): ``(side, value, d_one,
    d_zero)``; each degree is a sum of non-negative bin sums (no ``d - cut`` cancellation)."""
    thresholds = candidate_thresholds(y, num_thresholds)
    values, bins, GA = _binned_scores(A, d, y, thresholds)
    best = int(np.argmin(values))
    side = y > thresholds[best]  # == bins > best
    d_one = GA[best + 1:].sum(axis=0)[side]
    d_zero = GA[:best + 1].sum(axis=0)[~side]
    return side, float(values[best]), d_one, d_zero


def prefix_ncut_values(A: np.ndarray, d: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Deprecated name of :func:`binned_ncut_values` (same arguments, same result)."""
    return binned_ncut_values(A, d, y, thresholds)


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
    if method in ("binned", "prefix"):
        values = binned_ncut_values(A, d, y, thresholds)
    else:
        values = ncut_values(A, d, y[:, None] > thresholds[None, :])
    best = int(np.argmin(values))
    return y > thresholds[best], float(values[best])


@dataclass
class NCutNode:
    """One subgraph visited by the recursion.

    Attributes
    ----------
    indices : numpy.ndarray
        Node ids (into the flattened grid) on this side of the parent's split, in increasing order: the official
        accumulator's mask. With ``compat="official"`` the nodes among them whose row of W holds an exact zero
        are left out of this node's own solve (below the root).
    depth : int
        0 for the root.
    value : float
        NCut of this subgraph's best split; ``inf`` when it has fewer than two nodes (a leaf at every tau).
    one, zero : NCutNode or None
        The "1"-side and "0"-side subgraphs, present when ``value < tau_max``.
    exact : bool
        False for a leaf whose ``value`` is only a lower bound (>= tau_max) on its best split's NCut, proved
        without solving (see :func:`spectral_lower_bound`).
    """

    indices: np.ndarray
    depth: int
    value: float = float("inf")
    one: Optional["NCutNode"] = None
    zero: Optional["NCutNode"] = None
    exact: bool = True

    @property
    def is_split(self) -> bool:
        return self.one is not None


class NCutTree:
    """The whole hierarchy of one recursive NCut run, cut at any tau without solving again.

    The recursion is deterministic and a split is accepted exactly when its NCut is below tau, so the run at
    any ``tau <= tau_max`` visits a sub-tree of this one with identical computations:
    ``tree.cut(tau) == recursive_ncut(..., tau=tau)`` for every such tau.

    Attributes
    ----------
    root : NCutNode
    shape : tuple of int
        Shape of the label maps ``cut`` returns: (h, w) for feature grids, (N,) for a bare affinity.
    tau_max : float
    """

    def __init__(self, root: NCutNode, shape: Tuple[int, ...], tau_max: float, compat: str):
        self.root = root
        self.shape = tuple(shape)
        self.tau_max = float(tau_max)
        self.compat = compat

    def __repr__(self):
        return f"NCutTree(shape={self.shape}, tau_max={self.tau_max}, splits={len(self.split_values())})"

    def nodes(self) -> Iterator[NCutNode]:
        """All solved subgraphs in the official pre-order ("1"-side before "0"-side)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if node.is_split:
                stack.append(node.zero)
                stack.append(node.one)

    def split_values(self) -> np.ndarray:
        """Sorted NCut values of the stored splits: the taus at which the segmentation changes."""
        return np.sort(np.array([n.value for n in self.nodes() if n.is_split], dtype=np.float64))

    def masks(self, tau: float) -> List[np.ndarray]:
        """The accepted "1"-sides at ``tau``, in pre-order (the official accumulator)."""
        tau = self._check_tau(tau)
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node.is_split and node.value < tau:
                out.append(node.one.indices)
                stack.append(node.zero)
                stack.append(node.one)
        return out

    def cut(self, tau: float) -> np.ndarray:
        """Labels at threshold ``tau`` (<= ``tau_max``), numbered as :func:`recursive_ncut` numbers them.

        Returns
        -------
        numpy.ndarray
            int32 labels 0..K-1 of shape ``self.shape``.
        """
        n = int(np.prod(self.shape))
        return labels_from_masks(self.masks(tau), n).reshape(self.shape)

    def num_segments(self, tau: float) -> int:
        return len(self.masks(tau)) + 1

    def _check_tau(self, tau) -> float:
        if not (isinstance(tau, (int, float, np.floating)) and tau > 0):
            raise InputError(f"tau must be a positive number, got {tau!r}")
        if tau > self.tau_max:
            raise InputError(f"tau={tau} is above this tree's tau_max={self.tau_max}: splits with NCut in "
                             f"[{self.tau_max}, {tau}) were never solved; build the tree with a larger tau_max")
        return float(tau)


#: Up to this many masks, membership patterns are ranked as packed int64 bit codes.
_PACKED_MASKS = 62


def labels_from_masks(masks: List[np.ndarray], n: int) -> np.ndarray:
    """Number the leaves 0..K-1 as the official ``assemble_clusters`` does.

    The official code sums the masks with weights w_k = max(current sum) + 1 and ranks the sums. Because w_k
    exceeds every partial sum before it, the rank is the lexicographic order of each node's membership pattern
    read from the last mask to the first; computing it that way is exact for any depth (the float32 sum of the
    official code loses precision after about 24 nested masks).
    """
    if not masks:
        return np.zeros(n, dtype=np.int32)
    if len(masks) <= _PACKED_MASKS:
        # the pattern as an integer, mask k as bit k (the last mask most significant): same order, and ranking
        # n integers is much cheaper than ranking n byte rows
        code = np.zeros(n, dtype=np.int64)
        for k, m in enumerate(masks):
            code[m] |= np.int64(1) << k
        _, labels = np.unique(code, return_inverse=True)
        return labels.reshape(n).astype(np.int32)
    member = np.zeros((len(masks), n), dtype=np.uint8)
    for k, m in enumerate(masks):
        member[k, m] = 1
    _, labels = np.unique(member[::-1].T, axis=0, return_inverse=True)
    return labels.reshape(n).astype(np.int32)


def validate_compat(compat: str) -> None:
    if compat not in COMPAT_MODES:
        raise InputError(f"unknown compat {compat!r}; choose one of {', '.join(COMPAT_MODES)}")


def _validate_common(tau, compat, solver, num_thresholds, name="tau"):
    validate_compat(compat)
    validate_solver(solver)
    if not (isinstance(tau, (int, float, np.floating)) and tau > 0):
        raise InputError(f"{name} must be a positive number, got {tau!r}")
    if not (isinstance(num_thresholds, (int, np.integer)) and num_thresholds >= 2):
        raise InputError(f"num_thresholds must be an integer >= 2, got {num_thresholds!r}")


def _take_square(A: np.ndarray, loc: np.ndarray, dtype=None) -> np.ndarray:
    """A[loc][:, loc] in ``dtype`` (default A's), gathered in row blocks (no full-height temporary) into scratch
    memory from :mod:`.memory`: give it back once its node is solved."""
    m = loc.size
    out = memory.empty((m, m), A.dtype if dtype is None else dtype)
    step = max(1, _BLOCK_ELEMENTS // A.shape[0])
    for a in range(0, m, step):
        rows = A.take(loc[a:a + step], axis=0)
        if rows.dtype == out.dtype:
            # (mode "clip": the indices are valid, and "raise" would buffer the whole output first)
            np.take(rows, loc, axis=1, out=out[a:a + step], mode="clip")
        else:
            out[a:a + step] = rows[:, loc]
    return out


def spectral_lower_bound(A: np.ndarray, d: np.ndarray, stop_below=None) -> float:
    """A cheap, rigorous lower bound on the NCut of *every* bipartition of a graph.

    Every NCut value is a Rayleigh quotient of the normalised Laplacian on a vector orthogonal to its trivial
    eigenvector (Shi and Malik's z), so NCut >= lambda_2 = 1 - mu_2, mu_2 the second-largest eigenvalue of
    M = D^-1/2 A D^-1/2. Since mu_1 = 1, ``sum_{i >= 2} mu_i^(2p) = trace(M^(2p)) - 1 >= mu_2^(2p)``, which gives
    mu_2 <= (||M||_F^2 - 1)^(1/2) (p = 1, O(n^2)) and, for graphs up to ``LEAF_BOUND_GEMM_MAX`` nodes,
    mu_2 <= (||M^2||_F^2 - 1)^(1/4) (p = 2, one matrix product). A subgraph whose bound reaches tau is a leaf at
    that tau without any eigensolve: near-uniform segments (the typical leaves) have mu_2 close to 0.

    Parameters
    ----------
    stop_below : float, optional
        Return early once the bound is certain to be below this value (the caller only asks whether it reaches
        it). ||M||_F^2 is a sum of non-negative row terms, so a partial sum already caps the bound: big subgraphs
        far from a leaf are settled after a few rows.

    Returns
    -------
    float
        1 - (upper bound of mu_2), in (-inf, 1]; meaningless (<= 0) for graphs that are far from a leaf. With
        ``stop_below``, a value below it is only known to be below it.
    """
    n = A.shape[0]
    dinv = 1.0 / d
    # the row sum of ||M||_F^2 above which neither form can reach stop_below (the trace(M^4) form needs
    # ||M||_F^2 < 2)
    give_up = np.inf
    if stop_below is not None:
        if stop_below > 1.0:
            return 1.0  # the bound never exceeds 1
        give_up = 1.0 + max(1.0 - stop_below, 0.0) ** 2
        if n <= LEAF_BOUND_GEMM_MAX:
            give_up = max(give_up, 2.0)
    # ||M||_F^2 = sum_ij A_ij^2 / (d_i d_j), in row blocks so that no (n, n) temporary is allocated; the blocks
    # start small and double, to give up early on subgraphs far from a leaf
    step = max(1, _BLOCK_ELEMENTS // n)
    buf = np.empty((min(step, n), n), dtype=A.dtype)
    fro2 = 0.0
    start, size = 0, max(1, min(step, n // 16))
    while start < n:
        rows = A[start:start + size]
        sq = np.square(rows, out=buf[:rows.shape[0]])
        fro2 += float(dinv[start:start + size] @ matvec(sq, dinv))
        start += size
        size = min(2 * size, step)
        if fro2 > give_up:
            return 1.0 - np.sqrt(max(fro2 - 1.0, 0.0))
    mu2 = np.sqrt(max(fro2 - 1.0, 0.0))
    if mu2 < 1.0 and n <= LEAF_BOUND_GEMM_MAX:
        dis = np.sqrt(dinv)
        M = (dis[:, None] * A) * dis[None, :]
        M2 = matmul(M, M)
        mu2 = min(mu2, max(float(np.einsum("ij,ij->", M2, M2)) - 1.0, 0.0) ** 0.25)
    return 1.0 - mu2


def build_tree(W, *, tau_max: float, compat: str = "clean", solver: str = "auto",
               num_thresholds: int = NUM_THRESHOLDS, shape=None, leaf_bounds: bool = True) -> NCutTree:
    """Run the recursive NCut on a dense affinity, keeping every split with NCut < ``tau_max``.

    Parameters
    ----------
    W : numpy.ndarray
        (N, N) symmetric non-negative affinity, float32 (as :func:`affinity_from_tokens` returns it).
    tau_max : float
        Largest tau the tree will be cut at.
    compat, solver, num_thresholds
        See :func:`recursive_ncut`.
    shape : tuple of int, optional
        Shape of the label maps (default ``(N,)``).
    leaf_bounds : bool, default True
        With ``compat="clean"``, skip the eigensolve of a subgraph whose :func:`spectral_lower_bound` proves that
        no bipartition has NCut < ``tau_max`` (its node gets that bound as ``value`` and ``exact=False``). The
        tree and every cut are unchanged; only leaf values differ.
    """
    _validate_common(tau_max, compat, solver, num_thresholds, name="tau_max")
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise InputError(f"affinity must be a square (N, N) matrix, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise InputError("affinity contains NaN or infinite values")
    return _build_tree(W, tau_max=tau_max, compat=compat, solver=solver, num_thresholds=num_thresholds,
                       shape=shape, leaf_bounds=leaf_bounds)


def _solve_node(node, idx, A, d, warm, *, tau_max, solver, official, scoring, num_thresholds, leaf_bounds):
    """Solve one subgraph; return its children's stack entries ("1"-side first), none for a leaf."""
    if not np.all(d > 0):  # an isolated node (all-zero row): no meaningful Laplacian
        return []
    if leaf_bounds and not official and node.depth > 0:  # (the root is a leaf only for near-uniform images)
        bound = spectral_lower_bound(A, d, stop_below=tau_max + LEAF_BOUND_MARGIN)
        if bound >= tau_max + LEAF_BOUND_MARGIN:
            node.value, node.exact = bound, False
            return []
    y = fiedler_vector(A, d, solver=solver, warm_start=warm)
    if official:
        side, node.value = best_threshold_split(A, d, y, num_thresholds=num_thresholds, method=scoring)
    else:
        side, node.value, d_one, d_zero = _best_binned_split(A, d, y, num_thresholds)
    if not node.value < tau_max:
        return []
    node.one = NCutNode(idx[side], node.depth + 1)
    node.zero = NCutNode(idx[~side], node.depth + 1)
    if official:  # gathered from W when popped, after the zero-row filter
        return [(node.one, y[side], None, None, False), (node.zero, y[~side], None, None, False)]
    # clean: the children's affinities come from this node's (m-wide rows instead of N) while it is at hand,
    # as pooled scratch; their degrees from the split's bin sums
    return [(node.one, y[side], _take_square(A, np.flatnonzero(side)), d_one, True),
            (node.zero, y[~side], _take_square(A, np.flatnonzero(~side)), d_zero, True)]


def _build_tree(W, *, tau_max, compat, solver, num_thresholds, shape, leaf_bounds, owned=False) -> NCutTree:
    """:func:`build_tree` on a validated affinity (finite, square). ``owned``: W comes from :mod:`.memory` and
    is this call's to give back (and to reuse as scratch) once the root is solved."""
    n = W.shape[0]
    official = compat == "official"
    # official: float32 throughout and a full syevd, as torch.linalg.eigh on the official float32 matrices.
    solve_dtype = np.float32 if official else np.float64
    if official and solver == "auto":
        solver = "full"
    scoring = "indicators" if official else "binned"
    # The official code keeps, below the root, only nodes whose row of the masked W has no exact zero; painted
    # nodes are excluded by it and so are nodes with a zero anywhere in their original row (DIFFCUT.md 3.5).
    zero_row = (W == 0).any(axis=1) if official else None
    root = NCutNode(np.arange(n), 0)
    # (node, parent's Fiedler vector, the node's affinity and degrees when already at hand, whether that affinity
    # is pooled scratch to give back once the node is solved)
    stack = [(root, None, None, None, False)]
    while stack:
        node, warm, A, d, pooled = stack.pop()
        idx = node.indices
        if zero_row is not None and node.depth > 0:
            keep = ~zero_row[idx]
            idx = idx[keep]
            warm = None if warm is None else warm[keep]
        if idx.size >= 2:
            if A is None:  # the root, and every official node (gathered after its zero-row filter)
                if idx.size == n:
                    A = W.astype(solve_dtype, copy=False)
                    pooled = owned and A is W
                else:
                    A, pooled = _take_square(W, idx, solve_dtype), True
                d = A.sum(axis=1)
            children = _solve_node(node, idx, A, d, warm, tau_max=tau_max, solver=solver, official=official,
                                   scoring=scoring, num_thresholds=num_thresholds, leaf_bounds=leaf_bounds)
            # LIFO: the "1"-side subtree is finished before the "0"-side, as the official pre-order recursion.
            stack.extend(children[::-1])
        if pooled:
            memory.give_back(A)
        A = d = None
    return NCutTree(root, shape or (n,), tau_max, compat)


def recursive_ncut_affinity(W, *, tau: float = 0.5, compat: str = "clean", solver: str = "auto",
                            num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
    """Recursive NCut of a given dense affinity matrix; see :func:`recursive_ncut`.

    Parameters
    ----------
    W : numpy.ndarray
        (N, N) symmetric non-negative affinity.

    Returns
    -------
    numpy.ndarray
        (N,) int32 labels 0..K-1.
    """
    return build_tree(W, tau_max=tau, compat=compat, solver=solver, num_thresholds=num_thresholds).cut(tau)


def _affinity_of(features, alpha, compat="clean"):
    """Affinity of a feature grid, as the recursion consumes it: float32 for ``official`` (whose float32
    semantics depend on it), else the same values widened to float64 in the same pass (the float64 solvers
    then need no conversion of the root matrix)."""
    if not (isinstance(alpha, (int, float, np.floating, np.integer)) and alpha > 0):
        raise InputError(f"alpha must be a positive number, got {alpha!r}")
    tokens, grid = as_token_matrix(features)
    official = compat == "official"
    W = affinity_from_tokens(l2_normalize(tokens), float(alpha), exact_power=official,
                             dtype=np.float32 if official else np.float64, _pooled=not official)
    return W, grid


def ncut_tree(features, *, alpha: float = 10.0, tau_max: float = 1.0, compat: str = "clean",
              solver: str = "auto", num_thresholds: int = NUM_THRESHOLDS) -> NCutTree:
    """The full recursive-NCut hierarchy of a feature grid, to be cut at any ``tau <= tau_max``.

    ``ncut_tree(f, tau_max=t).cut(tau)`` equals ``recursive_ncut(f, tau=tau)`` for every ``tau <= t``, so every
    granularity comes from one pass. Parameters as :func:`recursive_ncut`.

    Returns
    -------
    NCutTree
        ``cut(tau)`` gives (h, w) int32 labels.
    """
    if is_device(features):  # CuPy array or CUDA tensor: built on the device (graph/device.py)
        from .device import device_ncut_tree  # here: device.py imports this module
        return device_ncut_tree(features, alpha=alpha, tau_max=tau_max, compat=compat, solver=solver,
                                num_thresholds=num_thresholds)
    _validate_common(tau_max, compat, solver, num_thresholds, name="tau_max")
    W, grid = _affinity_of(features, alpha, compat)  # finite by construction (the features were checked)
    return _build_tree(W, tau_max=tau_max, compat=compat, solver=solver, num_thresholds=num_thresholds,
                       shape=grid, leaf_bounds=True, owned=compat != "official")


def recursive_ncut(features, *, alpha: float = 10.0, tau: float = 0.5, compat: str = "clean",
                   solver: str = "auto", num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
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
    solver : {"auto", "dense", "full", "lobpcg"}, default "auto"
        Fiedler-vector solver (see :mod:`diffcut_engine.graph.eigen`); every solver gives the dense solve's
        split. ``compat="official"`` uses ``full`` unless another is named.
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
    if is_device(features):  # solved on the device; the cut's labels are the one read-back (numpy)
        from .device import device_ncut_tree
        return device_ncut_tree(features, alpha=alpha, tau_max=tau, compat=compat, solver=solver,
                                num_thresholds=num_thresholds).cut(tau)
    return ncut_tree(features, alpha=alpha, tau_max=tau, compat=compat, solver=solver,
                     num_thresholds=num_thresholds).cut(tau)
