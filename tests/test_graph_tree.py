"""The one recursion (graph/tree.py): schedules, acceptance rules and splitters are interchangeable parts."""

import numpy as np
import pytest

from diffcut_engine import InputError
from diffcut_engine.graph import affinity, build_tree, labels_from_masks
from diffcut_engine.graph.batched import BatchedSplitter
from diffcut_engine.graph.host import HostSplitter
from diffcut_engine.graph.tree import Acceptance, NCutNode, NCutTree, Proposal, accepted_masks, grow, preorder

from planted import planted_features, planted_regions
from test_graph import smooth_field
from test_graph_batched import assert_same_tree


def _tree_sig(root):
    return [(n.depth, tuple(n.indices), n.is_split, n.value) for n in preorder(root)]


def _host_grow(W, schedule, accept, **kw):
    splitter = HostSplitter(W, **kw)
    root = NCutNode(np.arange(W.shape[0]), 0)
    grow([root], [splitter.root_state()], splitter.propose, accept, schedule=schedule, release=splitter.release)
    return root


@pytest.mark.parametrize("official", [False, True])
def test_host_splitter_gives_the_same_tree_under_both_schedules(official):
    W = affinity(smooth_field(14, 16, seed=4), 10.0).astype(np.float32 if official else np.float64)
    accept = Acceptance("tau", 0.6)
    depth_first = _host_grow(W, "depth_first", accept, official=official)
    level = _host_grow(W, "level", accept, official=official)
    assert sum(n.is_split for n in preorder(depth_first)) >= 4
    assert _tree_sig(depth_first) == _tree_sig(level)
    # and the public entry point is this configuration
    ref = build_tree(W, tau_max=0.6, compat="official-float32" if official else "clean")
    assert _tree_sig(ref.root) == _tree_sig(depth_first)


def test_batched_splitter_under_the_depth_first_schedule_equals_the_level_one():
    Ws = [affinity(planted_features(planted_regions(12, 14, "disc"), seed=1), 10.0),
          affinity(smooth_field(10, 12, seed=2), 10.0)]
    trees = {}
    for schedule in ("level", "depth_first"):
        splitter = BatchedSplitter(np, Ws, 100)
        roots = [NCutNode(np.arange(W.shape[0]), 0) for W in Ws]
        grow(roots, [0, 1], splitter.propose, Acceptance("tau", 0.5), schedule=schedule)
        trees[schedule] = [NCutTree(r, (W.shape[0],), 0.5, "clean") for r, W in zip(roots, Ws)]
    total = 0
    for a, b in zip(trees["level"], trees["depth_first"]):
        total += assert_same_tree(a, b)
    assert total >= 4


def test_acceptance_rules():
    assert Acceptance("tau", 0.5).accepts(0.49, 0.5) and not Acceptance("tau", 0.5).accepts(0.5, 0.5)
    auto = Acceptance("random")
    assert auto.accepts(0.5, 0.6) and not auto.accepts(0.6, 0.6) and not auto.accepts(np.inf, np.inf)
    assert not auto.accepts(0.6 * (1 - 1e-7), 0.6)  # within the rounding margin: a tie, not a split
    with pytest.raises(InputError, match="acceptance rule"):
        Acceptance("median")
    with pytest.raises(InputError, match="needs a tau"):
        Acceptance("tau")
    with pytest.raises(InputError, match="schedule"):
        grow([], [], lambda b, a: [], Acceptance("tau", 1.0), schedule="breadth")


def test_grow_with_a_toy_splitter_keeps_the_official_preorder():
    """A splitter that halves index ranges: masks come out in pre-order, "1"-side first, and labels follow."""
    def propose(batch, accept):
        out = []
        for node, _ in batch:
            idx = node.indices
            if idx.size < 2:
                out.append(None)
                continue
            half = idx.size // 2
            out.append(Proposal(0.1 * node.depth, accept.baseline(), idx[half:], idx[:half],
                                lambda one, zero: (None, None)))
        return out

    root = NCutNode(np.arange(8), 0)
    grow([root], [None], propose, Acceptance("tau", 0.15))
    masks = accepted_masks(root)
    assert [m.tolist() for m in masks] == [[4, 5, 6, 7], [6, 7], [2, 3]]
    assert labels_from_masks(masks, 8).tolist() == [0, 0, 3, 3, 1, 1, 2, 2]
