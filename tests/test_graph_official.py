"""The default ``compat="official"``: the official zero-row rule on the fast path (issue 22).

Checked against ``graph_reference.literal_official`` (the official painting recursion written out literally,
solved in float64: the rule without the float32 rounding of the official eigensolves) on realistic features of
scikit-image photos (``realistic.py``: Lab colour + position + noise, and a filter bank + noise), where plain index
sets (``compat="clean"``) give another partition in several cases, so these tests can tell the two apart.
"""

import numpy as np
import pytest

from diffcut_engine import InputError
from diffcut_engine.graph import build_trees_batched, ncut_tree, recursive_ncut
from diffcut_engine.graph.device import device_ncut_trees

from graph_reference import literal_official, official_affinity
from planted import same_partition
from realistic import FAMILIES, PHOTOS

CASES = [(fam, photo, 16, 16, 0.7) for fam in FAMILIES for photo in PHOTOS] + [
    ("lab", "astronaut", 16, 16, 0.5), ("lab", "rocket", 14, 20, 0.7), ("filters", "astronaut", 14, 20, 0.7)]


@pytest.fixture(scope="module")
def outcomes():
    """Per case: features, the literal official labels (float64 solves), the default's and clean's labels."""
    out = []
    for fam, photo, h, w, tau in CASES:
        feats = FAMILIES[fam](photo, h, w)
        out.append((feats, tau, literal_official(feats, tau=tau, dtype=np.float64),
                    recursive_ncut(feats, tau=tau), recursive_ncut(feats, tau=tau, compat="clean")))
    return out


def test_default_gives_the_official_partition_and_label_ids(outcomes):
    for feats, tau, ref, default, _ in outcomes:
        np.testing.assert_array_equal(default, ref)


def test_the_family_tells_the_rule_apart(outcomes):
    # plain index sets differ from the official partition in several of these cases (the test above can fail)
    differ = sum(not same_partition(ref, clean) for _, _, ref, _, clean in outcomes)
    assert differ >= 3
    several = sum(int(ref.max()) >= 2 for _, _, ref, _, _ in outcomes)
    assert several >= 6


def test_every_solver_gives_the_official_partition(outcomes):
    for feats, tau, ref, _, _ in outcomes[:2]:
        for solver in ("dense", "lanczos", "lobpcg"):
            np.testing.assert_array_equal(recursive_ncut(feats, tau=tau, solver=solver), ref)


def test_tree_cut_follows_the_rule_at_every_tau(outcomes):
    feats = outcomes[0][0]
    tree = ncut_tree(feats, tau_max=0.8)
    assert tree.compat == "official"
    for tau in (0.5, 0.7):
        np.testing.assert_array_equal(tree.cut(tau), literal_official(feats, tau=tau, dtype=np.float64))


def test_batched_and_device_paths_follow_the_same_rule(outcomes):
    feats = [o[0] for o in outcomes[:2]]
    taus = [o[1] for o in outcomes[:2]]
    trees = device_ncut_trees(feats, tau_max=0.7, xp=np)  # the device code path, run on numpy
    for f, tau, tree, o in zip(feats, taus, trees, outcomes):
        assert tree.compat == "official"
        np.testing.assert_array_equal(tree.cut(tau), o[2])
    clean = device_ncut_trees(feats, tau_max=0.7, xp=np, compat="clean")
    for tree, o in zip(clean, outcomes):
        np.testing.assert_array_equal(tree.cut(0.7), o[4])
    # the bare batched entry point on affinities, and the zero rows left out below the root only
    W = official_affinity(feats[0], 10.0)
    tree, = build_trees_batched([W], tau_max=0.7, shapes=[feats[0].shape[:2]])
    np.testing.assert_array_equal(tree.cut(0.7), o_ref := outcomes[0][2])
    zero = np.flatnonzero((W == 0).any(axis=1))
    for node in tree.nodes():
        if node.depth >= 2:
            assert not np.isin(zero, node.indices).any()
    assert o_ref.max() >= 1


def test_float32_mode_is_the_official_arithmetic(outcomes):
    feats, tau = outcomes[0][0], outcomes[0][1]
    np.testing.assert_array_equal(recursive_ncut(feats, tau=tau, compat="official-float32"),
                                  literal_official(feats, tau=tau))
    with pytest.raises(InputError, match="host only"):
        build_trees_batched([official_affinity(feats, 10.0)], tau_max=0.5, compat="official-float32")
    with pytest.raises(InputError, match="host only"):
        device_ncut_trees([feats], tau_max=0.5, xp=np, compat="official-float32")
