"""Exactly disconnected graphs (several connected components of W's non-zero entries): their Fiedler eigenvalue is
degenerate, so an eigensolver returns an arbitrary vector of the eigenspace. The engine splits such a (sub)graph
along the component of its first node (eigen.component_split), in every backend: numpy, the native core and the
stacked (device) path run on numpy give the same partitions and label ids.

Such graphs come from features whose cosine similarities take only a few values: one channel (every token +x or
-x), one-hot classes (similarity 1 within a class, 0 across), or exactly repeated tokens."""

import numpy as np
import pytest

from diffcut_engine import graph
from diffcut_engine.graph import eigen, native


def one_hot_features(h, w, classes, seed, channels=None):
    """(h, w, C) float32: each token the unit vector of its class (random layout, every class present)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=h * w)
    labels[:classes] = np.arange(classes)
    rng.shuffle(labels)
    f = np.zeros((h * w, channels or classes), np.float32)
    f[np.arange(h * w), labels] = 1.0
    return f.reshape(h, w, -1), labels.reshape(h, w)


def sign_features(h, w, seed):
    """(h, w, 1): one channel, so every cosine similarity is +1 or -1: two cliques."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((h, w, 1)).astype(np.float32)
    f[0, 0], f[-1, -1] = 1.0, -1.0
    return f, (f[..., 0] > 0).astype(np.int64)


def _is_refinement(labels, classes):
    """Every segment lies inside one class."""
    return all(np.unique(classes[labels == s]).size == 1 for s in np.unique(labels))


def test_component_split_is_the_first_nodes_component():
    A = np.zeros((6, 6), np.float32)
    for group in ((0, 2, 5), (1, 3), (4,)):
        A[np.ix_(group, group)] = 1.0
    A[0, 2] = A[2, 0] = 0.5
    d = A.sum(axis=1).astype(np.float64)
    u = eigen.component_split(A, d)
    y = u / np.sqrt(d)
    c = d[[0, 2, 5]].sum() / d.sum()
    assert np.allclose(y, np.where(np.isin(np.arange(6), (0, 2, 5)), 1.0 - c, -c), rtol=0, atol=1e-15)
    assert abs(np.dot(u, np.sqrt(d))) < 1e-12  # orthogonal to the trivial eigenvector
    # a connected graph keeps its eigenvector
    A[0, 1] = A[1, 0] = A[3, 4] = A[4, 3] = 1e-30
    assert eigen.component_split(A, A.sum(axis=1).astype(np.float64)) is None
    # the dense solver takes it where the graph is disconnected: the split is the component of node 0, NCut 0
    B = np.zeros((9, 9), np.float32)
    for group in ((1, 4, 7), (0, 3, 6, 8), (2, 5)):
        B[np.ix_(group, group)] = 1.0
    dB = B.sum(axis=1)
    yB = eigen.fiedler_vector(B, dB, solver="dense")
    side, value = graph.scoring.best_threshold_split(B, dB, yB.astype(np.float64))
    assert value == 0.0
    assert set(np.flatnonzero(side if side[0] else ~side)) == {0, 3, 6, 8}


CASES = [("sign", 16, 16, None), ("sign", 5, 40, None), ("sign", 13, 7, None),
         ("onehot", 12, 12, 3), ("onehot", 9, 20, 4), ("onehot", 16, 16, 2), ("onehot", 11, 11, 5)]


def _case(kind, h, w, classes, seed):
    if kind == "sign":
        return sign_features(h, w, seed)
    return one_hot_features(h, w, classes, seed, channels=classes + 2)


@pytest.mark.parametrize("kind,h,w,classes", CASES)
@pytest.mark.parametrize("compat", ["official", "clean"])
def test_every_backend_splits_components_alike(kind, h, w, classes, compat):
    f, cls = _case(kind, h, w, classes, seed=h * w)
    count = np.unique(cls).size
    ref = graph.recursive_ncut(f, alpha=10.0, tau=0.5, compat=compat, graph_backend="numpy")
    if compat == "clean":
        # every component separated (each such split has NCut 0), no clique split (NCut 1)
        assert _is_refinement(ref, cls) and np.unique(ref).size == count
    else:
        # every node's row holds an exact zero, so the zero-row rule stops after the root's split: the first
        # token's component against the rest
        assert np.unique(ref).size == 2
        assert np.array_equal(ref == ref.flat[0], cls == cls.flat[0])
    trees = graph.device_ncut_trees([f], alpha=10.0, tau_max=0.5, xp=np, compat=compat)
    assert np.array_equal(trees[0].cut(0.5), ref)
    for solver in ("dense", "auto"):
        assert np.array_equal(graph.recursive_ncut(f, alpha=10.0, tau=0.5, compat=compat, solver=solver,
                                                   graph_backend="numpy"), ref)


@pytest.mark.parametrize("kind,h,w,classes", CASES)
@pytest.mark.parametrize("compat", ["official", "clean"])
def test_native_core_splits_components_as_numpy(built, kind, h, w, classes, compat):
    f, _ = _case(kind, h, w, classes, seed=h * w)
    ref = graph.recursive_ncut(f, alpha=10.0, tau=0.5, compat=compat, graph_backend="numpy")
    for solver in ("dense", "auto"):
        got = graph.recursive_ncut(f, alpha=10.0, tau=0.5, compat=compat, solver=solver, graph_backend="native")
        assert np.array_equal(got, ref), (solver, np.bincount(got.ravel()), np.bincount(ref.ravel()))
    assert native.native_available()


def test_large_disconnected_graph_takes_the_rule_after_the_iterative_solvers():
    """Above the dense size of ``auto`` Lanczos and block Krylov cannot certify a degenerate eigenvalue; the dense
    fallback then applies the rule: numpy and the stacked path agree on a 48 x 48 grid (2304 tokens)."""
    f, cls = one_hot_features(48, 48, 3, seed=1, channels=4)
    ref = graph.recursive_ncut(f, alpha=10.0, tau=0.5, compat="official", graph_backend="numpy")
    assert np.array_equal(ref == ref.flat[0], cls == cls.flat[0])
    if native.native_available():
        assert np.array_equal(graph.recursive_ncut(f, alpha=10.0, tau=0.5, compat="official",
                                                   graph_backend="native"), ref)


def test_stacked_iterative_path_takes_the_rule(monkeypatch):
    """The stacked path's per-subgraph ``eigsh`` (above ``DENSE_MAX_NODES``; lowered here so a small grid takes it)
    applies the rule too: the same labels as the host on a 3-component graph, where the deflated eigenvalue 1 is
    still double."""
    monkeypatch.setattr(eigen, "DENSE_MAX_NODES", 64)
    for compat in ("official", "clean"):
        f, _ = one_hot_features(12, 14, 3, seed=4, channels=5)
        ref = graph.recursive_ncut(f, alpha=10.0, tau=0.5, compat=compat, graph_backend="numpy")
        trees = graph.device_ncut_trees([f], alpha=10.0, tau_max=0.5, xp=np, compat=compat)
        assert np.array_equal(trees[0].cut(0.5), ref)


# --- connected only through weights at rounding level (eigen.near_null_split) ---

def weakly_linked_affinity(sizes, link, seed):
    """float32 W of cliques (weights in [0.5, 1]) joined by links of about ``link`` (a random sparse set): connected
    in its non-zero pattern, but the normalised Laplacian has one eigenvalue within rounding of 0 per clique."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    perm = rng.permutation(n)  # the cliques interleaved, node 0 in any of them
    group = np.repeat(np.arange(len(sizes)), sizes)[perm]
    A = np.where(group[:, None] == group[None, :], rng.uniform(0.5, 1.0, (n, n)), 0.0)
    links = (group[:, None] != group[None, :]) & (rng.random((n, n)) < 0.3)
    A = np.where(links, link * rng.uniform(0.5, 2.0, (n, n)), A)
    A = np.triu(A) + np.triu(A, 1).T
    for a in range(len(sizes) - 1):  # a chain of links keeps every clique reachable
        i, j = np.flatnonzero(group == a)[0], np.flatnonzero(group == a + 1)[0]
        A[i, j] = A[j, i] = link
    return A.astype(np.float32), group


@pytest.mark.parametrize("sizes", [(7, 11), (5, 9, 12), (20, 3), (6, 6, 6, 6)])
@pytest.mark.parametrize("seed", range(3))
def test_weakly_linked_graph_takes_the_canonical_near_null_vector(sizes, seed):
    """lambda_2 at rounding level in a connected graph: dsyevr's second vector was an arbitrary mix of the trivial
    vector and the cluster indicators (the host and the batched path split a 40-node subgraph with mirrored sides,
    hence swapped label ids, on one CPU). The dense solve now takes the projection of node 0's unit vector on the
    near-null eigenvectors, less its sqrt(d) part: y is D-orthogonal to 1, two-valued (node 0's clique against the
    rest), and the same whatever the links' size."""
    sides = []
    for link in (1e-22, 1e-26, 1e-30):
        A, group = weakly_linked_affinity(sizes, link, seed)
        d = A.astype(np.float64).sum(axis=1)
        assert eigen.component_split(A, d) is None  # connected: the exact-component rule does not apply
        y = eigen.fiedler_vector(A.astype(np.float64), d, solver="dense")  # (the solvers' float64 copy)
        assert abs(np.dot(d, y)) <= 1e-9 * np.dot(d, np.abs(y))
        mine = group == group[0]
        assert np.ptp(y[mine]) <= 1e-9 * np.abs(y).max() and np.ptp(y[~mine]) <= 1e-9 * np.abs(y).max()
        assert np.sign(y[mine][0]) != np.sign(y[~mine][0])
        side, value = graph.scoring.best_threshold_split(A, d, y)
        assert np.array_equal(side, side[0] == mine) or np.array_equal(side, mine) or np.array_equal(~side, mine)
        assert value < 1e-12
        sides.append(y > 0)
        # the exactly disconnected graph (links removed) splits the same way, with the same sign
        B = np.where(group[:, None] == group[None, :], A, 0).astype(np.float32)
        yB = eigen.fiedler_vector(B.astype(np.float64), B.astype(np.float64).sum(axis=1), solver="dense")
        assert np.array_equal(yB > 0, y > 0)
    assert all(np.array_equal(s, sides[0]) for s in sides)


def noisy_one_hot(h, w, classes, seed, noise=1e-3):
    """One-hot classes in vertical bands with small noise: cross-class affinities ~1e-30 after alpha = 10, so every
    split of the classes has NCut at rounding level (root NCut ~1e-22)."""
    r = np.random.default_rng(seed)
    f = np.zeros((h, w, classes + 3), np.float32)
    for j in range(classes):
        f[:, j * w // classes:(j + 1) * w // classes, j] = 1
    f += noise * r.standard_normal(f.shape).astype(np.float32)
    return f


NEAR_NULL_CASES = [(10, 12, 3), (16, 16, 2), (9, 20, 4), (14, 14, 5), (20, 8, 2)]


@pytest.mark.parametrize("h,w,classes", NEAR_NULL_CASES)
@pytest.mark.parametrize("compat", ["official", "clean"])
def test_weakly_linked_features_same_labels_with_every_solver_and_backend(h, w, classes, compat):
    """Label ids and partitions equal across the dense, Lanczos and block Krylov solvers, the stacked (device)
    path run on numpy and the native core, for features whose classes are linked at rounding level only."""
    f = noisy_one_hot(h, w, classes, seed=h * w + classes)
    ref = graph.recursive_ncut(f, alpha=10.0, tau=0.3, compat=compat, graph_backend="numpy", solver="dense")
    assert ref.max() >= 1
    for solver in ("auto", "lanczos", "block"):
        assert np.array_equal(graph.recursive_ncut(f, alpha=10.0, tau=0.3, compat=compat, solver=solver,
                                                   graph_backend="numpy"), ref), solver
    trees = graph.device_ncut_trees([f], alpha=10.0, tau_max=0.5, xp=np, compat=compat)
    assert np.array_equal(trees[0].cut(0.3), ref)
    if native.native_available():
        for solver in ("dense", "auto"):
            assert np.array_equal(graph.recursive_ncut(f, alpha=10.0, tau=0.3, compat=compat, solver=solver,
                                                       graph_backend="native"), ref), solver


@pytest.mark.parametrize("h,w,classes", NEAR_NULL_CASES + [(12, 14, 3), (16, 20, 6)])
def test_stacked_iterative_path_takes_the_near_null_rule(h, w, classes, monkeypatch):
    """The stacked path's per-subgraph ``eigsh`` (above ``DENSE_MAX_NODES``, lowered here) returned an arbitrary
    vector of a weakly linked subgraph's near-null eigenspace (3 or more clusters): other labels than the host in
    8 of 14 cases. It now applies the host's near-null rule."""
    monkeypatch.setattr(eigen, "DENSE_MAX_NODES", 64)
    f = noisy_one_hot(h, w, classes, seed=h * w + classes)
    for compat in ("official", "clean"):
        ref = graph.recursive_ncut(f, alpha=10.0, tau=0.3, compat=compat, graph_backend="numpy")
        assert ref.max() + 1 == classes
        trees = graph.device_ncut_trees([f], alpha=10.0, tau_max=0.5, xp=np, compat=compat)
        assert np.array_equal(trees[0].cut(0.3), ref), compat


def test_weak_links_above_rounding_level_keep_their_eigenvector_on_every_backend():
    """Five one-hot stripes with 1e-4 noise and alpha 3.7: lambda_2..5 ~ 1e-12, above rounding level (1e-13). The
    host had applied the near-null rule from 1e-10 and the stacked path from 1e-13, so the two split the root
    2 | 62 and 26 | 38. Both now keep the eigenvector there, as the native core does."""
    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(5), [2, 20, 12, 24, 6])
    f = (np.eye(8, dtype=np.float32)[lab]
         + np.float32(1e-4) * rng.standard_normal((64, 8)).astype(np.float32)).reshape(8, 8, 8)
    W = graph.affinity_from_tokens(graph.l2_normalize(f.reshape(64, 8)), 3.7, dtype=np.float64)
    lam = np.linalg.eigvalsh(eigen.normalized_laplacian(W, W.sum(axis=1)))
    assert 1e-13 < lam[1] < 1e-10 and lam[5] > 0.5
    for compat in ("official", "clean"):
        ref = graph.recursive_ncut(f, alpha=3.7, tau=0.5, compat=compat, graph_backend="numpy")
        assert ref.max() >= 1
        got = graph.device_ncut_trees([f], alpha=3.7, tau_max=0.5, xp=np, compat=compat)[0].cut(0.5)
        assert np.array_equal(got, ref), compat
        if native.native_available():
            assert np.array_equal(graph.recursive_ncut(f, alpha=3.7, tau=0.5, compat=compat,
                                                       graph_backend="native"), ref), compat
