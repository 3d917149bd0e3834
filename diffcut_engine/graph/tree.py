"""The recursive two-way Normalized Cut, written once: the tree, the acceptance rule and the schedule.

Every recursion of the graph stage is :func:`grow` with a *splitter* (how one node, or a batch of nodes, is
solved: eigensolver, split scoring, subgraph bookkeeping) and an :class:`Acceptance` rule (tau, random or mean).
The schedule is either ``"depth_first"`` (one node at a time, "1"-side before "0"-side, as the official pre-order
recursion) or ``"level"`` (every pending node of one depth in one batch). See docs/ALGORITHM.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .scoring import expected_random_ncut, mean_sweep_ncut
from .validation import check_tau

SCHEDULES = ("depth_first", "level")
ACCEPT_RULES = ("tau", "random", "mean")
#: A split is accepted by an automatic rule (``random``, ``mean``) when NCut < baseline * (1 - AUTO_MARGIN): exact
#: ties (a structureless subgraph, where every split has NCut equal to the baseline) stay leaves despite rounding.
#: Affinities are float32 (relative rounding ~6e-8 per entry), which moves an NCut by up to ~1e-7 relative.
AUTO_MARGIN = 1e-6


@dataclass
class NCutNode:
    """One subgraph visited by the recursion.

    Attributes
    ----------
    indices : numpy.ndarray
        Node ids (into the flattened grid) on this side of the parent's split, in increasing order: the official
        accumulator's mask. Under the zero-row rule (``compat="official"``, the default, and
        ``"official-float32"``) the nodes among them whose row of W holds an exact zero are left out of this
        node's own solve (below the root).
    depth : int
        0 for the root.
    value : float
        NCut of this subgraph's best split; ``inf`` when it has fewer than two nodes (a leaf at every tau).
    one, zero : NCutNode or None
        The "1"-side and "0"-side subgraphs, present when the split was accepted.
    exact : bool
        False for a leaf whose ``value`` is only a lower bound (>= tau_max) on its best split's NCut, proved
        without solving (:func:`~diffcut_engine.graph.eigen.spectral_lower_bound`).
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


def preorder(root: NCutNode) -> Iterator[NCutNode]:
    """All nodes under ``root`` in the official pre-order ("1"-side before "0"-side)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if node.is_split:
            stack.append(node.zero)
            stack.append(node.one)


def accepted_masks(root: NCutNode, tau: Optional[float] = None) -> List[np.ndarray]:
    """The accepted "1"-sides in pre-order (the official accumulator); with ``tau``, only splits below it."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.is_split and (tau is None or node.value < tau):
            out.append(node.one.indices)
            stack.append(node.zero)
            stack.append(node.one)
    return out


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
    compat : str
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
        return preorder(self.root)

    def split_values(self) -> np.ndarray:
        """Sorted NCut values of the stored splits: the taus at which the segmentation changes."""
        return np.sort(np.array([n.value for n in self.nodes() if n.is_split], dtype=np.float64))

    def masks(self, tau: float) -> List[np.ndarray]:
        """The accepted "1"-sides at ``tau``, in pre-order (the official accumulator)."""
        return accepted_masks(self.root, self._check_tau(tau))

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
        tau = check_tau(tau)
        if tau > self.tau_max:
            raise InputError(f"tau={tau} is above this tree's tau_max={self.tau_max}: splits with NCut in "
                             f"[{self.tau_max}, {tau}) were never solved; build the tree with a larger tau_max")
        return tau


#: Masks per int64 word of a packed membership pattern (bits 0..61: every code is non-negative).
PACKED_MASKS = 62


def labels_from_masks(masks: List[np.ndarray], n: int) -> np.ndarray:
    """Number the leaves 0..K-1 as the official ``assemble_clusters`` does.

    The official code sums the masks with weights w_k = max(current sum) + 1 and ranks the sums. Because w_k
    exceeds every partial sum before it, the rank is the lexicographic order of each node's membership pattern
    read from the last mask to the first; computing it that way is exact for any depth (the float32 sum of the
    official code loses precision after about 24 nested masks).
    """
    if not masks:
        return np.zeros(n, dtype=np.int32)
    # the pattern as integers, mask k as bit k % 62 of word k // 62 (the last mask most significant): the same
    # order, and ranking n integers (or n tuples of a few) is much cheaper than ranking n byte rows
    words = (len(masks) + PACKED_MASKS - 1) // PACKED_MASKS
    code = np.zeros((words, n), dtype=np.int64)
    for k, m in enumerate(masks):
        code[k // PACKED_MASKS, m] |= np.int64(1) << (k % PACKED_MASKS)
    if words == 1:
        _, labels = np.unique(code[0], return_inverse=True)
        return labels.reshape(n).astype(np.int32)
    order = np.lexsort(code)  # the last word is the primary key
    ranked = code[:, order]
    new = np.any(ranked[:, 1:] != ranked[:, :-1], axis=0)
    labels = np.empty(n, dtype=np.int32)
    labels[order] = np.concatenate(([0], np.cumsum(new))).astype(np.int32)
    return labels


class Acceptance:
    """When a node's best split is accepted.

    ``tau``: NCut < ``tau`` (DiffCut). ``random``: NCut below the expected NCut of a uniformly random split of the
    same subgraph (:func:`~diffcut_engine.graph.scoring.expected_random_ncut`). ``mean``: NCut below the mean NCut
    of ``num_thresholds`` rank-sweep splits along the same vector
    (:func:`~diffcut_engine.graph.scoring.mean_sweep_ncut`). The automatic rules accept below
    ``baseline * (1 - AUTO_MARGIN)``; every rule rejects a non-finite NCut.
    """

    def __init__(self, rule: str = "tau", tau: Optional[float] = None, num_thresholds: int = 100):
        if rule not in ACCEPT_RULES:
            raise InputError(f"unknown acceptance rule {rule!r}; choose one of {', '.join(ACCEPT_RULES)}")
        self.rule = rule
        self.tau = None if tau is None else float(tau)
        self.num_thresholds = num_thresholds
        if rule == "tau" and self.tau is None:
            raise InputError("the tau acceptance rule needs a tau")

    @property
    def needs_graph(self) -> bool:
        """Whether the baseline depends on the node's graph (the automatic rules)."""
        return self.rule != "tau"

    def baseline(self, A=None, d=None, y=None) -> float:
        """The value a node's best NCut is compared with (``tau``, or the automatic rule's baseline)."""
        if self.rule == "tau":
            return self.tau
        if self.rule == "random":
            return expected_random_ncut(A, d)
        return mean_sweep_ncut(A, d, y, self.num_thresholds)

    def accepts(self, value: float, baseline: float) -> bool:
        if self.rule == "tau":
            return bool(value < baseline)
        return bool(np.isfinite(value) and value < baseline * (1.0 - AUTO_MARGIN))


@dataclass
class Proposal:
    """A solved node's best split, as a splitter returns it to :func:`grow`.

    ``one`` and ``zero`` are the children's node ids; ``children`` builds the children's splitter states (called
    only when the split is accepted: ``children(one_node, zero_node) -> (one_state, zero_state)``).
    """

    value: float
    baseline: float
    one: Optional[np.ndarray] = None
    zero: Optional[np.ndarray] = None
    children: Optional[Callable] = None
    exact: bool = True


def grow(roots: Sequence[NCutNode], states: Sequence, propose: Callable, accept: Acceptance, *,
         schedule: str = "depth_first", on_solved: Optional[Callable] = None, release: Optional[Callable] = None):
    """Run the recursion from ``roots``.

    Parameters
    ----------
    roots : sequence of NCutNode
        One root per graph; their subtrees are filled in place.
    states : sequence
        The splitter's state of each root (whatever ``propose`` needs: the node's affinity, a warm start, ...).
    propose : callable
        ``propose(batch, accept) -> list``: for a list of ``(node, state)``, one :class:`Proposal` each, or
        ``None`` for a node that stays a leaf without a split value (too small, isolated node, or proved a leaf
        by a bound: the splitter then sets ``node.value`` itself).
    accept : Acceptance
    schedule : {"depth_first", "level"}
        ``depth_first``: one node per ``propose`` call, in the official pre-order. ``level``: all pending nodes of
        one depth (of every root) per call, in order.
    on_solved : callable, optional
        ``on_solved(node, proposal, accepted)`` after each proposal (e.g. to record the decisions).
    release : callable, optional
        ``release(state)`` once a node is done (its scratch memory can be reused).
    """
    if schedule not in SCHEDULES:
        raise InputError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    depth_first = schedule == "depth_first"
    pending = list(zip(roots, states))
    if depth_first:
        pending.reverse()  # a stack: the first root is popped first
    while pending:
        if depth_first:
            batch = [pending.pop()]
        else:
            batch, pending = pending, []
        proposals = propose(batch, accept)
        children = []
        for (node, state), prop in zip(batch, proposals):
            if prop is not None:
                node.value, node.exact = prop.value, prop.exact
                ok = prop.one is not None and accept.accepts(prop.value, prop.baseline)
                if on_solved is not None:
                    on_solved(node, prop, ok)
                if ok:
                    node.one = NCutNode(prop.one, node.depth + 1)
                    node.zero = NCutNode(prop.zero, node.depth + 1)
                    one_state, zero_state = prop.children(node.one, node.zero) if prop.children else (None, None)
                    children.append(((node.one, one_state), (node.zero, zero_state)))
            if release is not None:
                release(state)
        if depth_first:
            for one, zero in reversed(children):  # LIFO: the "1"-side subtree is finished first
                pending.append(zero)
                pending.append(one)
        else:
            for one, zero in children:
                pending.append(one)
                pending.append(zero)
