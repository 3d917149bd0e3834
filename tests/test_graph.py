import numpy as np
import pytest

from diffcut_engine import InputError
from diffcut_engine.graph import (
    affinity,
    fiedler_vector,
    labels_from_masks,
    ncut_tree,
    ncut_values,
    recursive_ncut,
    recursive_ncut_affinity,
)

from graph_reference import _assemble, literal_clean, literal_official, official_affinity
from planted import planted_features, planted_regions, same_partition

PLANTED = [
    (32, 32, "quadrants", 0),
    (32, 32, "disc", 1),
    (24, 40, "stripes", 2),
    (18, 30, "quadrants", 3),
]


def smooth_field(h, w, c=48, seed=0):
    """Spatially smooth random features with soft boundaries: harder than planted blobs, many near-ties."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(h // 4 + 2, w // 4 + 2, c))
    yy = np.linspace(0, coarse.shape[0] - 1.001, h)
    xx = np.linspace(0, coarse.shape[1] - 1.001, w)
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    f = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
         + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    return (f + 0.1 * rng.normal(size=f.shape)).astype(np.float32)


@pytest.mark.parametrize("h,w,kind,seed", PLANTED)
def test_recovers_planted_partition_exactly(h, w, kind, seed):
    regions = planted_regions(h, w, kind)
    feats = planted_features(regions, seed=seed)
    labels = recursive_ncut(feats, alpha=10.0, tau=0.5, compat="clean")
    assert labels.shape == (h, w) and labels.dtype == np.int32
    assert same_partition(labels, regions), np.unique(labels)
    # numbered 0..K-1 without gaps
    assert set(np.unique(labels).tolist()) == set(range(regions.max() + 1))
    # the default (official) rule moves only the nodes of the exactly-zero rows, which keep the side they had at
    # the root's split
    default = recursive_ncut(feats, alpha=10.0, tau=0.5)
    zero_rows = (official_affinity(feats, 10.0) == 0).any(axis=1).reshape(h, w)
    assert same_partition(default[~zero_rows], regions[~zero_rows])
    assert default.max() == regions.max()


@pytest.mark.parametrize("h,w,kind,seed", PLANTED[:3])
def test_clean_equals_literal_reference(h, w, kind, seed):
    feats = planted_features(planted_regions(h, w, kind), seed=seed)
    np.testing.assert_array_equal(recursive_ncut(feats, tau=0.5, compat="clean"), literal_clean(feats, tau=0.5))


@pytest.mark.parametrize("seed,tau", [(0, 0.1), (1, 0.2), (2, 0.15)])
def test_clean_equals_literal_reference_on_smooth_fields(seed, tau):
    feats = smooth_field(16, 20, seed=seed)
    ours = recursive_ncut(feats, tau=tau, compat="clean")
    assert ours.max() >= 1, "test case should produce several segments"
    np.testing.assert_array_equal(ours, literal_clean(feats, tau=tau))


@pytest.mark.parametrize("h,w,kind,seed", PLANTED[:3])
def test_official_compat_equals_literal_painting_port(h, w, kind, seed):
    feats = planted_features(planted_regions(h, w, kind), seed=seed)
    official = recursive_ncut(feats, tau=0.5, compat="official-float32")
    np.testing.assert_array_equal(official, literal_official(feats, tau=0.5))
    # the default applies the same rule on the fast float64 path
    np.testing.assert_array_equal(recursive_ncut(feats, tau=0.5), official)
    clean = recursive_ncut(feats, tau=0.5, compat="clean")
    # The quirk moves only the nodes of the exactly-zero rows, never the number of segments.
    W = official_affinity(feats, 10.0)
    zero_rows = (W == 0).any(axis=1).reshape(h, w)
    assert zero_rows.sum() >= 2
    assert official.max() == clean.max()
    assert np.all(zero_rows[official != clean])


@pytest.mark.parametrize("seed", [3, 4])
def test_official_compat_equals_literal_on_smooth_fields(seed):
    feats = smooth_field(16, 16, seed=seed)
    np.testing.assert_array_equal(recursive_ncut(feats, tau=0.15, compat="official-float32"),
                                  literal_official(feats, tau=0.15))
    np.testing.assert_array_equal(recursive_ncut(feats, tau=0.15),
                                  literal_official(feats, tau=0.15, dtype=np.float64))


def test_official_quirk_with_underflow():
    # A region whose centre nearly opposes another's gives scaled similarities so small that s**20 underflows to
    # exactly 0 in float32: more nodes than the global-minimum pair drop out of every subgraph below the root.
    regions = planted_regions(16, 16, "quadrants")
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 32))
    centres[3] = -0.7 * centres[0] + 0.3 * centres[3]
    feats = (centres[regions] + 0.5 * rng.normal(size=regions.shape + (32,))).astype(np.float32)
    W = official_affinity(feats, 20.0)
    assert (W == 0).any(axis=1).sum() > 2
    # Same W for both: which entries underflow depends on the last ulp of the normalisation.
    ours = recursive_ncut_affinity(W, tau=0.5, compat="official-float32")
    np.testing.assert_array_equal(ours.reshape(16, 16), literal_official(feats, tau=0.5, W=W))
    np.testing.assert_array_equal(recursive_ncut_affinity(W, tau=0.5), ours)  # the default, fast path
    clean = recursive_ncut_affinity(W, tau=0.5, compat="clean")
    assert not np.array_equal(ours, clean)


def test_affinity_matches_definition():
    feats = np.random.default_rng(0).normal(size=(4, 5, 16)).astype(np.float32)
    W = affinity(feats, 10.0)
    np.testing.assert_allclose(W, official_affinity(feats, 10.0), rtol=1e-4, atol=1e-6)
    assert W.shape == (20, 20) and W.dtype == np.float32
    assert W.min() == 0.0 and np.allclose(np.diag(W), 1.0, atol=1e-5) and np.allclose(W, W.T)


def test_ncut_values_match_shi_malik_z_formula():
    rng = np.random.default_rng(1)
    A = rng.random((30, 30))
    A = A + A.T
    d = A.sum(1)
    X = rng.random((30, 7)) > 0.5
    vals = ncut_values(A, d, X)
    D = np.diag(d)
    for j in range(7):
        x = 2.0 * X[:, j] - 1
        k = d[X[:, j]].sum() / d.sum()
        b = k / (1 - k)
        z = (1 + x) - b * (1 - x)
        assert vals[j] == pytest.approx((z @ (D - A) @ z) / (z @ D @ z), rel=1e-10)
    # an empty side is never chosen
    X[:, 0] = False
    assert np.isinf(ncut_values(A, d, X)[0])


def test_fiedler_vector_solves_generalised_problem():
    rng = np.random.default_rng(2)
    A = rng.random((40, 40)) ** 4
    A = (A + A.T) / 2
    d = A.sum(1)
    y = fiedler_vector(A, d)
    lap = np.diag(d) - A
    lam = (y @ lap @ y) / (y @ np.diag(d) @ y)
    np.testing.assert_allclose(lap @ y, lam * d * y, atol=1e-10)
    assert abs(y @ d) < 1e-10  # D-orthogonal to the constant vector
    assert y[np.argmax(np.abs(y))] > 0
    np.testing.assert_allclose(fiedler_vector(A, d, solver="full"), y, atol=1e-10)


def test_labels_from_masks_matches_weighted_sum_assembly():
    rng = np.random.default_rng(3)
    n = 50
    masks = [np.flatnonzero(rng.random(n) > 0.5) for _ in range(6)]
    dense = []
    for m in masks:
        v = np.zeros(n)
        v[m] = 1
        dense.append(v)
    np.testing.assert_array_equal(labels_from_masks(masks, n), _assemble(dense, n))


@pytest.mark.parametrize("count", [1, 20, 62, 63, 90, 124, 125, 200])
def test_labels_from_masks_packed_codes_match_row_ranking(count):
    # the patterns are ranked as int64 bit codes, 62 masks per word (several words beyond 62 masks): the order of
    # the membership rows read from the last mask to the first, as ranking the byte rows gives it
    rng = np.random.default_rng(count)
    n = 300
    masks = [np.flatnonzero(rng.random(n) > 0.3) for _ in range(count)]
    masks[-1] = masks[0][:5]  # patterns that differ only in the first word too
    got = labels_from_masks(masks, n)
    member = np.zeros((count, n), dtype=np.uint8)
    for k, m in enumerate(masks):
        member[k, m] = 1
    _, rows = np.unique(member[::-1].T, axis=0, return_inverse=True)
    np.testing.assert_array_equal(got, rows.reshape(n))
    assert got.dtype == np.int32 and got.max() == len(np.unique(got)) - 1


def test_single_segment_cases():
    # constant features, a tiny tau, one node and two nodes
    assert np.all(recursive_ncut(np.ones((4, 4, 8)), tau=0.5) == 0)
    feats = planted_features(planted_regions(16, 16, "quadrants"))
    assert np.all(recursive_ncut(feats, tau=1e-9) == 0)
    assert recursive_ncut(np.ones((1, 1, 3))).tolist() == [[0]]
    two = recursive_ncut(np.array([[[1.0, 0.0], [0.0, 1.0]]]), tau=2.5)
    assert sorted(two.ravel().tolist()) == [0, 1]


def test_more_segments_with_larger_tau():
    feats = smooth_field(16, 16, seed=7)
    counts = [int(recursive_ncut(feats, tau=t).max()) + 1 for t in (0.05, 0.1, 0.2)]
    assert counts == sorted(counts) and counts[-1] > counts[0]


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 4)), "shape"),
    (np.full((2, 2, 3), np.nan), "NaN"),
    (np.zeros((0, 4, 3)), "empty"),
])
def test_bad_features_raise_input_error(bad, match):
    with pytest.raises(InputError, match=match):
        recursive_ncut(bad)


def test_bad_parameters_raise_input_error():
    feats = np.ones((2, 2, 3))
    with pytest.raises(InputError, match="compat"):
        recursive_ncut(feats, compat="fast")
    with pytest.raises(InputError, match="^tau must be a positive number, got 0$"):  # named as the caller named it
        recursive_ncut(feats, tau=0)
    with pytest.raises(InputError, match="^tau must be a positive number, got nan$"):
        recursive_ncut_affinity(np.ones((3, 3)), tau=float("nan"))
    with pytest.raises(InputError, match="alpha"):
        recursive_ncut(feats, alpha=-1)
    with pytest.raises(InputError, match="square"):
        recursive_ncut_affinity(np.ones((3, 4)))


# ------------------------------------------------------------------------------------------------------------
# One affinity definition: host, array-namespace (the CuPy path, run here on numpy) and the torch reference of the
# Triton kernel, all against graph.affinity.reference_affinity
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [10.0, 2.5, 1.0])
@pytest.mark.parametrize("case", ["planted", "smooth", "zero_token"])
def test_affinity_implementations_match_the_reference(case, alpha):
    from diffcut_engine.graph.affinity import affinity_from_tokens, l2_normalize, namespace_affinity, reference_affinity

    if case == "planted":
        f = planted_features(planted_regions(10, 12, "disc"), seed=3)
    else:
        f = smooth_field(10, 12, c=32, seed=2)
    tokens = f.reshape(-1, f.shape[-1]).astype(np.float32)
    if case == "zero_token":
        tokens[5] = 0.0  # a zero token stays a zero vector (eps rule): similarity 0 to everything
    ref = reference_affinity(tokens, alpha)
    host = affinity_from_tokens(l2_normalize(tokens), alpha)
    generic = namespace_affinity(np, tokens.copy(), alpha)
    for W in (host, generic):
        assert W.dtype == np.float32 and W.min() == 0.0 and W.max() <= 1.0
        np.testing.assert_allclose(W, ref, rtol=2e-4, atol=2e-6)
    torch = pytest.importorskip("torch")
    import diffcut_engine.kernels.affinity as kaff

    w_t, d_t = kaff.affinity_reference(torch.from_numpy(tokens), alpha)
    np.testing.assert_allclose(w_t.numpy(), ref, rtol=2e-4, atol=2e-6)
    assert d_t.dtype == torch.float64
    np.testing.assert_allclose(d_t.numpy(), w_t.numpy().sum(1, dtype=np.float64), rtol=1e-12)


@pytest.mark.parametrize("spread", [0.0, 1e-9, 0.3])
def test_constant_features_rule_is_shared(spread):
    """Near-identical tokens: every implementation applies the same C * eps_float32 rule (all ones or not)."""
    from diffcut_engine.graph.affinity import (affinity_from_tokens, l2_normalize, namespace_affinity,
                                               reference_affinity, spread_tolerance)

    rng = np.random.default_rng(0)
    base = rng.normal(size=32).astype(np.float32)
    tokens = np.tile(base, (20, 1)) + spread * rng.normal(size=(20, 32)).astype(np.float32)
    host = affinity_from_tokens(l2_normalize(tokens), 10.0)
    generic = namespace_affinity(np, tokens.copy(), 10.0)
    constant = bool(np.all(reference_affinity(tokens, 10.0) == 1))
    assert constant == (spread < spread_tolerance(32))
    assert np.all(host == 1) == constant == np.all(generic == 1)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5, 2.5])
def test_constant_features_give_ones_at_every_alpha(alpha):
    """namespace_affinity (the device path's W) added 1 to the rounding noise raised to alpha for constant
    features: entries up to 1.0006 at alpha 0.5, 899 of them above 1."""
    from diffcut_engine.graph.affinity import affinity_from_tokens, l2_normalize, namespace_affinity

    rng = np.random.default_rng(1)
    tokens = np.tile(rng.normal(size=64).astype(np.float32), (30, 1)) * rng.uniform(0.5, 2, (30, 1)).astype(
        np.float32)
    assert np.all(namespace_affinity(np, tokens.copy(), alpha) == 1)
    assert np.all(affinity_from_tokens(l2_normalize(tokens), alpha) == 1)


def test_cpu_torch_features_that_require_grad_or_are_bfloat16_are_accepted():
    """The graph API takes CPU torch tensors; a tensor that requires grad (a feature extractor's output outside
    no_grad) or is bfloat16 (numpy has no such type) was refused with a misleading 'move device tensors' error."""
    torch = pytest.importorskip("torch")
    f = planted_features(planted_regions(7, 9), channels=16, seed=1).astype(np.float32)
    ref = recursive_ncut(f, tau=0.5)
    t = torch.from_numpy(f).requires_grad_()
    for backend in ("numpy", "auto"):
        np.testing.assert_array_equal(recursive_ncut(t, tau=0.5, graph_backend=backend), ref)
        bf = torch.from_numpy(f).bfloat16()
        np.testing.assert_array_equal(recursive_ncut(bf, tau=0.5, graph_backend=backend),
                                      recursive_ncut(bf.float().numpy(), tau=0.5, graph_backend=backend))
    assert ncut_tree(t, tau_max=0.5).cut(0.5).shape == (7, 9)


@pytest.mark.parametrize("backend", ["numpy", "native", "auto"])
def test_affinity_entry_points_check_the_matrix_the_same_way_on_every_backend(backend):
    """build_tree / recursive_ncut_affinity took a negative W on the numpy path (one segment) while the native core
    refused it; a non-symmetric W was cut silently; a ``shape`` that does not hold the nodes was an IndexError."""
    from diffcut_engine.graph import build_tree, native_available

    if backend == "native" and not native_available():
        pytest.skip("the native core is not built")
    W = affinity(planted_features(planted_regions(4, 5), channels=8, seed=3), 10.0)
    ok = build_tree(W, tau_max=0.5, graph_backend=backend, shape=(4, 5)).cut(0.5)
    np.testing.assert_array_equal(ok, build_tree(W, tau_max=0.5, graph_backend="numpy", shape=(4, 5)).cut(0.5))
    for bad, match in ((W - 0.5, "non-negative"), (np.triu(W), "symmetric"), (W.astype(np.complex64), "real")):
        with pytest.raises(InputError, match=match):
            build_tree(bad, tau_max=0.5, graph_backend=backend)
    with pytest.raises(InputError, match="does not hold"):
        build_tree(W, tau_max=0.5, graph_backend=backend, shape=(3, 5))
    # a shape whose product matches but whose sides do not exist (was accepted: cut() then failed in reshape)
    for bad in ((-4, -5), (20, 1.0), (True, 20), (0, 0), 20, ()):
        with pytest.raises(InputError, match="positive ints"):
            build_tree(W, tau_max=0.5, graph_backend=backend, shape=bad)
    assert build_tree(W, tau_max=0.5, graph_backend=backend, shape=(np.int64(20),)).cut(0.5).shape == (20,)
    noisy = W + 1e-9 * np.triu(np.ones_like(W))            # rounding-level asymmetry is accepted
    assert build_tree(noisy, tau_max=0.5, graph_backend=backend).cut(0.5).shape == (20,)


def test_batch_errors_name_the_grid_and_float32_range_is_not_called_nan():
    """ncut_trees([f, f, bad]) said "features contain NaN" without saying which grid; finite float64 features
    beyond float32's range were reported as "NaN or infinite" (with a numpy overflow warning)."""
    import warnings

    from diffcut_engine.graph import ncut_trees

    good = np.random.default_rng(0).standard_normal((4, 5, 6)).astype(np.float32)
    bad = good.copy()
    bad[1, 1, 1] = np.nan
    for backend in ("numpy", "auto"):
        with pytest.raises(InputError, match=r"^grids\[2\]: features contain NaN"):
            ncut_trees([good, good, bad], graph_backend=backend)
    huge = good.astype(np.float64) * 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="beyond float32's range"):
            recursive_ncut(huge, graph_backend="numpy")
    with pytest.raises(InputError, match="NaN or infinite"):
        recursive_ncut(np.where(np.arange(120).reshape(4, 5, 6) == 3, np.inf, huge), graph_backend="numpy")


def test_leaf_bound_holds_for_a_float64_affinity_at_any_scale():
    """W * 1e-200: the squared weights underflowed, the bound claimed 1 (every subgraph a leaf) and the tree lost
    its splits (K 5 -> 2); the tree of a scaled affinity is the affinity's."""
    from diffcut_engine.graph import build_tree
    from diffcut_engine.graph.eigen import spectral_lower_bound

    f = planted_features(planted_regions(12, 12, "quadrants"), noise=0.3, seed=2)
    W = affinity(f, 10.0).astype(np.float64)
    want = build_tree(W, tau_max=0.5, graph_backend="numpy").cut(0.5)
    assert want.max() >= 1
    import warnings

    for scale in (1e-200, 1e-150, 1e100, 1e200, 1e300):  # (at 1e-300 the weights themselves lose bits: subnormal)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (W * 1e300 warned of an overflow in the bound's squares)
            got = build_tree(W * scale, tau_max=0.5, graph_backend="numpy").cut(0.5)
        assert same_partition(got, want), scale
    d = W.sum(1)
    assert spectral_lower_bound(W * 1e-200, d * 1e-200) <= 0.0  # (it was 1.0; NCut >= 0 is all it claims)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spectral_lower_bound(W * 1e300, d * 1e300) <= 0.0


@pytest.mark.parametrize("backend", ["numpy", "native", "batched"])
def test_constant_features_are_one_leaf_without_an_eigensolve(backend, monkeypatch):
    """W = 1 (constant features, e.g. a blank frame): every bipartition of a uniform complete graph has NCut exactly
    1, so the root is a leaf at every tau <= 1 with value 1. The solvers spent up to a second failing to certify an
    arbitrary vector of its (n-1)-fold eigenvalue first (0.8 s numpy, 0.4 s native at 32 x 32), and at tau = 1 a
    rounded NCut of 0.9999999999999998 could split it."""
    from diffcut_engine.graph import host, native, ncut_tree
    from diffcut_engine.graph.batched import build_trees_batched

    if backend == "native" and not native.native_available():
        pytest.skip("the C++ extension is not built")

    def no_solve(*args, **kwargs):
        raise AssertionError("an eigensolve ran")

    monkeypatch.setattr(host, "fiedler_vector", no_solve)
    f = np.ones((20, 24, 16), np.float32)
    for tau_max in (0.5, 1.0):
        if backend == "batched":
            tree = build_trees_batched([affinity(f, 10.0)], tau_max=tau_max, xp=np, shapes=[(20, 24)])[0]
        else:
            tree = ncut_tree(f, tau_max=tau_max, graph_backend=backend)
        assert not tree.root.is_split and tree.root.value == 1.0 and tree.root.exact
        assert np.array_equal(tree.cut(tau_max), np.zeros((20, 24), np.int32))
    assert recursive_ncut(f, tau=1.0, graph_backend="numpy" if backend == "batched" else backend).max() == 0
