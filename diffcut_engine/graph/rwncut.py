"""Random-walk Normalized Cut on a transition matrix (e.g. diffusion self-attention probabilities).

The method of Ivanova et al. [1]_: a row-stochastic P is the transition matrix of a random walk over image
patches, and the image is split recursively by the random-walk NCut of Meila and Shi [2]_. With pi the stationary
distribution and F = diag(pi) P, RWNCut(A, B) = ShiMalikNCut_W(A, B) for W = (F + F^T) / 2 with degrees pi
(:func:`flow_graph`), so the recursion is the graph stage's own (:func:`~diffcut_engine.graph.tree.grow` with the
host splitter) on W, configured by the options of :func:`rw_ncut`: the graph (``flow``, ``symmetric``, ``raw``,
attention adjacencies), the walk length ``k`` (P^k), the acceptance rule (``constant`` tau, or the
parameter-free rules: ``tree``, the default, which cuts the over-split hierarchy at the widest gap of its NCut
values (:func:`tree_threshold`), the per-node ``random`` and ``mean`` baselines of
:class:`~diffcut_engine.graph.tree.Acceptance`, the eigengap test ``gap`` and the random-graph null ``null``),
``min_size`` and how a side's graph is formed (``restrict`` or ``renormalize``). The definitions and the reasons
for the defaults are in docs/ALGORITHM.md.

References
----------
.. [1] D. Ivanova, M. Aversa, P. Henderson, J. Williamson, "Unsupervised Segmentation by Diffusing, Walking and
   Cutting", WACV 2026, arXiv:2412.04678.
.. [2] M. Meila, J. Shi, "A Random Walks View of Spectral Segmentation", AISTATS 2001.
.. [3] J. Shi, J. Malik, "Normalized Cuts and Image Segmentation", TPAMI 22(8), 2000.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from ..errors import InputError
from .affinity import affinity_from_tokens, as_token_matrix, l2_normalize
from .eigen import sign_reference, validate_solver
from .host import HostSplitter
from .xp import host_array
from .scoring import NUM_THRESHOLDS, expected_random_ncut
from .tree import AUTO_MARGIN, Acceptance, NCutNode, NCutTree, accepted_masks, grow, labels_from_masks, preorder
from .validation import check_alpha, check_node_shape, check_num_thresholds, check_tau

logger = logging.getLogger(__name__)

__all__ = [
    "GRAPHS", "THRESHOLD_RULES", "SUBGRAPH_MODES", "StationaryDistribution", "RWNCutResult",
    "check_transition_matrix", "stationary_distribution", "transition_power", "flow_graph", "symmetric_graph",
    "attention_adjacency", "random_walk_affinity", "expected_random_ncut", "rw_ncut", "feature_transition_matrix",
    "AUTO_MARGIN", "tree_threshold", "spectral_gap_baseline", "random_graph_ncut",
]

GRAPHS = ("flow", "symmetric", "raw", "cooccurrence", "cosine", "bhattacharyya")
#: Split acceptance rules; the first is the default (chosen by measurement: benchmarks/rwncut_rules.py).
THRESHOLD_RULES = ("tree", "random", "mean", "gap", "null", "constant")
SUBGRAPH_MODES = ("restrict", "renormalize")

#: Row sums of a transition matrix must be 1 within this (absolute) tolerance.
ROW_SUM_TOL = 1e-4
#: Power-iteration defaults: L1 change between iterates, and the iteration cap.
STATIONARY_TOL = 1e-12
STATIONARY_MAX_ITER = 10000


# ------------------------------------------------------------------------------------------------------------
# The random walk: validation, stationary distribution, multi-step transitions
# ------------------------------------------------------------------------------------------------------------

def check_transition_matrix(P, *, name: str = "P") -> np.ndarray:
    """Validate a row-stochastic matrix and return it as float64 with rows renormalised to sum 1 exactly.

    Raises
    ------
    InputError
        If ``P`` is not square, has NaN/inf or negative entries, or a row sum differs from 1 by more than
        ``ROW_SUM_TOL``.
    """
    P = host_array(P, name)  # torch tensors too: detached (requires_grad), bfloat16 widened
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] == 0:
        raise InputError(f"{name} must be a square (N, N) transition matrix, got shape {P.shape}")
    if P.dtype.kind not in "biuf":
        raise InputError(f"{name} must be a real numeric array, got dtype {P.dtype}")
    # a float16 matrix holds its rows to float16's rounding only
    tol = max(ROW_SUM_TOL, 8 * P.shape[0] * 2.0**-11) if P.dtype == np.float16 else ROW_SUM_TOL
    P = P.astype(np.float64, copy=False)
    if not np.all(np.isfinite(P)):
        raise InputError(f"{name} contains NaN or infinite values")
    if P.min() < 0:
        raise InputError(f"{name} has negative entries (min {P.min():.3g}); a transition matrix is non-negative")
    rows = P.sum(axis=1)
    worst = float(np.abs(rows - 1).max())
    if worst > tol:
        raise InputError(f"{name} is not row-stochastic: a row sums to 1 {'+' if rows.max() > 1 else '-'} "
                         f"{worst:.3g}")
    return P / rows[:, None]


@dataclass
class StationaryDistribution:
    """Result of :func:`stationary_distribution`.

    Attributes
    ----------
    pi : numpy.ndarray
        (N,) float64, non-negative, sums to 1.
    iterations : int
        Power-iteration steps taken.
    converged : bool
        Whether the L1 change between two iterates fell below ``tol`` within ``max_iter`` steps.
    residual : float
        ||pi^T P - pi^T||_1 of the returned pi.
    """

    pi: np.ndarray
    iterations: int
    converged: bool
    residual: float


def _check_iteration(tol, max_iter) -> None:
    """The power iteration's options: ``tol`` a positive number, ``max_iter`` a positive integer."""
    if isinstance(tol, bool) or not (isinstance(tol, (int, float, np.floating)) and tol > 0):
        raise InputError(f"tol must be a positive number, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")


def stationary_distribution(P, *, tol: float = STATIONARY_TOL, max_iter: int = STATIONARY_MAX_ITER,
                            start=None) -> StationaryDistribution:
    """Stationary distribution of a row-stochastic matrix by power iteration, pi_{t+1} = pi_t P.

    Converges for irreducible aperiodic P (a strictly positive P, like softmax attention, is both), at the rate
    of its second-largest eigenvalue modulus. Not converging within ``max_iter`` is reported (``converged``
    False and a warning in the log), not raised: the last iterate is still a distribution, and the symmetrised
    graphs built from it stay symmetric.

    Parameters
    ----------
    P : numpy.ndarray
        (N, N) row-stochastic matrix.
    tol : float
        Stop when ||pi_{t+1} - pi_t||_1 < tol.
    max_iter : int
        Iteration cap.
    start : numpy.ndarray, optional
        (N,) initial distribution (default uniform).

    Returns
    -------
    StationaryDistribution
    """
    P = check_transition_matrix(P)
    _check_iteration(tol, max_iter)
    return _stationary(P, tol, int(max_iter), start)


def _stationary(P, tol, max_iter, start=None) -> StationaryDistribution:
    n = P.shape[0]
    pi = np.full(n, 1.0 / n) if start is None else np.asarray(start, dtype=np.float64) / np.sum(start)
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        nxt = pi @ P
        nxt /= nxt.sum()
        delta = float(np.abs(nxt - pi).sum())
        pi = nxt
        if delta < tol:
            converged = True
            break
    residual = float(np.abs(pi @ P - pi).sum())
    if not converged:
        logger.warning("stationary distribution: power iteration did not converge in %d steps (last change "
                       "above %.1e, residual %.2e); using the last iterate", max_iter, tol, residual)
    return StationaryDistribution(pi=pi, iterations=it, converged=converged, residual=residual)


def transition_power(P, k: int) -> np.ndarray:
    """P^k by binary powering (repeated squaring): about log2(k) + popcount(k) matrix products, any k >= 1.

    Parameters
    ----------
    P : numpy.ndarray
        (N, N) matrix (row-stochastic for the k-step walk).
    k : int
        Number of steps, >= 1.

    Returns
    -------
    numpy.ndarray
        (N, N) P^k (``P`` itself for k = 1).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k (the number of random-walk steps) must be a positive integer, got {k!r}")
    P = np.asarray(P)
    k = int(k)
    result, base = None, P
    while True:
        if k & 1:
            result = base if result is None else result @ base
        k >>= 1
        if not k:
            return result
        base = base @ base


# ------------------------------------------------------------------------------------------------------------
# Graphs from a transition matrix
# ------------------------------------------------------------------------------------------------------------

def flow_graph(P: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """W = (diag(pi) P + P^T diag(pi)) / 2: symmetric, degrees pi, Shi-Malik NCut = random-walk NCut of P."""
    F = pi[:, None] * P
    return (F + F.T) * 0.5


def symmetric_graph(P: np.ndarray) -> np.ndarray:
    """W = (P + P^T) / 2 (ignores pi)."""
    return (P + P.T) * 0.5


def attention_adjacency(P: np.ndarray, kind: str = "cooccurrence", *, alpha: float = 10.0) -> np.ndarray:
    """Adjacency between nodes from their rows of P, each row a descriptor (a distribution over targets).

    Parameters
    ----------
    P : numpy.ndarray
        (N, N) row-stochastic.
    kind : {"cooccurrence", "cosine", "bhattacharyya"}
        ``cooccurrence``: P P^T, the probability that two walkers from i and j arrive at the same node.
        ``cosine``: DiffCut's affinity of the rows, ((S - min S) / (max S - min S)) ** alpha with S the cosine
        similarity (:func:`~diffcut_engine.graph.affinity.affinity_from_tokens`). ``bhattacharyya``:
        sum_l sqrt(P_il P_jl), the Bhattacharyya coefficient of the two rows (1 on the diagonal).
    alpha : float
        Exponent of ``cosine``.

    Returns
    -------
    numpy.ndarray
        (N, N) float64, symmetric, non-negative.
    """
    if kind == "cooccurrence":
        return P @ P.T
    if kind == "bhattacharyya":
        R = np.sqrt(P)
        return R @ R.T
    if kind == "cosine":
        return affinity_from_tokens(l2_normalize(P.astype(np.float32)), float(alpha), dtype=np.float64)
    raise InputError(f"unknown attention adjacency {kind!r}; choose cooccurrence, cosine or bhattacharyya")


def _graph_of(Pk: np.ndarray, graph: str, alpha: float, tol: float, max_iter: int):
    """(W, stationary info or None) of a row-stochastic Pk for one ``graph`` kind."""
    if graph in ("flow", "raw"):
        st = _stationary(Pk, tol, max_iter)
        return flow_graph(Pk, st.pi), st
    if graph == "symmetric":
        return symmetric_graph(Pk), None
    return attention_adjacency(Pk, graph, alpha=alpha), None


def random_walk_affinity(P, *, graph: str = "flow", k: int = 1, alpha: float = 10.0, tol: float = STATIONARY_TOL,
                         max_iter: int = STATIONARY_MAX_ITER) -> Tuple[np.ndarray, Optional[StationaryDistribution]]:
    """The symmetric affinity the random-walk NCut cuts, built from P^k.

    Parameters
    ----------
    P : numpy.ndarray
        (N, N) row-stochastic transition matrix.
    graph : {"flow", "symmetric", "raw", "cooccurrence", "cosine", "bhattacharyya"}
        See the module notes; ``raw`` returns the flow graph (its scoring graph).
    k : int
        Walk steps (P^k).
    alpha : float
        Exponent of the ``cosine`` adjacency.
    tol, max_iter
        Power iteration of :func:`stationary_distribution`.

    Returns
    -------
    W : numpy.ndarray
        (N, N) float64 symmetric non-negative affinity.
    stationary : StationaryDistribution or None
        For ``flow`` and ``raw``.
    """
    _check_graph(graph)
    P = check_transition_matrix(P)
    return _graph_of(transition_power(P, k), graph, alpha, tol, max_iter)


# ------------------------------------------------------------------------------------------------------------
# Automatic acceptance rules beyond tree.py's (random, mean): spectral gap, random-graph null, tree distribution
# ------------------------------------------------------------------------------------------------------------

#: Above this many nodes the ``gap`` rule's eigenvalues come from Lanczos (``eigsh``) instead of a dense ``eigh``.
GAP_DENSE_MAX = 1500


def _normalized_top(A: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """The k largest eigenvalues of D^-1/2 A D^-1/2, decreasing (the first is 1)."""
    import scipy.linalg
    import scipy.sparse.linalg

    s = 1.0 / np.sqrt(d)
    N = (s[:, None] * A) * s[None, :]
    n = N.shape[0]
    if n <= GAP_DENSE_MAX:
        w = scipy.linalg.eigh(N, eigvals_only=True, subset_by_index=[n - k, n - 1], check_finite=False)
    else:
        w = scipy.sparse.linalg.eigsh(N, k=k, which="LA", return_eigenvectors=False, v0=np.sqrt(d))
    return np.sort(w)[::-1]


def spectral_gap_baseline(A: np.ndarray, d: np.ndarray) -> float:
    """The ``gap`` rule's statistic lambda_3 / (2 lambda_2); the split is accepted when it exceeds 1.

    lambda_2 <= lambda_3 are the two smallest non-zero eigenvalues of the normalised Laplacian of the node's
    graph: the eigengap heuristic (a two-way split is meaningful when the second direction is much cheaper than
    the third; a structureless square field has lambda_2 ~ lambda_3). ``-inf`` (never accept) below 4 nodes,
    ``inf`` for a disconnected graph (lambda_2 = 0).
    """
    if A.shape[0] < 4:
        return float("-inf")
    mu = _normalized_top(A, d, 3)
    lam2, lam3 = 1.0 - mu[1], 1.0 - mu[2]
    if not lam2 > 0:
        return float("inf")
    return float(lam3 / (2.0 * lam2))


def random_graph_ncut(A: np.ndarray, d: np.ndarray) -> float:
    """Baseline of the ``null`` rule: lambda_2 of a random graph of the same density, 1 - 2 sqrt(k - 1) / k.

    ``k`` is the effective number of neighbours, the degree-weighted mean of d_i^2 / sum_j A_ij^2 (k = m for m
    equal weights). A random k-regular graph has all non-trivial normalised-Laplacian eigenvalues near
    1 - 2 sqrt(k - 1) / k (Alon-Boppana / Ramanujan bound), and every split's NCut is at least lambda_2: a split
    below this value beats anything a structureless graph of this size and density can offer.
    """
    sq = np.einsum("ij,ij->i", A, A)
    ok = sq > 0
    k = float(np.sum(d[ok] * d[ok] ** 2 / sq[ok]) / np.sum(d[ok])) if ok.any() else 1.0
    k = min(max(k, 1.0), float(A.shape[0]))
    return float(1.0 - 2.0 * np.sqrt(k - 1.0) / k)


def tree_threshold(values) -> float:
    """The ``tree`` rule's threshold from the best-split NCut values of every solved node of the hierarchy.

    The values of an image's hierarchy (grown with the ``random`` rule down to ``min_size``; the nodes it
    rejected included) mix two populations: a few low values (splits along real boundaries) and a continuum of
    higher ones (splits of textured or smooth regions, which beat a random split only because features are
    spatially smooth, and the structureless nodes the ``random`` rule rejected). The threshold is placed in the
    widest gap between consecutive sorted log-values, at the geometric mean of its two ends; accepted splits
    below it are kept. With fewer than two values there is no gap: the ``random`` rule's decisions stand
    (``inf``).

    Returns
    -------
    float
        The threshold (``inf`` for fewer than two values).
    """
    v = np.sort(np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=np.float64))
    if v.size < 2:
        return float("inf")
    lv = np.log(v)
    i = int(np.argmax(np.diff(lv)))
    return float(np.exp(0.5 * (lv[i] + lv[i + 1])))


class _RuleAcceptance(Acceptance):
    """The per-node automatic rules of this module (``gap``, ``null``) in :func:`grow`'s acceptance API."""

    def __init__(self, rule: str, num_thresholds: int):
        super().__init__("random", None, num_thresholds)
        self.rule = rule

    def baseline(self, A=None, d=None, y=None) -> float:
        if self.rule == "null":
            return random_graph_ncut(A, d)
        return spectral_gap_baseline(A, d)

    def accepts(self, value: float, baseline: float) -> bool:
        if self.rule == "gap":  # the baseline is the eigengap statistic, not an NCut
            return bool(np.isfinite(value) and baseline > 1.0 + AUTO_MARGIN)
        return super().accepts(value, baseline)


#: The ``tree`` rule keeps a split only if its NCut is at most this fraction of the expected NCut of a random split
#: of the same node: on a nearly structureless graph (e.g. the near-uniform attention of a blank image) every
#: split beats a random one by a hair and the widest gap of the values falls anywhere.
TREE_CONTRAST = 0.5
#: Relative margin below ``ceiling`` (a blank image itself, encoded in another batch, must not pass its own null).
CEILING_MARGIN = 1e-3


def _prune(node: NCutNode, keep) -> None:
    """Drop the children of every split with ``keep(node)`` False (the tree rule's cut, in place)."""
    stack = [node]
    while stack:
        nd = stack.pop()
        if nd.is_split:
            if not keep(nd):
                nd.one = nd.zero = None
            else:
                stack.extend((nd.one, nd.zero))


# ------------------------------------------------------------------------------------------------------------
# The recursion
# ------------------------------------------------------------------------------------------------------------

@dataclass
class RWNCutResult:
    """Result of :func:`rw_ncut`.

    Attributes
    ----------
    labels : numpy.ndarray
        int32 labels 0..K-1 of shape ``shape``, numbered as DiffCut numbers its leaves
        (:func:`~diffcut_engine.graph.ncut.labels_from_masks` of the accepted "1"-sides in pre-order).
    tree : NCutNode
        The root of the visited hierarchy: ``value`` is each node's best NCut, children exist for accepted
        splits.
    ncut_tree : NCutTree or None
        With ``threshold="constant"``: the hierarchy as an :class:`~diffcut_engine.graph.ncut.NCutTree` that can
        be cut at any ``t <= tau`` without solving again; with ``threshold="tree"``, the kept hierarchy, cut at
        any ``t`` up to the rule's threshold (``None`` when the rule kept the ``random`` decisions). ``None`` for
        the per-node automatic rules, whose decisions are not one threshold on the NCut values.
    stationary : StationaryDistribution or None
        The root's stationary distribution (``flow`` and ``raw`` graphs).
    splits : list of dict
        One entry per solved node, in visiting order: ``depth``, ``size``, ``ncut``, ``baseline`` (the value it
        was compared with; for ``gap`` the statistic lambda_3 / (2 lambda_2)) and ``accepted`` (for ``tree``: kept
        in the final hierarchy; each entry also holds the ``tree_threshold``).
    """

    labels: np.ndarray
    tree: NCutNode
    ncut_tree: Optional[NCutTree]
    stationary: Optional[StationaryDistribution]
    splits: List[dict] = field(default_factory=list)

    @property
    def num_segments(self) -> int:
        return int(self.labels.max()) + 1


def _check_graph(graph):
    if graph not in GRAPHS:
        raise InputError(f"unknown random-walk graph {graph!r}; choose one of {', '.join(GRAPHS)}")


def _validate(graph, threshold, tau, min_size, subgraph, solver, num_thresholds, alpha):
    _check_graph(graph)
    if threshold not in THRESHOLD_RULES:
        raise InputError(f"unknown threshold rule {threshold!r}; choose one of {', '.join(THRESHOLD_RULES)}")
    if threshold == "constant":
        try:
            check_tau(tau)
        except InputError:
            raise InputError(f"threshold='constant' needs a positive tau, got {tau!r}") from None
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise InputError(f"min_size must be a positive integer, got {min_size!r}")
    if subgraph not in SUBGRAPH_MODES:
        raise InputError(f"unknown subgraph mode {subgraph!r}; choose one of {', '.join(SUBGRAPH_MODES)}")
    validate_solver(solver)
    check_num_thresholds(num_thresholds)
    check_alpha(alpha)


def _raw_vector(P_S: np.ndarray) -> np.ndarray:
    """Right eigenvector of a row-stochastic P_S for its second-largest real eigenvalue, real part, sign fixed
    as :func:`fiedler_vector` fixes it. For a reversible P_S = D^-1 W it is W's generalised Fiedler vector."""
    import scipy.linalg

    vals, vecs = scipy.linalg.eig(P_S, check_finite=False)
    order = np.argsort(-vals.real, kind="stable")
    y = vecs[:, order[1]].real
    return -y if y[sign_reference(y)] < 0 else y


def _renormalized(Pk: np.ndarray, idx: np.ndarray) -> np.ndarray:
    sub = Pk[np.ix_(idx, idx)]
    rows = sub.sum(axis=1)
    rows[rows <= 0] = 1.0
    return sub / rows[:, None]


def rw_ncut(P, *, graph: str = "flow", k: int = 1, threshold: str = "tree", tau: float = 0.5,
            min_size: int = 1, subgraph: str = "restrict", alpha: float = 10.0, solver: str = "auto",
            num_thresholds: int = NUM_THRESHOLDS, shape=None, tol: float = STATIONARY_TOL,
            max_iter: int = STATIONARY_MAX_ITER, max_depth: Optional[int] = None,
            ceiling: Optional[float] = None) -> RWNCutResult:
    """Recursive random-walk Normalized Cut of a transition matrix.

    Parameters
    ----------
    P : numpy.ndarray
        (N, N) row-stochastic transition matrix (e.g. aggregated self-attention probabilities), rows in row-major
        grid order.
    graph : {"flow", "symmetric", "raw", "cooccurrence", "cosine", "bhattacharyya"}, default "flow"
        Which symmetric graph is cut (module notes).
    k : int, default 1
        Random-walk steps: the graph is built from P^k.
    threshold : {"tree", "random", "mean", "gap", "null", "constant"}, default "tree"
        Split acceptance rule. ``tree``: grow the hierarchy with ``random`` down to ``min_size``, then keep the
        splits below :func:`tree_threshold` of its values, below ``ceiling`` and at most ``TREE_CONTRAST`` (1/2)
        times the expected NCut of a random split of their node. ``random``, ``mean``: the
        per-node baselines of :class:`~diffcut_engine.graph.tree.Acceptance`. ``gap``: the eigengap test of
        :func:`spectral_gap_baseline`. ``null``: NCut below :func:`random_graph_ncut`. ``constant``: NCut < tau.
        Chosen by measurement, see benchmarks/rwncut_rules.py and the README.
    tau : float, default 0.5
        Threshold of ``threshold="constant"`` (ignored otherwise).
    min_size : int, default 1
        Smallest side a split may leave.
    subgraph : {"restrict", "renormalize"}, default "restrict"
        How the graph of a side is formed (module notes).
    alpha : float, default 10
        Exponent of the ``cosine`` adjacency.
    solver : str, default "auto"
        Fiedler-vector solver (:mod:`diffcut_engine.graph.eigen`).
    num_thresholds : int, default 100
        Candidate thresholds per split (and rank positions of the ``mean`` rule).
    shape : tuple of int, optional
        Shape of the returned labels (default ``(N,)``), e.g. the (h, w) attention grid.
    tol, max_iter
        Stationary-distribution power iteration.
    max_depth : int, optional
        Do not split nodes at this depth or below (default: no limit).
    ceiling : float, optional
        ``threshold="tree"`` only: never keep a split whose NCut is not below this (the method passes the best
        NCut of a blank image through the same encoder, the structureless null of the backbone).

    Returns
    -------
    RWNCutResult

    Raises
    ------
    InputError
        On an invalid P or option.
    """
    _validate(graph, threshold, tau, min_size, subgraph, solver, num_thresholds, alpha)
    if ceiling is not None and (isinstance(ceiling, (bool, np.bool_)) or not isinstance(ceiling, numbers.Real)
                                or not np.isfinite(ceiling) or not ceiling > 0):
        raise InputError(f"ceiling must be a positive number, got {ceiling!r}")
    _check_iteration(tol, max_iter)  # (also where the stationary distribution is not needed)
    if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, (int, np.integer))
                                  or max_depth < 0):
        raise InputError(f"max_depth must be None or a non-negative integer, got {max_depth!r}")
    P = check_transition_matrix(P)
    n = P.shape[0]
    shape = check_node_shape(shape, n, nodes="transition matrix's")
    Pk = transition_power(P, k)
    W, stationary = _graph_of(Pk, graph, alpha, tol, max_iter)

    # DiffCut's recursion on W (the plain case: constant tau, restricted subgraphs, warm starts and leaf bounds
    # as in graph.ncut), or with the random-walk options
    plain = (threshold == "constant" and subgraph == "restrict" and graph != "raw" and min_size == 1
             and max_depth is None)
    vector = (lambda A, d, idx: _raw_vector(_renormalized(Pk, idx))) if graph == "raw" else None
    sub = (lambda idx: _graph_of(_renormalized(Pk, idx), graph, alpha, tol, max_iter)[0]) \
        if subgraph == "renormalize" else None
    splitter = HostSplitter(W, solver=solver, num_thresholds=num_thresholds, leaf_bounds=plain, warm_start=plain,
                            bin_degrees=plain, min_size=min_size, max_depth=max_depth, vector=vector, subgraph=sub)
    if threshold in ("gap", "null"):
        accept = _RuleAcceptance(threshold, num_thresholds)
    else:
        rule = {"constant": "tau", "random": "random", "mean": "mean", "tree": "random"}[threshold]
        accept = Acceptance(rule, float(tau) if rule == "tau" else None, num_thresholds)
    root = NCutNode(np.arange(n), 0)
    splits: List[dict] = []
    solved: List[NCutNode] = []

    def record(node, proposal, accepted):
        solved.append(node)
        splits.append({"depth": node.depth, "size": int(node.indices.size), "ncut": proposal.value,
                       "baseline": proposal.baseline, "accepted": bool(accepted)})

    grow([root], [splitter.root_state()], splitter.propose, accept, schedule="depth_first",
         on_solved=None if plain else record, release=splitter.release)
    ncut_tree = NCutTree(root, shape, float(tau), "clean") if threshold == "constant" else None
    if plain:
        splits = [{"depth": nd.depth, "size": int(nd.indices.size), "ncut": nd.value, "baseline": float(tau),
                   "accepted": nd.is_split} for nd in ncut_tree.nodes()]
        return RWNCutResult(ncut_tree.cut(tau), root, ncut_tree, stationary, splits)
    if threshold == "tree":
        # the over-split hierarchy is cut once, at the widest gap of its split values (and below the ceiling)
        cut_at = tree_threshold([s["ncut"] for s in splits])
        if ceiling is not None:
            cut_at = min(cut_at, float(ceiling) * (1.0 - CEILING_MARGIN))
        random_ncut = {id(nd): s["baseline"] for s, nd in zip(splits, solved)}
        _prune(root, lambda nd: nd.value < cut_at and nd.value <= TREE_CONTRAST * random_ncut[id(nd)])
        kept = {id(nd) for nd in preorder(root) if nd.is_split}
        for s, nd in zip(splits, solved):
            s["tree_threshold"] = cut_at
            s["accepted"] = id(nd) in kept
        if np.isfinite(cut_at):
            ncut_tree = NCutTree(root, shape, cut_at, "clean")
    labels = labels_from_masks(accepted_masks(root), n).reshape(shape)
    return RWNCutResult(labels, root, ncut_tree, stationary, splits)


def feature_transition_matrix(features, *, alpha: float = 10.0) -> np.ndarray:
    """The random walk on DiffCut's feature affinity: P = D^-1 A with A the min-max cosine ** alpha of the tokens.

    Used where no attention matrix exists (the EfficientNet-Lite backbone, the exported ONNX/TensorRT encoders):
    this P is reversible with pi proportional to the degrees, so its flow graph is A / vol(A) and the random-walk
    NCut equals DiffCut's NCut of A; the automatic thresholds, ``k`` and ``min_size`` still apply.

    Parameters
    ----------
    features : array_like
        (h, w, C) feature grid.

    Returns
    -------
    numpy.ndarray
        (h*w, h*w) float64 row-stochastic matrix.
    """
    tokens, _ = as_token_matrix(features)
    A = affinity_from_tokens(l2_normalize(tokens), float(alpha), dtype=np.float64)
    d = A.sum(axis=1)
    return A / d[:, None]
