"""The host splitter: one subgraph at a time on numpy, for :func:`~diffcut_engine.graph.tree.grow`.

What it adds to the bare recursion, all of it exact (same splits): warm starts (the parent's Fiedler vector
restricted to the child), the children's affinities cut out of the parent's while it is at hand (pooled scratch
from :mod:`.memory`) with their degrees read off the split's bin sums, and leaf bounds (a subgraph whose
spectral lower bound reaches tau_max is a leaf without an eigensolve). The official zero-row rule
(``compat="official"``, the default) is an index-set rule of the same splitter on the same fast path;
``compat="official-float32"`` (float32, full ``syevd``, indicator scoring, the zero-row rule) is another
configuration of it. See docs/ALGORITHM.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import memory
from .eigen import BLOCK_ELEMENTS, LEAF_BOUND_MARGIN, fiedler_vector, spectral_lower_bound
from .scoring import binned_scores, candidate_thresholds, ncut_values
from .tree import Acceptance, NCutNode, NCutTree, Proposal, grow
from .validation import ZERO_ROW_MODES


def take_square(A: np.ndarray, loc: np.ndarray, dtype=None) -> np.ndarray:
    """A[loc][:, loc] in ``dtype`` (default A's), gathered in row blocks (no full-height temporary) into scratch
    memory from :mod:`.memory`: give it back once its node is solved."""
    m = loc.size
    out = memory.empty((m, m), A.dtype if dtype is None else dtype)
    step = max(1, BLOCK_ELEMENTS // A.shape[0])
    for a in range(0, m, step):
        rows = A.take(loc[a:a + step], axis=0)
        if rows.dtype == out.dtype:
            # (mode "clip": the indices are valid, and "raise" would buffer the whole output first)
            np.take(rows, loc, axis=1, out=out[a:a + step], mode="clip")
        else:
            out[a:a + step] = rows[:, loc]
    return out


@dataclass
class _State:
    """A pending node's splitter state: the parent's vector on it, its affinity and degrees when at hand."""

    warm: Optional[np.ndarray] = None
    A: Optional[np.ndarray] = None
    d: Optional[np.ndarray] = None
    pooled: bool = False


def uniform(A) -> bool:
    """Whether every entry of the square array ``A`` (numpy) is the same positive value: a uniform complete graph,
    every bipartition of which has NCut exactly 1. Decided by the first differing entry for any other graph."""
    a = A[0, 0]
    if not a > 0 or A[0, -1] != a or A[-1, 0] != a:
        return False
    return bool(np.all(A[0] == a)) and bool(np.all(A == a))


class HostSplitter:
    """Solves the nodes of one affinity ``W`` on the host.

    Parameters
    ----------
    W : numpy.ndarray
        (N, N) validated affinity.
    official : bool
        ``compat="official-float32"``: float32 solves (``solver="auto"`` means ``full``), indicator scoring in
        float32, and the zero-row rule.
    zero_rows : bool, optional
        The official zero-row rule: below the root, nodes whose row of ``W`` holds an exact zero are left out of
        every subgraph (they keep the label path they had at the root's split). Default: ``official``.
        ``compat="official"`` is this rule on the fast float64 path.
    solver : str
        :func:`~diffcut_engine.graph.eigen.fiedler_vector` solver.
    num_thresholds : int
    leaf_bounds : bool
        Skip the eigensolve of a subgraph proved to be a leaf under the ``tau`` rule (clean mode only).
    warm_start : bool
        Start iterative solvers from the parent's vector.
    bin_degrees : bool
        Take a child's degrees from the split's bin sums (else ``A.sum(1)`` when it is solved).
    min_size : int
        Smallest side a candidate split may leave.
    max_depth : int, optional
        Nodes at this depth are leaves.
    owned : bool
        ``W`` comes from :mod:`.memory` and is this splitter's to give back once the root is solved.
    vector : callable, optional
        ``vector(A, d, idx) -> y`` replacing the Fiedler vector (the random-walk ``raw`` graph).
    subgraph : callable, optional
        ``subgraph(idx) -> A`` forming a child's graph instead of restricting the parent's.
    zero_row : numpy.ndarray, optional
        (N,) bool :func:`zero_row_mask` of ``W`` when already at hand (the fused affinity pass gives it).
    """

    def __init__(self, W, *, official: bool = False, zero_rows: Optional[bool] = None, solver: str = "auto",
                 num_thresholds: int = 100,
                 leaf_bounds: bool = True, warm_start: bool = True, bin_degrees: bool = True, min_size: int = 1,
                 max_depth: Optional[int] = None, owned: bool = False, vector: Optional[Callable] = None,
                 subgraph: Optional[Callable] = None, zero_row: Optional[np.ndarray] = None):
        self.W = W
        self.official = official
        self.dtype = np.float32 if official else np.float64
        self.solver = "full" if official and solver == "auto" else solver
        self.num_thresholds = num_thresholds
        self.leaf_bounds = leaf_bounds and not official
        self.warm_start = warm_start
        self.bin_degrees = bin_degrees and not official and subgraph is None
        self.min_size = min_size
        self.max_depth = max_depth
        self.owned = owned
        self.vector = vector
        self.subgraph = subgraph
        self.solver_memo = {}  # what the solves of this tree learnt (fiedler_vector's memo)
        # The official code keeps, below the root, only nodes whose row of the masked W has no exact zero.
        if official if zero_rows is None else zero_rows:
            self.zero_row = zero_row_mask(W) if zero_row is None else np.asarray(zero_row, dtype=bool)
        else:
            self.zero_row = None
        if self.zero_row is not None and not self.zero_row.any():
            self.zero_row = None  # nothing to leave out: the plain index sets

    def root_state(self) -> _State:
        return _State()

    def release(self, state: _State) -> None:
        if state.pooled:
            memory.give_back(state.A)
        state.A = state.d = None

    def propose(self, batch, accept: Acceptance):
        return [self._propose(node, state, accept) for node, state in batch]

    def _propose(self, node: NCutNode, state: _State, accept: Acceptance):
        idx, warm = node.indices, state.warm
        if self.zero_row is not None and node.depth > 0:
            # (children() already gave this node's warm start, affinity and degrees on the kept nodes only)
            idx = idx[~self.zero_row[idx]]
        if idx.size < max(2, 2 * self.min_size) or (self.max_depth is not None and node.depth >= self.max_depth):
            return None
        A, d = state.A, state.d
        if A is None:
            if self.subgraph is not None and node.depth > 0:
                A = self.subgraph(idx)
            elif idx.size == self.W.shape[0]:
                A = self.W.astype(self.dtype, copy=False)
                state.pooled = self.owned and A is self.W
            else:
                A, state.pooled = take_square(self.W, idx, self.dtype), True
            state.A = A
        if d is None:
            d = A.sum(axis=1)
        if not np.all(d > 0):  # an isolated node (all-zero row): no meaningful Laplacian
            return None
        if node.depth == 0 and accept.rule == "tau" and accept.tau <= 1.0 and not self.official and uniform(A):
            # every bipartition of a uniform complete graph has NCut exactly 1 (constant features: W = 1), so the
            # root is a leaf at every tau <= 1, with no eigensolve (whose vector is arbitrary there: the solvers
            # took up to a second to fail to certify it)
            return Proposal(1.0, accept.tau)
        if self.leaf_bounds and accept.rule == "tau" and node.depth > 0:
            # (the root is a leaf only for near-uniform images)
            bound = spectral_lower_bound(A, d, stop_below=accept.tau + LEAF_BOUND_MARGIN)
            if bound >= accept.tau + LEAF_BOUND_MARGIN:
                return Proposal(bound, accept.tau, exact=False)
        if self.vector is not None:
            y = self.vector(A, d, idx)
        else:
            y = fiedler_vector(A, d, solver=self.solver, warm_start=warm if self.warm_start else None,
                               memo=self.solver_memo)
        thresholds = candidate_thresholds(y, self.num_thresholds)
        GA = None
        if self.official:
            values = ncut_values(A, d, y[:, None] > thresholds[None, :])
        else:
            values, bins, GA = binned_scores(A, d, y, thresholds)
            if self.min_size > 1:
                count = np.bincount(bins, minlength=thresholds.size + 1)
                ones = np.cumsum(count[::-1])[::-1][1:]  # nodes with y above each threshold
                values[(ones < self.min_size) | (idx.size - ones < self.min_size)] = np.inf
        best = int(np.argmin(values))
        value = float(values[best])
        baseline = accept.baseline(A, d, y)
        side = y > thresholds[best]

        def children(one: NCutNode, zero: NCutNode):
            one_side, zero_side = side, ~side
            dropped = False
            if self.zero_row is not None:  # the children solve their kept nodes only (no-op below depth 1)
                kept = ~self.zero_row[idx]
                dropped = not kept.all()
                if dropped:
                    one_side, zero_side = side & kept, ~side & kept
            warm_one, warm_zero = y[one_side], y[zero_side]
            if self.official or self.subgraph is not None:  # gathered when popped
                return _State(warm_one), _State(warm_zero)
            # the children's affinities come from this node's (m-wide rows instead of N) while it is at hand, as
            # pooled scratch; their degrees from the split's bin sums (sums of non-negative terms), unless
            # nodes were left out (then summed when solved)
            d_one = d_zero = None
            if self.bin_degrees and not dropped:
                d_one = GA[best + 1:].sum(axis=0)[side]
                d_zero = GA[:best + 1].sum(axis=0)[~side]
            return (_State(warm_one, take_square(A, np.flatnonzero(one_side)), d_one, True),
                    _State(warm_zero, take_square(A, np.flatnonzero(zero_side)), d_zero, True))

        return Proposal(value, baseline, idx[side], idx[~side], children)


def zero_row_mask(W) -> np.ndarray:
    """(N,) bool: the nodes whose row of ``W`` holds an exact zero (the official rule leaves them out of every
    subgraph below the root). Streamed in row blocks (no N x N temporary)."""
    n = W.shape[0]
    out = np.empty(n, dtype=bool)
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for a in range(0, n, step):
        out[a:a + step] = (W[a:a + step] == 0).any(axis=1)
    return out


def host_tree(W, *, tau_max: float, compat: str, solver: str, num_thresholds: int, shape, leaf_bounds: bool,
              owned: bool = False, zero_row: Optional[np.ndarray] = None) -> NCutTree:
    """The DiffCut tree of a validated affinity: :func:`~diffcut_engine.graph.tree.grow`, depth first, with a
    :class:`HostSplitter` and the ``tau`` rule at ``tau_max``."""
    splitter = HostSplitter(W, official=compat == "official-float32", zero_rows=compat in ZERO_ROW_MODES,
                            solver=solver, num_thresholds=num_thresholds, leaf_bounds=leaf_bounds, owned=owned,
                            zero_row=zero_row)
    root = NCutNode(np.arange(W.shape[0]), 0)
    grow([root], [splitter.root_state()], splitter.propose, Acceptance("tau", tau_max), schedule="depth_first",
         release=splitter.release)
    return NCutTree(root, shape or (W.shape[0],), tau_max, compat)
