"""Level-synchronous batched recursive NCut (graph/batched.py) and the array-namespace helpers (graph/xp.py).

The reference is the host recursion ``build_tree(W, solver="dense")``. Trees are compared node by node (pre-order):
same indices, depths and split decisions, values equal to rounding. Cases whose Fiedler vector is not unique
(a repeated eigenvalue: constant features, two disconnected nodes) are compared only up to what is determined.
"""

import inspect

import numpy as np
import pytest

from diffcut_engine import InputError
from diffcut_engine.graph import (affinity, build_tree, candidate_thresholds, device_ncut_trees, recursive_ncut,
                                  recursive_ncut_affinity)
from diffcut_engine.graph import batched, validation
from diffcut_engine.graph.batched import build_trees_batched
from diffcut_engine.graph.xp import array_namespace, as_array, cupy_available, is_device, to_host

from planted import planted_features, planted_regions
from test_graph import smooth_field

gpu = pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")

_HOST_EXACT = {"leaf_bounds": False} if "leaf_bounds" in inspect.signature(build_tree).parameters else {}


def host_tree(W, tau_max):
    """The host reference, with every leaf value exact (no spectral-bound shortcut) where that option exists."""
    return build_tree(W, tau_max=tau_max, solver="dense", **_HOST_EXACT)


def planted_W(h, w, kind, seed, **kw):
    return affinity(planted_features(planted_regions(h, w, kind), seed=seed, **kw), 10.0)


def assert_same_tree(ref, got, rtol=1e-9):
    """Node-by-node equality in pre-order; returns the number of splits (so callers can require a non-trivial tree)."""
    assert got.shape == ref.shape and got.tau_max == ref.tau_max and got.compat == ref.compat
    ref_nodes, got_nodes = list(ref.nodes()), list(got.nodes())
    assert len(got_nodes) == len(ref_nodes)
    for r, g in zip(ref_nodes, got_nodes):
        assert g.depth == r.depth
        assert g.indices.dtype.kind == "i" and np.all(np.diff(g.indices) > 0)
        np.testing.assert_array_equal(g.indices, r.indices)
        assert g.is_split == r.is_split
        if getattr(r, "exact", True):
            if np.isinf(r.value):
                assert np.isinf(g.value)
            else:
                assert g.value == pytest.approx(r.value, rel=rtol, abs=1e-15)
        else:  # a host leaf whose value is only a proven lower bound
            assert g.value >= r.value - 1e-12 and g.value >= ref.tau_max
    return sum(n.is_split for n in ref_nodes)


def children_sets(tree):
    """Each split as an unordered pair of index sets (for graphs whose "1"/"0" orientation is a rounding tie)."""
    return sorted((n.depth, sorted([tuple(n.one.indices), tuple(n.zero.indices)])) for n in tree.nodes() if n.is_split)


# ------------------------------------------------------------------------------------------------------------
# Agreement with the host recursion
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("W_factory,tau", [
    (lambda: planted_W(12, 16, "quadrants", 0), 0.5),
    (lambda: planted_W(20, 20, "disc", 1), 0.3),
    (lambda: planted_W(14, 18, "stripes", 2), 0.6),
    (lambda: planted_W(10, 12, "quadrants", 3, noise=0.8), 0.9),
    (lambda: affinity(smooth_field(16, 20, seed=0), 10.0), 0.2),
    (lambda: affinity(smooth_field(16, 20, seed=1), 10.0), 0.5),
])
def test_tree_equals_host_dense_tree(W_factory, tau):
    W = W_factory()
    tree, = build_trees_batched([W], tau_max=tau)
    assert assert_same_tree(host_tree(W, tau), tree) >= 2
    # the default host tree (which may skip provable leaves) has the same nodes too
    assert_same_tree(build_tree(W, tau_max=tau, solver="dense"), tree)


def test_full_decomposition_equals_host():
    # tau_max = 1 splits almost every subgraph down to single nodes: every level and bucket size is exercised
    W = planted_W(8, 10, "disc", 5)
    tree, = build_trees_batched([W], tau_max=1.0)
    assert assert_same_tree(host_tree(W, 1.0), tree) > 40


def test_cut_equals_host_at_many_taus():
    W = affinity(smooth_field(16, 20, seed=2), 10.0)
    tree, = build_trees_batched([W], tau_max=0.6, shapes=[(16, 20)])
    ref = host_tree(W, 0.6)
    splits = tree.split_values()
    taus = sorted(set(np.round(np.linspace(0.02, 0.6, 15), 4)) | set(splits[splits < 0.6] + 1e-9))
    counts = []
    for tau in taus:
        labels = tree.cut(tau)
        assert labels.shape == (16, 20)
        np.testing.assert_array_equal(labels, ref.cut(tau).reshape(16, 20))
        counts.append(labels.max() + 1)
    for tau in taus[::6]:  # the one-shot host entry point (a full run per tau: only a few)
        np.testing.assert_array_equal(tree.cut(tau).ravel(), recursive_ncut_affinity(W, tau=tau, solver="dense"))
    assert counts == sorted(counts) and counts[-1] >= 5


def test_batch_equals_one_by_one_with_mixed_sizes():
    # sizes 1..400, several sharing the (32, 64] bucket with different sizes, so padding is exercised at every level
    Ws = [planted_W(20, 20, "disc", 1), planted_W(6, 6, "quadrants", 2), planted_W(1, 1, "quadrants", 0),
          planted_W(5, 8, "stripes", 3), affinity(smooth_field(12, 12, seed=3), 10.0), planted_W(7, 7, "disc", 4),
          planted_W(3, 4, "quadrants", 6)]
    shapes = [(20, 20), (6, 6), (1, 1), (5, 8), (12, 12), (7, 7), (3, 4)]
    tau = 0.5
    trees = build_trees_batched(Ws, tau_max=tau, shapes=shapes)
    assert len(trees) == len(Ws)
    total = 0
    for W, shape, tree in zip(Ws, shapes, trees):
        assert tree.shape == shape
        alone, = build_trees_batched([W], tau_max=tau, shapes=[shape])
        assert_same_tree(alone, tree, rtol=1e-12)
        ref = build_tree(W, tau_max=tau, solver="dense", shape=shape, **_HOST_EXACT)
        total += assert_same_tree(ref, tree)
        np.testing.assert_array_equal(tree.cut(tau), ref.cut(tau))
    assert total >= 10


def test_one_host_transfer_per_level(monkeypatch):
    calls = []
    real = batched.to_host

    def counting(x):
        calls.append(x.size)
        return real(x)

    monkeypatch.setattr(batched, "to_host", counting)
    monkeypatch.setattr(validation, "to_host", counting)  # (the value checks' transfer)
    Ws = [planted_W(12, 16, "quadrants", 0), affinity(smooth_field(16, 20, seed=1), 10.0), planted_W(1, 1, "disc", 0)]
    trees = build_trees_batched(Ws, tau_max=0.5)
    solved_depths = [n.depth for t in trees for n in t.nodes() if n.indices.size >= 2]
    # one per level, plus one for the whole batch's value checks (finite, non-negative, symmetric)
    assert len(calls) == max(solved_depths) + 2 >= 5


def test_thresholds_reproduce_numpy_linspace_bitwise():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 37)) * 10.0 ** rng.integers(-8, 3, size=(50, 1))
    y[3] = 0.25  # constant row: zero step
    y[4, :] = 0.0
    y[5] = 1e-310 * np.arange(37)  # subnormal: the step underflows to zero
    thr = candidate_thresholds(y, 100)  # a stack: numpy's linspace operation by operation, row by row
    for row, t in zip(y, thr):
        ref = np.linspace(row.min() * 0.99, row.max() * 0.99, 100, dtype=row.dtype)
        np.testing.assert_array_equal(t, ref)


def test_bucket_keys():
    assert [batched.bucket_key(n) for n in (2, 32, 33, 64, 65, 128, 129, 1024, 1025)] == [0, 0, 6, 6, 7, 7, 8, 10, 11]


# ------------------------------------------------------------------------------------------------------------
# Degenerate inputs
# ------------------------------------------------------------------------------------------------------------

def test_constant_features_give_one_leaf():
    W = affinity(np.ones((6, 7, 5), np.float32), 10.0)
    tree, = build_trees_batched([W], tau_max=0.9)
    ref = host_tree(W, 0.9)
    assert not tree.root.is_split and not ref.root.is_split
    # every bipartition of a uniform complete graph has NCut exactly 1
    assert tree.root.value == pytest.approx(1.0, rel=1e-12)
    assert_same_tree(ref, tree)
    np.testing.assert_array_equal(tree.cut(0.5), np.zeros(42, np.int32))


def test_tiny_graphs():
    W1 = np.ones((1, 1), np.float32)
    W0 = np.zeros((0, 0), np.float32)
    Wi = affinity(planted_features(planted_regions(1, 2, "quadrants")), 10.0)  # two nodes, no edge between them
    Wc = np.array([[1.0, 0.4], [0.4, 1.0]], np.float32)  # two connected nodes, symmetric: |y| is a tie
    Wb = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)  # no self-loops: eigenvalues of M are exactly {1, -1}
    big = planted_W(4, 5, "disc", 2)  # 20 nodes: same bucket, so the two-node graphs are padded to 20 rows
    trees = build_trees_batched([W1, W0, Wi, Wc, Wb, big], tau_max=3.0)
    for W, tree in zip([W1, W0], trees[:2]):
        assert not tree.root.is_split and np.isinf(tree.root.value)
        assert tree.cut(1.0).shape == (W.shape[0],)
    assert_same_tree(host_tree(W1, 3.0), trees[0])
    assert_same_tree(host_tree(W0, 3.0), trees[1])
    w = float(np.float32(0.4))
    expected_value = {2: 0.0, 3: 2 * w / (1 + w), 4: 2.0}  # cut/vol(S) + cut/vol(S')
    for k in (2, 3, 4):
        tree, ref = trees[k], host_tree([W1, W0, Wi, Wc, Wb][k], 3.0)
        assert tree.root.is_split and ref.root.is_split
        assert tree.root.value == pytest.approx(expected_value[k], abs=1e-12)
        assert ref.root.value == pytest.approx(expected_value[k], abs=1e-12)
        assert children_sets(tree) == children_sets(ref) == [(0, [(0,), (1,)])]
    assert_same_tree(host_tree(big, 3.0), trees[5])


def test_duplicate_features():
    feats = planted_features(planted_regions(10, 12, "disc"), seed=7)
    feats[2, 3:9] = feats[2, 3]  # a run of identical tokens
    feats[7] = feats[6]  # a duplicated row of the grid
    W = affinity(feats, 10.0)
    tree, = build_trees_batched([W], tau_max=0.6)
    assert assert_same_tree(host_tree(W, 0.6), tree) >= 2
    labels = tree.cut(0.6).reshape(10, 12)
    assert len(set(labels[2, 3:9].tolist())) == 1


def test_isolated_node_makes_a_leaf_like_the_host():
    W = planted_W(6, 6, "disc", 3).copy()
    W[4, :] = 0
    W[:, 4] = 0
    tree, = build_trees_batched([W], tau_max=0.5)
    assert not tree.root.is_split and np.isinf(tree.root.value)
    assert_same_tree(host_tree(W, 0.5), tree)


def test_float64_bool_and_int_affinities():
    W = planted_W(8, 8, "quadrants", 1)
    ref, = build_trees_batched([W], tau_max=0.5)
    got, = build_trees_batched([W.astype(np.float64)], tau_max=0.5)
    assert_same_tree(ref, got, rtol=0)
    blocks = np.zeros((7, 7), dtype=int)  # blocks of 3 and 4 nodes (unequal: no symmetry to make |y| tie)
    blocks[:3, :3] = blocks[3:, 3:] = 1
    blocks[0, 3] = blocks[3, 0] = 1
    for Wb in (blocks, blocks.astype(bool)):
        tree, = build_trees_batched([Wb], tau_max=0.5)
        assert_same_tree(host_tree(Wb, 0.5), tree)
        assert tree.root.is_split


@pytest.mark.parametrize("Ws,kw,match", [
    ([np.full((3, 3), np.nan)], {}, "NaN"),
    ([np.ones((4, 4)), np.diag([1.0, np.inf, 1.0])], {}, "affinity 1 contains NaN"),
    ([np.ones((3, 4))], {}, "square"),
    ([np.ones((2, 2, 2))], {}, "square"),
    ([np.ones((3, 3), complex)], {}, "real"),
    ([np.ones((3, 3))], {"tau_max": 0.0}, "tau_max"),
    ([np.ones((3, 3))], {"tau_max": -1}, "tau_max"),
    ([np.ones((3, 3))], {"tau_max": "0.5"}, "tau_max"),
    ([np.ones((3, 3))], {"num_thresholds": 1}, "num_thresholds"),
    ([np.ones((4, 4))], {"shapes": [(3, 2)]}, "shape"),
    ([np.ones((4, 4))], {"shapes": [(2, 2), (2, 2)]}, "shapes"),
    ([np.ones((4, 4))], {"xp": "numpy"}, "xp"),
])
def test_bad_inputs_raise_input_error(Ws, kw, match):
    kw = {"tau_max": 0.5, **kw}
    with pytest.raises(InputError, match=match):
        build_trees_batched(Ws, **kw)


def test_empty_batch_and_forced_numpy():
    assert build_trees_batched([], tau_max=0.5) == []
    W = planted_W(6, 8, "stripes", 1)
    ref, = build_trees_batched([W], tau_max=0.5)
    got, = build_trees_batched([W.tolist()], tau_max=0.5, xp=np)
    assert_same_tree(ref, got, rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# xp helpers
# ------------------------------------------------------------------------------------------------------------

class _FakeDeviceArray:
    """Looks like a CuPy array to the namespace check (by module name) without CuPy."""

    __module__ = "cupy._core.core"


def test_namespace_of_host_inputs_is_numpy():
    assert array_namespace(np.ones(3), [1, 2], None, 2.0) is np
    assert array_namespace() is np
    a = np.ones(4)
    assert as_array(a) is a and to_host(a) is a
    assert isinstance(as_array([1, 2]), np.ndarray) and to_host((1, 2)).tolist() == [1, 2]
    assert not is_device(a)
    assert isinstance(cupy_available(), bool)


def test_mixed_namespaces_raise():
    assert is_device(_FakeDeviceArray())
    with pytest.raises(InputError, match="mix host"):
        array_namespace(np.ones(3), _FakeDeviceArray())
    with pytest.raises(InputError, match="mix host"):
        build_trees_batched([np.ones((3, 3)), _FakeDeviceArray()], tau_max=0.5)


def test_device_input_without_cupy_names_the_extra():
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is importable here")
    with pytest.raises(InputError, match=r"diffcut-engine\[gpu\]"):
        array_namespace(_FakeDeviceArray())


def test_torch_cpu_tensor_is_viewed_without_copy():
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = as_array(t)
    assert isinstance(a, np.ndarray) and a.shape == (3, 4) and a.dtype == np.float32
    t[1, 2] = -7.0
    assert a[1, 2] == -7.0  # same memory
    assert np.shares_memory(a, to_host(t))
    g = torch.ones(2, 2, requires_grad=True)
    assert as_array(g).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert array_namespace(t) is np and not is_device(t)
    W = planted_W(6, 6, "quadrants", 0)
    ref, = build_trees_batched([W], tau_max=0.5)
    got, = build_trees_batched([torch.from_numpy(W)], tau_max=0.5)
    assert_same_tree(ref, got, rtol=0)


def test_cuda_tensor_without_cupy_raises_a_clear_error(monkeypatch):
    class FakeCudaTensor:
        __module__ = "torch"
        device = type("Device", (), {"type": "cuda"})()
        dtype = "float32"

    monkeypatch.setattr("diffcut_engine.graph.xp.cupy_available", lambda: False)
    with pytest.raises(InputError, match=r"diffcut-engine\[gpu\].*CPU"):
        as_array(FakeCudaTensor())


# ------------------------------------------------------------------------------------------------------------
# CuPy (CUDA device)
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@gpu
def test_gpu_trees_equal_host_trees():
    import cupy

    Ws = [planted_W(32, 32, "quadrants", 0), planted_W(24, 40, "stripes", 2), affinity(smooth_field(16, 20), 10.0),
          planted_W(5, 8, "disc", 3), planted_W(1, 1, "disc", 0)]
    trees = build_trees_batched([cupy.asarray(W) for W in Ws], tau_max=0.5)
    for W, tree in zip(Ws, trees):
        assert_same_tree(host_tree(W, 0.5), tree)
        assert isinstance(tree.root.indices, np.ndarray)
    forced = build_trees_batched(Ws[:2], tau_max=0.5, xp=cupy)
    for a, b in zip(forced, trees[:2]):
        assert_same_tree(a, b, rtol=1e-12)


@pytest.mark.gpu
@gpu
def test_gpu_one_transfer_per_level_and_no_hidden_syncs(monkeypatch):
    import cupy
    import cupyx

    real = batched.to_host
    calls = []

    def allowed(x):
        calls.append(x.size)
        with cupyx.allow_synchronize(True):
            return real(x)

    monkeypatch.setattr(batched, "to_host", allowed)
    Ws = [cupy.asarray(planted_W(20, 20, "disc", 1)), cupy.asarray(affinity(smooth_field(16, 20), 10.0))]
    with cupyx.allow_synchronize(False):
        trees = build_trees_batched(Ws, tau_max=0.5)
    solved_depths = [n.depth for t in trees for n in t.nodes() if n.indices.size >= 2]
    assert len(calls) == max(solved_depths) + 1


@pytest.mark.gpu
@gpu
def test_gpu_nan_and_mixed_inputs():
    import cupy

    with pytest.raises(InputError, match="NaN"):
        build_trees_batched([cupy.ones((3, 3)), cupy.full((2, 2), cupy.nan)], tau_max=0.5)
    with pytest.raises(InputError, match="mix host"):
        build_trees_batched([cupy.ones((3, 3)), np.ones((3, 3))], tau_max=0.5)
    assert array_namespace(cupy.ones(2)) is cupy and is_device(cupy.ones(2))
    assert isinstance(to_host(cupy.ones(2)), np.ndarray)


@pytest.mark.gpu
@gpu
def test_gpu_cuda_tensor_is_viewed_without_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    import cupy

    t = torch.zeros(3, 3, device="cuda")
    a = as_array(t)
    assert isinstance(a, cupy.ndarray) and a.data.ptr == t.data_ptr()
    assert array_namespace(t) is cupy and is_device(t)
    W = planted_W(8, 8, "quadrants", 1)
    got, = build_trees_batched([torch.from_numpy(W).cuda()], tau_max=0.5)
    assert_same_tree(host_tree(W, 0.5), got)


@pytest.mark.parametrize("limit", [40, 100])
def test_iterative_solver_for_large_buckets_gives_the_dense_trees(monkeypatch, limit):
    import diffcut_engine.graph.eigen as eigen_mod

    feats = planted_features(planted_regions(14, 16, "quadrants"), seed=5)
    W = affinity(feats)
    dense = build_trees_batched([W], tau_max=0.5)[0]
    monkeypatch.setattr(eigen_mod, "DENSE_MAX_NODES", limit)
    calls = []
    real_eigsh = eigen_mod._eigsh(np)
    monkeypatch.setattr(eigen_mod, "_eigsh", lambda xp: lambda *a, **k: calls.append(1) or real_eigsh(*a, **k))
    iterative = build_trees_batched([W], tau_max=0.5)[0]
    assert calls, "no subgraph took the iterative path"
    np.testing.assert_array_equal(iterative.cut(0.5), dense.cut(0.5))
    np.testing.assert_allclose(iterative.split_values(), dense.split_values(), rtol=1e-9)


def test_batched_trees_check_the_affinities_as_build_tree_does():
    """A negative, asymmetric or non-finite W gave a tree (with numpy warnings) where build_tree refuses it; a
    wrongly sized degrees= raised a raw broadcast ValueError."""
    rng = np.random.default_rng(0)
    good = rng.random((6, 6)).astype(np.float32)
    good = (good + good.T) / 2
    for bad, match in ((-good, "non-negative"), (good + np.triu(good, 1), "symmetric"),
                       (np.where(np.eye(6) > 0, np.nan, good).astype(np.float32), "NaN")):
        with pytest.raises(InputError, match=match):
            build_tree(bad, tau_max=0.5)
        with pytest.raises(InputError, match=f"affinity 1 .*{match}"):
            build_trees_batched([good, bad], tau_max=0.5)
    with pytest.raises(InputError, match="degrees"):
        build_trees_batched([good], tau_max=0.5, degrees=[np.ones(5)])
    assert len(build_trees_batched([good, good[:0, :0]], tau_max=0.5)) == 2


def test_exactly_disconnected_graphs_split_as_the_host_splits_them(caplog):
    """Three exact components (block-orthogonal non-negative features, alpha 20): the stacked solve counted 5
    eigenvalues within 1e-13 of 1 (weakly linked clusters inside a component too) and its projection split 36|84
    with NCut 4e-18 where numpy and the core take the first node's component, 40|80 with NCut 0 (ALGORITHM.md 5);
    such subgraphs are now solved again by the host's exact rule."""
    rng = np.random.default_rng(5)
    h, w, blocks, width = 10, 12, 3, 6
    band = np.arange(h * w) * blocks // (h * w)
    x = np.zeros((h * w, blocks * width), np.float32)
    for i, b in enumerate(band):
        v = rng.random(width) * (rng.random(width) > 0.8)
        if not v.any():
            v[rng.integers(width)] = 1
        x[i, b * width:(b + 1) * width] = v
    f = x.reshape(h, w, -1)
    W = affinity(f, 20.0)
    for compat in ("official", "clean"):
        want = build_tree(W, tau_max=0.5, solver="dense", compat=compat)
        assert want.root.value == 0.0 and len(want.root.one.indices) == 40
        import logging

        with caplog.at_level(logging.WARNING, logger="diffcut_engine.graph.batched"):
            got = build_trees_batched([W], tau_max=0.5, xp=np, compat=compat)[0]
        assert "missed the convergence check" not in caplog.text  # (expected here: no warning)
        assert len(got.root.one.indices) == 40 and got.root.value == 0.0
        for tau in (0.2, 0.5):
            assert np.array_equal(got.cut(tau), want.cut(tau)), (compat, tau)
        dev = device_ncut_trees([f], alpha=20.0, tau_max=0.5, xp=np, compat=compat)[0]
        assert np.array_equal(dev.cut(0.5), recursive_ncut(f, alpha=20.0, tau=0.5, compat=compat,
                                                           graph_backend="numpy"))
