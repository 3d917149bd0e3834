"""Random-walk NCut (graph/rwncut.py): the flow identity, pi, P^k, planted Markov chains, options."""

import numpy as np
import pytest

from diffcut_engine.errors import InputError
from diffcut_engine.graph import ncut_values, recursive_ncut
from diffcut_engine.graph.rwncut import (GRAPHS, SUBGRAPH_MODES, expected_random_ncut, feature_transition_matrix,
                                         flow_graph, random_walk_affinity, rw_ncut, stationary_distribution,
                                         transition_power)
from planted import planted_features, planted_regions, same_partition


def random_chain(n, seed):
    rng = np.random.default_rng(seed)
    P = rng.random((n, n)) ** 3 + 1e-3  # positive (irreducible, aperiodic), far from uniform, not reversible
    return P / P.sum(1, keepdims=True)


def planted_chain(sizes, B, seed=0):
    """A block Markov chain: P_ij proportional to B[block(i), block(j)] * w_j (destination popularity w).

    Within a block the flow graph is rank one (w_i w_j up to a block constant), so every split inside a block
    has NCut exactly 1: a structureless block, where the automatic rules must stop. B need not be symmetric
    (then P is not reversible)."""
    rng = np.random.default_rng(seed)
    b = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(b.size)  # planted blocks need not be contiguous
    b = b[perm]
    w = rng.uniform(0.5, 2.0, b.size)
    P = np.asarray(B, dtype=float)[b][:, b] * w[None, :]
    return P / P.sum(1, keepdims=True), b


NESTED_B = [[1, .3, .02, .03], [.25, 1, .02, .02], [.03, .02, 1, .3], [.02, .03, .35, 1]]  # {0,1} vs {2,3}
NESTED_SIZES = [12, 18, 14, 16]


def test_random_walk_ncut_equals_shi_malik_ncut_of_the_flow_graph():
    P = random_chain(40, 0)
    st = stationary_distribution(P)
    pi = st.pi
    assert st.converged and st.residual < 1e-10
    np.testing.assert_allclose(pi @ P, pi, atol=1e-14)
    W = flow_graph(P, pi)
    np.testing.assert_allclose(W, W.T)
    np.testing.assert_allclose(W.sum(1), pi, atol=1e-15)  # degrees = pi
    F = pi[:, None] * P
    rng = np.random.default_rng(1)
    X = rng.random((40, 25)) < rng.random(25)  # 25 random partitions of varied balance
    X[0], X[1] = True, False
    rw = []
    for a in X.T:
        flow_out, flow_in = F[a][:, ~a].sum(), F[~a][:, a].sum()
        assert flow_out == pytest.approx(flow_in, rel=1e-12)  # balanced flow across any cut
        rw.append(flow_out / pi[a].sum() + flow_in / pi[~a].sum())
    np.testing.assert_allclose(ncut_values(W, W.sum(1), X), rw, rtol=1e-12)


def test_stationary_distribution_reports_convergence():
    P = random_chain(30, 2)
    st = stationary_distribution(P, tol=1e-13)
    assert st.converged and 1 < st.iterations < 200
    short = stationary_distribution(P, tol=1e-13, max_iter=2)
    assert not short.converged and short.iterations == 2 and short.residual > st.residual
    assert short.pi.sum() == pytest.approx(1.0)
    with pytest.raises(InputError, match="row-stochastic"):
        stationary_distribution(P * 1.1)
    with pytest.raises(InputError, match="negative"):
        stationary_distribution(P - 0.5)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8, 13])
def test_transition_power_equals_matrix_power_and_keeps_pi(k):
    P = random_chain(25, 3)
    Pk = transition_power(P, k)
    np.testing.assert_allclose(Pk, np.linalg.matrix_power(P, k), rtol=1e-12, atol=1e-15)
    pi = stationary_distribution(P).pi
    np.testing.assert_allclose(pi @ Pk, pi, atol=1e-13)
    with pytest.raises(InputError):
        transition_power(P, 0)


def accepted_depth(res):
    return max([s["depth"] + 1 for s in res.splits if s["accepted"]], default=0)


# (mean, symmetric) is left out on purpose: (P + P^T)/2 ignores pi, so inside a block it is rank two, not
# structureless, and the mean rule keeps splitting (one reason the flow graph is the default).
@pytest.mark.parametrize("subgraph", SUBGRAPH_MODES)
@pytest.mark.parametrize("threshold,graph", [(t, g) for t in ("random", "mean") for g in GRAPHS
                                             if (t, g) != ("mean", "symmetric")])
def test_planted_nested_chain_is_recovered_at_the_planted_depth(threshold, graph, subgraph):
    P, blocks = planted_chain(NESTED_SIZES, NESTED_B)
    res = rw_ncut(P, graph=graph, threshold=threshold, subgraph=subgraph)
    assert same_partition(res.labels, blocks)
    # two levels: {0,1} | {2,3} first, then each pair; every block is a leaf
    assert accepted_depth(res) == 2 and sum(s["accepted"] for s in res.splits) == 3
    top = res.splits[0]
    assert top["depth"] == 0 and top["ncut"] < top["baseline"]
    assert set(blocks[res.tree.one.indices] // 2) in ({0}, {1})  # the first split is the group split


def test_planted_depth_one_and_multi_node_paths():
    B = [[1, .05, .05], [.05, 1, .05], [.05, .05, 1]]  # flat: three blocks, no hierarchy
    P, blocks = planted_chain([15, 20, 25], B, seed=4)
    for k in (1, 2, 4):
        res = rw_ncut(P, k=k)
        assert same_partition(res.labels, blocks), k
    # P^k tends to 1 pi^T: the structure (and the cut's contrast) fades as k grows
    values = [rw_ncut(P, k=k).splits[0]["ncut"] for k in (1, 4, 16)]
    assert values[0] < values[1] < values[2]


def test_structureless_chain_is_one_segment():
    P, _ = planted_chain([40], [[1.0]], seed=5)
    for threshold in ("random", "mean"):
        res = rw_ncut(P, threshold=threshold)
        assert res.num_segments == 1 and not any(s["accepted"] for s in res.splits)
        assert res.splits[0]["ncut"] == pytest.approx(1.0)


def test_constant_threshold_uses_build_tree_and_matches_the_own_recursion():
    P = random_chain(48, 6)
    via_tree = rw_ncut(P, threshold="constant", tau=0.99)
    assert via_tree.ncut_tree is not None
    own = rw_ncut(P, threshold="constant", tau=0.99, max_depth=64)  # max_depth forces rwncut.py's own loop
    np.testing.assert_array_equal(via_tree.labels, own.labels)
    assert via_tree.num_segments > 1
    np.testing.assert_array_equal(via_tree.ncut_tree.cut(0.99), via_tree.labels)


def test_min_size_guard():
    B = [[1, .02, .02], [.02, 1, .02], [.02, .02, 1]]
    P, blocks = planted_chain([3, 20, 25], B, seed=7)
    full = rw_ncut(P, min_size=1)
    assert same_partition(full.labels, blocks)
    guarded = rw_ncut(P, min_size=4)
    assert guarded.num_segments == 2
    assert np.bincount(guarded.labels).min() >= 4


@pytest.mark.parametrize("kw, match", [
    ({"max_iter": 0}, "max_iter"), ({"max_iter": True}, "max_iter"), ({"tol": 0}, "tol"), ({"tol": -1.0}, "tol"),
    ({"max_depth": -1}, "max_depth"), ({"max_depth": 1.5}, "max_depth"), ({"max_depth": "2"}, "max_depth"),
])
def test_stationary_and_depth_options_are_validated(kw, match):
    """rw_ncut took max_iter=0 (the uniform start instead of the stationary distribution), tol <= 0 (10,000
    iterations that never converge) and any max_depth; stationary_distribution refuses the first two."""
    P, _ = planted_chain([10, 12], [[1, .02], [.02, 1]], seed=3)
    with pytest.raises(InputError, match=match):
        rw_ncut(P, **kw)


def test_expected_random_ncut_of_a_uniform_block_is_one():
    A = np.ones((10, 10))
    assert expected_random_ncut(A, A.sum(1)) == pytest.approx(1.0)


def test_feature_walk_reproduces_diffcut_ncut():
    regions = planted_regions(8, 10, "quadrants")
    feats = planted_features(regions, channels=16, noise=0.3, seed=1)
    P = feature_transition_matrix(feats, alpha=10.0)
    np.testing.assert_allclose(P.sum(1), 1.0)
    res = rw_ncut(P, threshold="constant", tau=0.5, shape=regions.shape)
    assert same_partition(res.labels, recursive_ncut(feats, alpha=10.0, tau=0.5))
    # The automatic rule never merges regions, but it splits noisy ones (every split along a noise direction beats
    # the random-split baseline a little): the known limit of both parameter-free rules, see rwncut.py.
    auto = rw_ncut(P, shape=regions.shape, min_size=4).labels
    assert all(len(set(regions[auto == k].tolist())) == 1 for k in np.unique(auto))


def test_adjacency_kinds_are_symmetric_and_options_are_validated():
    P = random_chain(20, 8)
    for graph in GRAPHS:
        W, st = random_walk_affinity(P, graph=graph, k=2)
        np.testing.assert_allclose(W, W.T, atol=1e-12)
        assert W.min() >= 0 and (st is not None) == (graph in ("flow", "raw"))
    for bad in (dict(graph="nope"), dict(threshold="nope"), dict(min_size=0), dict(subgraph="x"),
                dict(threshold="constant", tau=-1), dict(k=0)):
        with pytest.raises(InputError):
            rw_ncut(P, **bad)
    with pytest.raises(InputError, match="shape"):
        rw_ncut(P, shape=(3, 3))


def test_rw_ncut_input_errors_are_input_errors():
    """shape=64 raised a bare TypeError and (-8, -8) a bare ValueError; a torch P that requires grad a
    RuntimeError; np.float32 ceilings were refused while True was taken; string P was taken."""
    import torch

    from diffcut_engine.graph.rwncut import feature_transition_matrix

    f = np.random.default_rng(0).standard_normal((6, 6, 5)).astype(np.float32)
    P = feature_transition_matrix(f)
    want = rw_ncut(P, shape=(6, 6)).labels
    for bad in (64, (-6, -6), (6, 6.0), (True, 36), (4, 9, 2)):
        with pytest.raises(InputError, match="shape"):
            rw_ncut(P, shape=bad)
    assert np.array_equal(rw_ncut(torch.from_numpy(P).requires_grad_(), shape=(6, 6)).labels, want)
    assert np.array_equal(rw_ncut(P, shape=(np.int64(6), 6)).labels, want)
    for bad in (True, np.nan, -1.0, "0.1"):
        with pytest.raises(InputError, match="ceiling"):
            rw_ncut(P, ceiling=bad)
    rw_ncut(P, ceiling=np.float32(0.5))
    with pytest.raises(InputError, match="real numeric"):
        rw_ncut(P.astype(str))
    with pytest.raises(InputError, match="real numeric"):
        rw_ncut(P + 0j)
