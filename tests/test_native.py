"""The native graph backend (the C++ core in csrc/, built by the package install as diffcut_engine._native)
against the numpy dense path: identical affinities, partitions, label ids and split values on planted and
realistic feature families, square and non-square grids, both compat modes; and the backend selection.

Skipped only where no C++ compiler exists (then the install cannot have built the extension); with a compiler a
missing extension is a failure: `pip install -e .` must build it."""

import os
import sys

import numpy as np
import pytest

from diffcut_engine.errors import BackendUnavailableError, InputError
from diffcut_engine.graph import (GRAPH_BACKENDS, affinity_from_tokens, build_tree, l2_normalize, native, ncut_trees,
                                  ncut_tree, recursive_ncut, resolve_graph_backend)
from diffcut_engine.graph.affinity import as_token_matrix
from planted import planted_features, planted_regions
from realistic import FAMILIES


TAUS = (0.2, 0.35, 0.5, 0.65, 0.8)


def _cases():
    out = []
    for h, w in ((12, 15), (16, 16), (14, 22)):
        for kind in ("quadrants", "disc", "stripes"):
            out.append((f"planted-{kind}", h, w))
    for h, w in ((16, 16), (12, 20), (24, 24), (20, 36)):
        for fam in FAMILIES:
            for photo in ("astronaut", "coffee"):
                out.append((f"{fam}-{photo}", h, w))
    return out


def _features(name, h, w):
    family, kind = name.split("-")
    if family == "planted":
        return planted_features(planted_regions(h, w, kind), noise=0.6, seed=h + w)
    return FAMILIES[family](kind, h, w)


@pytest.mark.parametrize("name,h,w", _cases())
def test_native_matches_numpy_dense(built, name, h, w):
    f = _features(name, h, w)
    x = l2_normalize(as_token_matrix(f)[0])
    # the same ssyrk (SciPy's) and the same float32 operations: bit-identical affinities
    assert np.array_equal(native.native_affinity(x, 10.0), affinity_from_tokens(x, 10.0))
    for compat in ("official", "clean"):
        # the dense solver: the same operations on the same BLAS/LAPACK, so the same trees by construction
        ref = ncut_tree(f, tau_max=0.8, compat=compat, solver="dense", graph_backend="numpy")
        nat = ncut_tree(f, tau_max=0.8, compat=compat, solver="dense", graph_backend="native")
        assert nat.shape == (h, w) and nat.compat == compat
        for tau in TAUS:
            a, b = ref.cut(tau), nat.cut(tau)
            assert a.dtype == b.dtype == np.int32
            assert np.array_equal(a, b), (compat, tau)  # same partition and the same label ids
        np.testing.assert_array_equal(nat.split_values(), ref.split_values())
        assert len(nat.split_values()) >= 1
        # the default solvers (certified Lanczos above 192 nodes on both sides, each within 1e-6 of the dense
        # vector): the same labels on these families
        ref_auto = ncut_tree(f, tau_max=0.8, compat=compat, graph_backend="numpy")
        nat_auto = ncut_tree(f, tau_max=0.8, compat=compat, graph_backend="native")
        for tau in TAUS:
            assert np.array_equal(ref_auto.cut(tau), nat_auto.cut(tau)), (compat, tau)
        np.testing.assert_allclose(nat_auto.split_values(), ref.split_values(), rtol=1e-9)


def test_native_default_solver_and_entry_points(built):
    f = _features("lab-astronaut", 12, 14)
    for compat in ("official", "clean"):
        want = recursive_ncut(f, tau=0.5, compat=compat, graph_backend="numpy")
        assert np.array_equal(recursive_ncut(f, tau=0.5, compat=compat, graph_backend="native"), want)
        assert np.array_equal(recursive_ncut(f, tau=0.5, compat=compat), want)  # auto: native here
    W = affinity_from_tokens(l2_normalize(as_token_matrix(f)[0]), 10.0)
    ref = build_tree(W, tau_max=0.6, solver="dense")
    nat = build_tree(W, tau_max=0.6, graph_backend="native", shape=(12, 14))
    assert nat.shape == (12, 14)
    assert np.array_equal(ref.cut(0.6).reshape(12, 14), nat.cut(0.6))


def test_native_constant_features_and_alpha(built):
    f = np.tile(np.linspace(-1, 1, 9, dtype=np.float32), (5, 7, 1))
    tree = ncut_tree(f, graph_backend="native")
    assert np.array_equal(tree.cut(0.5), np.zeros((5, 7), np.int32))
    x = l2_normalize(as_token_matrix(_features("filters-coffee", 8, 9))[0])
    # a non-integer alpha: powf against numpy's float32 power (both within an ulp or so of the exact value)
    np.testing.assert_allclose(native.native_affinity(x, 2.5), affinity_from_tokens(x, 2.5), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("alpha", [2.5, 0.5, 65.0, 100.0])
def test_native_labels_equal_numpy_for_exponents_the_core_cannot_reproduce(built, alpha):
    """An exponent other than an integer in [1, 64] is np.power in the numpy path, which the core's std::pow does not
    reproduce bit for bit: the native backend then builds its tree on numpy's W (seed 844 at alpha 2.5 gave 51 vs
    52 segments before). tau = 1 takes every split, so the deep near-tie cuts are compared too."""
    for seed in (844, 129, 399):
        r = np.random.default_rng(seed)
        h, w = (int(v) for v in r.integers(3, 13, size=2))
        c = int(r.choice([2, 3, 5, 16]))
        f = r.standard_normal((h, w, c)).astype(np.float32)
        want = recursive_ncut(f, alpha=alpha, tau=1.0, graph_backend="numpy")
        assert np.array_equal(recursive_ncut(f, alpha=alpha, tau=1.0, graph_backend="native"), want), seed
        trees = ncut_trees([f, f[::-1].copy()], alpha=alpha, tau_max=1.0, graph_backend="native", num_threads=2)
        assert np.array_equal(trees[0].cut(1.0), want), seed
        assert np.array_equal(trees[1].cut(1.0),
                              recursive_ncut(f[::-1].copy(), alpha=alpha, tau=1.0, graph_backend="numpy")), seed


def test_native_rejects_what_it_does_not_implement(built):
    f = _features("planted-disc", 8, 8)
    with pytest.raises(InputError, match="official-float32"):
        ncut_tree(f, compat="official-float32", graph_backend="native")
    with pytest.raises(InputError, match="solver='auto' or 'dense'"):
        ncut_tree(f, solver="lanczos", graph_backend="native")
    with pytest.raises(InputError, match="unknown eigensolver 'bogus'"):
        ncut_tree(f, solver="bogus", graph_backend="native")
    bad = f.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ncut_tree(bad, graph_backend="native")
    with pytest.raises(InputError, match="non-negative"):
        build_tree(-np.ones((4, 4), np.float32), tau_max=0.5, graph_backend="native")


def test_graph_backend_selection(monkeypatch):
    assert GRAPH_BACKENDS == ("auto", "native", "numpy", "cupy")
    with pytest.raises(InputError, match="unknown graph_backend"):
        ncut_tree(np.ones((4, 4, 3), np.float32), graph_backend="fortran")
    kw = dict(on_device=False, compat="official", solver="auto")
    assert resolve_graph_backend("auto", on_device=True, compat="clean", solver="auto", num_tokens=64) == "cupy"
    assert resolve_graph_backend("numpy", num_tokens=64, **kw) == "numpy"
    assert resolve_graph_backend("auto", num_tokens=native.NATIVE_AUTO_MAX_TOKENS + 1, **kw) == "numpy"
    assert resolve_graph_backend("auto", on_device=False, compat="official-float32", solver="auto",
                                 num_tokens=64) == "numpy"
    assert resolve_graph_backend("auto", on_device=False, compat="clean", solver="lanczos", num_tokens=64) == "numpy"
    if native.native_available():
        assert resolve_graph_backend("auto", num_tokens=64, **kw) == "native"
    # not built: auto falls back to numpy, native is a one-line error naming the extension
    monkeypatch.setattr(native, "_load", lambda: None)
    assert resolve_graph_backend("auto", num_tokens=64, **kw) == "numpy"
    with pytest.raises(BackendUnavailableError, match="diffcut_engine._native, which is not built") as err:
        ncut_tree(np.ones((4, 4, 3), np.float32), graph_backend="native")
    assert "\n" not in str(err.value)
    f = _features("planted-quadrants", 8, 10)
    assert np.array_equal(recursive_ncut(f, tau=0.5), recursive_ncut(f, tau=0.5, graph_backend="numpy"))


def test_engine_config_graph_backend():
    from diffcut_engine.config import EngineConfig

    assert EngineConfig().graph_backend == "auto"
    EngineConfig(graph_backend="native")
    with pytest.raises(InputError, match="unknown graph_backend"):
        EngineConfig(graph_backend="torch")
    with pytest.raises(InputError, match="contradicts"):
        EngineConfig(graph_backend="cupy", graph_device="host")
    with pytest.raises(InputError, match="contradicts"):
        EngineConfig(graph_backend="native", graph_device="device")
    # refused with the configuration, before any model loads (it used to be after)
    with pytest.raises(InputError, match="not 'official-float32'"):
        EngineConfig(graph_backend="native", compat="official-float32")
    assert EngineConfig(graph_backend="auto", compat="official-float32").compat == "official-float32"


def test_engine_graph_backends_agree(built):
    """The engine's stage 3 through each host backend: the same labels, and the configured backend is used."""
    import skimage.data
    import torch

    from diffcut_engine import Engine, EngineConfig
    from toy_encoder import ColourEncoder

    image = skimage.data.astronaut()[::2, ::2]
    out = {}
    for backend in ("numpy", "native"):
        engine = Engine(EngineConfig(size=(320, 384), tau=0.5, device="cpu", refine="none",
                                     graph_backend=backend), encoder=ColourEncoder())
        assert engine.graph_namespace(torch.zeros(1)) is None  # the host path
        out[backend] = engine.segment(image).labels
    assert out["numpy"].max() >= 1
    assert np.array_equal(out["numpy"], out["native"])


def test_native_batch_on_threads_equals_one_by_one(built):
    grids = [_features("planted-disc", 12, 15), _features("lab-coffee", 16, 14), _features("filters-astronaut", 14, 16)]
    tokens = [l2_normalize(as_token_matrix(f)[0]) for f in grids]
    shapes = [f.shape[:2] for f in grids]
    for threads in (1, 2, 3):
        trees = native.native_trees(tokens, shapes, alpha=10.0, tau_max=0.7, compat="official", num_thresholds=100,
                                    num_threads=threads)
        for f, tree in zip(grids, trees):
            want = ncut_tree(f, tau_max=0.7, graph_backend="native")
            assert tree.shape == want.shape
            for tau in (0.3, 0.7):
                assert np.array_equal(tree.cut(tau), want.cut(tau))
    bad = [tokens[0], tokens[1].copy()]
    with pytest.raises(ValueError, match="compat"):
        native.native_trees(bad, shapes[:2], alpha=10.0, tau_max=0.7, compat="official-float32",
                            num_thresholds=100)


def test_native_scratch_cache_reuses_blocks_without_changing_results(built):
    """The core's large temporaries (W, the subgraphs' matrices) are kept per thread for the next grid: the cache
    fills, blocks of another size are reused or replaced, and results never depend on what a block held before."""
    feats = [_features("planted-disc", 20, 24), _features("lab-coffee", 12, 14), _features("filters-astronaut", 24, 26)]
    native.release_scratch()
    assert native.scratch_cached_bytes() == 0
    fresh = []
    for f in feats:  # each on an empty cache
        native.release_scratch()
        fresh.append(ncut_tree(f, tau_max=0.7, graph_backend="native", solver="dense"))
    native.release_scratch()
    for rounds in range(2):  # large -> small -> larger, on cached (dirty) blocks
        for f, want in zip(feats, fresh):
            got = ncut_tree(f, tau_max=0.7, graph_backend="native", solver="dense")
            n = f.shape[0] * f.shape[1]
            assert native.scratch_cached_bytes() >= 4 * n * n  # at least W's block came back
            for tau in (0.3, 0.5, 0.7):
                assert np.array_equal(got.cut(tau), want.cut(tau))
    native.release_scratch()
    assert native.scratch_cached_bytes() == 0


def test_batch_helper_threads_caches_are_counted_and_released(built):
    """Batch grids run on the core's helper threads too, whose scratch caches outlive the call: they are counted by
    scratch_cached_bytes and freed by release_scratch on any thread (before, a helper's cache was out of reach: up to
    DIFFCUT_GRAPH_CACHE_MB per helper kept after a batch)."""
    grids = [_features("planted-disc", 40, 40), _features("lab-coffee", 40, 40)] * 4
    n = 40 * 40
    native.release_scratch()
    assert native.scratch_cached_bytes() == 0
    trees = ncut_trees(grids, tau_max=0.5, graph_backend="native", num_threads=2)
    assert len(trees) == 8
    assert native.scratch_cached_bytes() >= 4 * n * n  # (W blocks came back to the threads' caches)
    native.release_scratch()
    assert native.scratch_cached_bytes() == 0
    import threading
    ncut_trees(grids, tau_max=0.5, graph_backend="native", num_threads=2)
    before = native.scratch_cached_bytes()
    other = threading.Thread(target=native.release_scratch)  # from another thread: the helper's cache goes too
    other.start()
    other.join()
    after = native.scratch_cached_bytes()  # the calling thread's own cache is left
    assert 4 * n * n <= after <= before - 4 * n * n
    native.release_scratch()
    assert native.scratch_cached_bytes() == 0


def test_native_scratch_cache_limit_zero_keeps_nothing(built):
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from diffcut_engine.graph import native, ncut_tree\n"
            "f = np.random.default_rng(0).standard_normal((16, 16, 32)).astype(np.float32)\n"
            "ncut_tree(f, tau_max=0.5, graph_backend='native')\n"
            "print(native.scratch_cached_bytes())\n")
    out = {}
    for limit in ("0", "1024"):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, DIFFCUT_GRAPH_CACHE_MB=limit))
        assert run.returncode == 0, run.stderr
        out[limit] = int(run.stdout.split()[-1])
    assert out["0"] == 0 and out["1024"] >= 4 * 256 * 256


def _disconnected_case():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    from bench_graph import disconnected_case

    return disconnected_case


@pytest.mark.parametrize("h,w", [(20, 24), (24, 24)])
def test_native_block_krylov_on_nearly_disconnected_features(built, h, w, caplog):
    # mutually unrelated regions: a clustered spectrum (one eigenvalue near 1 per region), where Lanczos cannot
    # certify and both backends go to block Krylov (then, by the tree's memo, block Krylov first): the same labels
    # as each other and as the dense solve, both compat modes
    import logging

    disconnected_case = _disconnected_case()
    for regions, noise in ((4, 0.5), (8, 0.5), (12, 0.5), (8, 0.3)):
        f, truth = disconnected_case(h, w, regions, noise, seed=h * 1000 + w + regions)
        for compat in ("official", "clean"):
            with caplog.at_level(logging.DEBUG, logger="diffcut_engine.graph.eigen"):
                caplog.clear()
                ref = recursive_ncut(f, tau=0.5, compat=compat, graph_backend="numpy")
                # the numpy path did need block Krylov here (so the native one was tested on that path too)
                assert any("lanczos not certified" in r.getMessage() for r in caplog.records)
            nat = recursive_ncut(f, tau=0.5, compat=compat, graph_backend="native")
            dense = recursive_ncut(f, tau=0.5, compat=compat, solver="dense", graph_backend="numpy")
            assert np.array_equal(nat, ref), (regions, noise, compat)
            assert np.array_equal(nat, dense), (regions, noise, compat)
            assert nat.max() + 1 == regions  # the planted regions are found
    # the block products without a bound dgemm (the core's own loops): the same labels
    module = native.require_native()
    try:
        module.bind_dgemm(0)
        f, _ = disconnected_case(h, w, 8, 0.5, seed=7)
        assert np.array_equal(recursive_ncut(f, tau=0.5, graph_backend="native"),
                              recursive_ncut(f, tau=0.5, solver="dense", graph_backend="numpy"))
    finally:
        module.bind_dgemm(native.scipy_blas_addresses()["dgemm"])


def test_native_lanczos_ritz_pairs_without_dstemr(built):
    # Lanczos's Ritz pairs come from the bound dstemr (as eigen._top_ritz_pairs); unbound, from dsyevr on the
    # tridiagonal matrix: the same trees (split values within the certificate) on grids whose solves are Lanczos's
    module = native.require_native()
    cases = [(_features("lab-astronaut", 24, 24), 0.8), (_features("filters-coffee", 20, 36), 0.8)]
    bound = [ncut_tree(f, tau_max=tau, graph_backend="native") for f, tau in cases]
    try:
        module.bind_dstemr(0)
        for (f, tau), want in zip(cases, bound):
            got = ncut_tree(f, tau_max=tau, graph_backend="native")
            dense = ncut_tree(f, tau_max=tau, solver="dense", graph_backend="numpy")
            assert len(got.split_values()) >= 2
            np.testing.assert_allclose(got.split_values(), want.split_values(), rtol=1e-9)
            for t in TAUS:
                assert np.array_equal(got.cut(t), want.cut(t)) and np.array_equal(got.cut(t), dense.cut(t))
    finally:
        module.bind_dstemr(native.scipy_blas_addresses()["dstemr"])


@pytest.mark.parametrize("n,c,alpha", [(1100, 64, 10.0), (1030, 7, 1.0), (1500, 33, 3.0), (1024, 16, 64.0)])
def test_fused_affinity_pass_is_the_numpy_affinity_bit_for_bit(built, n, c, alpha):
    # the host path's float64 W (scaling, power, mirror, widening) and its zero-row mask from one C++ pass: the
    # same values as affinity_from_tokens(dtype=float64) and the same mask as zero_row_mask, for grids large enough
    # to run on several threads, non-multiple-of-tile sizes, alpha 1 (no power), odd and large exponents
    from diffcut_engine.graph import memory
    from diffcut_engine.graph.host import zero_row_mask

    rng = np.random.default_rng(n + c)
    x = l2_normalize(rng.standard_normal((n, c)).astype(np.float32))
    x[5] = x[3]  # repeated tokens: ties in S
    ref = affinity_from_tokens(x, alpha, dtype=np.float64)
    assert native.fused_affinity_applies(alpha, n)
    W, zero_row = native.native_affinity_widened(x, alpha)
    try:
        assert W.dtype == np.float64 and W.shape == (n, n)
        assert np.array_equal(W, ref)
        assert np.array_equal(zero_row, zero_row_mask(ref))
        # large exponents underflow many entries to exact zeros: many zero rows, all found
        assert zero_row.sum() >= 2 and (alpha < 64 or zero_row.sum() > n // 2)
    finally:
        memory.give_back(W)


def test_fused_affinity_pass_constant_features_and_what_it_leaves_to_numpy(built):
    x = np.full((1024, 8), 1 / np.sqrt(8), np.float32)   # identical tokens: the constant-features rule
    W, zero_row = native.native_affinity_widened(x, 10.0)
    assert np.array_equal(W, affinity_from_tokens(x, 10.0, dtype=np.float64)) and W.min() == 1.0
    assert not zero_row.any()
    # np.power's float32 routine for non-integer exponents is numpy's own: those stay on the numpy pass, as do
    # grids below the threshold and exponents beyond binary powering
    assert not native.fused_affinity_applies(2.5, 4096)
    assert not native.fused_affinity_applies(10.0, native.FUSED_AFFINITY_MIN_TOKENS - 1)
    assert not native.fused_affinity_applies(65.0, 4096)


@pytest.mark.parametrize("h,w", [(40, 40), (36, 48)])
def test_auto_host_path_with_the_fused_affinity_equals_the_numpy_path(built, h, w, monkeypatch):
    # above the native core's grids, "auto" is the numpy recursion on the fused pass's W: the same trees (the
    # native cap lowered below these grids, as auto above 64x64 is the same path)
    from diffcut_engine.graph import ncut

    monkeypatch.setattr(native, "NATIVE_AUTO_MAX_TOKENS", 1024)
    calls = []
    fused = ncut.native_affinity_widened
    monkeypatch.setattr(ncut, "native_affinity_widened", lambda *a: calls.append(1) or fused(*a))
    disconnected_case = _disconnected_case()
    f, _ = disconnected_case(h, w, 6, 0.5, seed=h + w)
    for feats in (f, _features("lab-astronaut", h, w)):
        for compat in ("official", "clean"):
            ref = recursive_ncut(feats, tau=0.5, compat=compat, graph_backend="numpy")
            got = recursive_ncut(feats, tau=0.5, compat=compat, graph_backend="auto")
            assert np.array_equal(got, ref), compat
            assert got.max() >= 1
    assert len(calls) == 4  # every "auto" call took the fused pass (and no "numpy" call did)


@pytest.mark.parametrize("h,w", [(37, 23), (23, 37), (30, 30)])
def test_symmetric_image_sign_ties_give_the_numpy_label_ids(built, h, w):
    """3 x 3 patches of the (mirror-symmetric) checkerboard: the root's two largest |y| entries have opposite signs
    and differ by ~1e-10 relative. With a sign-tie tolerance of 1e-9 the numpy and native Lanczos vectors (certified,
    ~1e-9 apart) fell on either side of it: the same partition with mirrored sides, 694 of 851 labels differing at
    default settings. The tolerance is now 1e-5 (eigen.SIGN_TIE_RTOL, kSignTieRtol)."""
    import skimage.data
    from skimage.transform import resize

    im = resize(skimage.data.checkerboard().astype(np.float64)[..., None], (h, w), anti_aliasing=True)
    p = np.pad(im, ((1, 1), (1, 1), (0, 0)), mode="edge")
    f = np.concatenate([p[i:i + h, j:j + w] for i in range(3) for j in range(3)], -1).astype(np.float32)
    for compat in ("official", "clean"):
        for k in (2, 4, 100):  # (3 thresholds put the middle one on the mirror axis: a threshold tie, not a sign tie)
            want = ncut_tree(f, tau_max=0.99, compat=compat, num_thresholds=k, graph_backend="numpy")
            got = ncut_tree(f, tau_max=0.99, compat=compat, num_thresholds=k, graph_backend="native")
            for tau in (0.2, 0.5, 0.99):
                assert np.array_equal(got.cut(tau), want.cut(tau)), (compat, k, tau)
        dense = recursive_ncut(f, compat=compat, solver="dense", graph_backend="numpy")
        assert np.array_equal(recursive_ncut(f, compat=compat, graph_backend="native"), dense)


def test_doubly_mirrored_photo_sign_ties_give_the_numpy_label_ids(built):
    """The cat photo mirrored in both axes, colour and gradient features, 17 x 29 (493 nodes: Lanczos): the Fiedler
    vector is antisymmetric, its largest |y| entries tie exactly, and numpy's Lanczos spread them by ~8e-8; at a
    tie tolerance of 1e-7 the core's vector fell outside it, the root split was mirrored (34% of labels equal)."""
    import skimage.data
    from scipy import ndimage
    from skimage.transform import resize

    im = skimage.data.cat()[..., :3].astype(np.float64) / 255.0
    top = np.concatenate([im, im[:, ::-1]], 1)
    r = resize(np.concatenate([top, top[::-1]], 0), (17, 29), anti_aliasing=True)
    g = r.mean(-1)
    f = np.stack([r[..., 0], r[..., 1], r[..., 2], ndimage.sobel(g, 0), ndimage.sobel(g, 1), np.full((17, 29), 0.3)],
                 -1).astype(np.float32)
    kw = dict(alpha=30.0, tau_max=0.65, compat="official")
    want = ncut_tree(f, graph_backend="numpy", solver="dense", **kw)
    for backend in ("numpy", "native"):
        got = ncut_tree(f, graph_backend=backend, **kw)
        for tau in (0.52, 0.65):
            assert np.array_equal(got.cut(tau), want.cut(tau)), (backend, tau)
    assert want.cut(0.65).max() >= 4


def _tanh_patch_features(name, h, w, seed, channels=256):
    """3 x 3 RGB patches of a skimage photo through a random projection and tanh: black pixels give all-zero tokens
    whose affinities are ~1e-30 (degree 1e-28 against ~50)."""
    import skimage.data
    from skimage.transform import resize

    im = getattr(skimage.data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    r = resize(im[..., :3].astype(np.float64) / 255.0, (h, w), anti_aliasing=True)
    pad = np.pad(r, ((1, 1), (1, 1), (0, 0)), mode="edge")
    base = np.concatenate([pad[i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)
    return np.tanh(base @ np.random.default_rng(seed).standard_normal((27, channels))).astype(np.float32)


@pytest.mark.parametrize("seed", [473, 1])
def test_nearly_isolated_tokens_take_the_dense_solve_in_every_backend(built, seed):
    """The iterative solvers certify u to sin(angle) < 1e-6; y = D^-1/2 u magnifies that at a nearly isolated node
    (degree 1e-28 against 50): y's range reached 2243 where the dense solve's is 0.004, and numpy's and the core's
    Lanczos split the root differently from each other and from the dense solve (K 1 against 6 here). Where the
    degrees spread more than 1e6 both now solve densely (eigen.ITERATIVE_DEGREE_SPREAD, kIterativeDegreeSpread)."""
    from diffcut_engine.graph import eigen

    f = _tanh_patch_features("checkerboard", 28, 36, seed)
    W = affinity_from_tokens(l2_normalize(as_token_matrix(f)[0]), 10.0).astype(np.float64)
    d = W.sum(axis=1)
    assert d.min() < 1e-10 * d.max() and not eigen.iterative_degrees(d)
    for compat in ("clean", "official"):
        want = recursive_ncut(f, tau=0.35, compat=compat, solver="dense", graph_backend="numpy")
        assert want.max() >= 1 or compat == "official"
        for backend in ("numpy", "native"):
            assert np.array_equal(recursive_ncut(f, tau=0.35, compat=compat, graph_backend=backend), want), backend
    y = eigen.fiedler_vector(W, d, solver="lanczos")
    assert np.array_equal(y, eigen.fiedler_vector(W, d, solver="dense"))
    assert eigen.iterative_degrees(np.array([1.0, 3e-6, 3.0])) and not eigen.iterative_degrees(np.array([1.0, 1e-7]))


def test_native_batches_on_the_shared_helpers_concurrent_failing_and_oversubscribed(built):
    """A batch's images run on the calling thread and the core's shared helper threads where enough of them are free
    (their scratch caches then stay warm between calls: new threads faulted every block in again, and 8 grids of
    24 x 24 on 2 threads gave 1.51-1.72x the throughput of 1 instead of the ~1.9x two cores allow), else on new
    threads. Every way gives the lone calls' trees: batches from several Python threads at once (the helpers held by
    one of them), more threads than helpers, and a batch after one whose image failed on a helper (the failure is
    reported, the helpers are free again)."""
    import concurrent.futures
    grids = [_features("planted-disc", 12, 15), _features("lab-coffee", 16, 14), _features("filters-astronaut", 14, 16),
             _disconnected_tokens(10, 12, 3, 2), _features("lab-coffee", 9, 21)]
    want = [ncut_tree(f, tau_max=0.7, graph_backend="native").cut(0.5) for f in grids]
    assert max(int(w.max()) for w in want) >= 1

    def same(trees):
        return all(np.array_equal(t.cut(0.5), w) for t, w in zip(trees, want))

    module = native.require_native()
    tokens = [np.ascontiguousarray(as_token_matrix(f)[0]) for f in grids]
    huge = np.ones((46341, 1), np.float32)  # refused by the core, on whichever thread takes it
    for threads in (2, 3, 8):
        assert same(ncut_trees(grids, tau_max=0.7, graph_backend="native", num_threads=threads)), threads
        with pytest.raises(ValueError, match="too many tokens"):
            module.trees_from_tokens(tokens[:2] + [huge] + tokens[2:], 10.0, 0.7, "official", 100, "auto", threads,
                                     True)
        assert same(ncut_trees(grids, tau_max=0.7, graph_backend="native", num_threads=threads)), threads
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(ncut_trees, grids, tau_max=0.7, graph_backend="native", num_threads=2) for _ in range(12)]
        assert all(same(job.result()) for job in jobs)


def test_ncut_trees_mixed_batch_on_threads_equals_one_call_per_grid(built, monkeypatch):
    # grids of several sizes: those up to the native cap (lowered to 32x32 here) take the native core (together,
    # on the threads), the 36x36 one the numpy path; every tree equals ncut_tree's, in the grids' order, for both
    # compat modes
    from diffcut_engine.graph import ncut, ncut_trees

    monkeypatch.setattr(native, "NATIVE_AUTO_MAX_TOKENS", 1024)
    grids = [_features("planted-disc", 12, 15), _features("lab-coffee", 36, 36), _features("filters-astronaut", 14, 16),
             _features("planted-stripes", 16, 16)]
    batches = []
    real = ncut.native_trees
    monkeypatch.setattr(ncut, "native_trees",
                        lambda tokens, *a, **k: batches.append(len(tokens)) or real(tokens, *a, **k))
    for compat in ("official", "clean"):
        for threads in (1, 2):
            trees = ncut_trees(grids, tau_max=0.7, compat=compat, num_threads=threads)
            assert len(trees) == len(grids)
            for f, tree in zip(grids, trees):
                want = ncut_tree(f, tau_max=0.7, compat=compat)
                assert tree.shape == want.shape == f.shape[:2]
                for tau in (0.3, 0.5, 0.7):
                    assert np.array_equal(tree.cut(tau), want.cut(tau))
    assert batches == [3, 3, 3, 3]  # one native call per batch, with the three small grids
    assert ncut_trees([], num_threads=2) == []
    with pytest.raises(InputError, match="num_threads"):
        ncut_trees(grids, num_threads=0)
    with pytest.raises(InputError):
        ncut_trees([grids[0], np.full((4, 4, 3), np.nan, np.float32)], num_threads=2)


def test_engine_graph_threads(built):
    import skimage.data

    from diffcut_engine import Engine, EngineConfig
    from toy_encoder import ColourEncoder

    with pytest.raises(InputError, match="graph_threads"):
        EngineConfig(graph_threads=0)
    with pytest.raises(InputError, match="graph_threads"):
        EngineConfig(graph_threads=1.5)
    images = [skimage.data.astronaut()[::2, ::2], skimage.data.coffee()[::2, ::2], skimage.data.chelsea()[::2, ::2]]
    out = {}
    for threads in (1, 2):
        engine = Engine(EngineConfig(size=(320, 384), tau=0.5, device="cpu", refine="none", batch_size=3,
                                     graph_threads=threads), encoder=ColourEncoder())
        out[threads] = [r.labels for r in engine.segment(images)]
    assert max(int(lab.max()) for lab in out[1]) >= 1
    for a, b in zip(out[1], out[2]):
        assert np.array_equal(a, b)


def test_cli_graph_threads_option():
    from diffcut_engine.cli import build_parser, config_from_args

    parser = build_parser()
    for command in (["segment", "a.png", "-o", "out"], ["bench", "--input", "a.png"]):
        args = parser.parse_args(command + ["--graph-threads", "3"])
        assert config_from_args(args).graph_threads == 3
    assert config_from_args(parser.parse_args(["segment", "a.png", "-o", "out"])).graph_threads == 1
    with pytest.raises(InputError, match="graph_threads"):
        config_from_args(parser.parse_args(["segment", "a.png", "-o", "out", "--graph-threads", "0"]))


def test_native_batch_runs_openblas_single_threaded_and_restores_it(built, monkeypatch):
    # several grids on the core's threads: SciPy's OpenBLAS is set to one thread for the call (else each grid's
    # BLAS calls start OpenBLAS's threads on the same cores) and restored after, also after an error
    controls = native.blas_thread_controls()
    if controls is None:
        pytest.skip("SciPy's BLAS here is not an OpenBLAS with a thread control")
    get, set_ = controls
    before = get()
    seen = []
    module = native.require_native()

    class Spy:
        def __getattr__(self, name):
            return getattr(module, name)

        def trees_from_tokens(self, *args):
            seen.append(get())
            return module.trees_from_tokens(*args)

    monkeypatch.setattr(native, "require_native", lambda: Spy())
    grids = [_features("planted-disc", 12, 15), _features("lab-coffee", 16, 14)]
    tokens = [l2_normalize(as_token_matrix(f)[0]) for f in grids]
    shapes = [f.shape[:2] for f in grids]
    try:
        set_(2)
        native.native_trees(tokens, shapes, alpha=10.0, tau_max=0.7, compat="official", num_thresholds=100,
                            num_threads=2)
        native.native_trees(tokens, shapes, alpha=10.0, tau_max=0.7, compat="official", num_thresholds=100,
                            num_threads=1)
        assert seen == [1, 2] and get() == 2
        with pytest.raises(ValueError):
            native.native_trees(tokens, shapes, alpha=10.0, tau_max=0.7, compat="official-float32",
                                num_thresholds=100, num_threads=2)
        assert get() == 2
        with native.single_threaded_blas():
            assert get() == 1
        with native.single_threaded_blas(enabled=False):
            assert get() == 2
    finally:
        set_(before)


def test_native_backend_names_an_unknown_compat_as_unknown():
    """``graph_backend='native', compat='foo'`` said the core 'supports compat official and clean, not foo', as if
    foo were a real mode it lacks."""
    from diffcut_engine.graph import native_available, recursive_ncut

    if not native_available():
        pytest.skip("the native core is not built")
    f = np.random.default_rng(0).normal(size=(4, 4, 8))
    with pytest.raises(InputError, match="unknown compat 'foo'"):
        recursive_ncut(f, graph_backend="native", compat="foo")
    with pytest.raises(InputError, match="supports compat official and clean"):
        recursive_ncut(f, graph_backend="native", compat="official-float32")


def _symmetric_f32(m: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.random((m, m), dtype=np.float32)
    return np.tril(a) + np.tril(a, -1).T


@pytest.mark.parametrize("m", [1, 7, 100, 1023, 2051])
def test_float32_stored_products_are_float64_products(built, m):
    # the core's solvers keep W's float32 values and multiply in float64 (the numpy path widens W first): the
    # Lanczos product reads the lower triangle only (NaN above it changes nothing), the block product full rows;
    # both within float64 rounding of the widened product, on one row range (m < 2048) or four (m >= 2048)
    module = native.require_native()
    A = _symmetric_f32(m, m)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((min(m, 8), m))
    exact = X @ A.astype(np.float64)  # (A symmetric: rows of X A are A x)
    scale = np.abs(X) @ np.abs(A.astype(np.float64))
    lower = A.copy()
    lower[np.triu_indices(m, 1)] = np.nan
    y = module.symv_lower_f32(lower, X[0])
    assert np.all(np.abs(y - exact[0]) <= 1e-13 * scale[0])
    Y = module.rows_times_f32(A, X)
    assert Y.shape == X.shape and np.all(np.abs(Y - exact) <= 1e-13 * scale)
    with pytest.raises(ValueError):
        module.rows_times_f32(A, np.zeros((9, m)))


def test_float32_stored_products_same_bits_on_every_instruction_set(built, tmp_path):
    # AVX-512, AVX2 and the baseline build of the products do the same float64 operations in the same order
    # (DIFFCUT_NO_AVX512 / DIFFCUT_NO_AVX2 lower the choice, in subprocesses); so does the threaded split at 2051
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = ("import numpy as np, sys; sys.path.insert(0, sys.argv[1])\n"
              "from diffcut_engine.graph import native\n"
              "m = native.require_native(); d = np.load(sys.argv[2])\n"
              "np.savez(sys.argv[3], **{f'y{k}': m.symv_lower_f32(d[k], d['x' + k]) for k in ('a', 'b')},\n"
              "         **{f'Y{k}': m.rows_times_f32(d[k], d['X' + k]) for k in ('a', 'b')})\n")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "in.npz", a=_symmetric_f32(61, 3), xa=rng.standard_normal(61), Xa=rng.standard_normal((5, 61)),
             b=_symmetric_f32(2051, 4), xb=rng.standard_normal(2051), Xb=rng.standard_normal((8, 2051)))
    results = []
    for avx, avx512 in (("0", "0"), ("0", "1"), ("1", "0")):
        out = tmp_path / f"out{avx}{avx512}.npz"
        run = subprocess.run([sys.executable, "-c", script, root, str(tmp_path / "in.npz"), str(out)],
                             env=dict(os.environ, DIFFCUT_NO_AVX2=avx, DIFFCUT_NO_AVX512=avx512),
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        results.append(np.load(out))
    for key in ("ya", "yb", "Ya", "Yb"):
        for other in results[1:]:
            assert np.array_equal(results[0][key], other[key]), key


def _documented_gram(x):
    """X X^T's lower triangle by the calls docs/ALGORITHM.md names, through SciPy's wrappers, single-threaded."""
    from scipy.linalg.blas import sgemm, ssyrk

    from diffcut_engine.graph._blas import GRAM_BAND_MIN_ROWS, gram_band_split

    n = x.shape[0]
    out = np.zeros((n, n), np.float32)
    with native.single_threaded_blas():
        if n < GRAM_BAND_MIN_ROWS:
            out[:] = np.tril(ssyrk(1.0, x.T, trans=1).T)
            return out
        r = gram_band_split(n)
        out[:r, :r] = np.tril(ssyrk(1.0, x[:r].T, trans=1).T)
        out[r:, :r] = sgemm(1.0, x[:r].T, x[r:].T, trans_a=1).T
        out[r:, r:] = np.tril(ssyrk(1.0, x[r:].T, trans=1).T)
    return out


@pytest.mark.parametrize("n,c", [(255, 40), (256, 1280), (300, 64), (577, 8), (1024, 13), (2304, 320)])
def test_native_gram_is_the_numpy_paths_at_every_blas_thread_count(built, n, c):
    """The floats of an OpenBLAS call depend on how it is split over threads and blocks (on an AVX2 Zen 3 CPU, 1 and
    2 threads or two bands against one ssyrk call gave other bits in thousands of entries, and the labels of a
    64 x 64 grid at tau 1 differed in 482 pixels), so both paths compute X X^T by the same fixed calls, each
    single-threaded: W is the same bit for bit, whatever the BLAS's thread count, and the Gram matrix is the
    documented decomposition's."""
    from diffcut_engine.graph.affinity import _gram_lower

    rng = np.random.default_rng(n)
    x = l2_normalize(rng.standard_normal((n, c)).astype(np.float32))
    assert np.array_equal(np.tril(_gram_lower(x)), _documented_gram(x))
    want = affinity_from_tokens(x, 10.0)
    assert np.array_equal(native.native_affinity(x, 10.0), want)
    controls = native.blas_thread_controls()
    if controls is None:
        return
    get, set_ = controls
    before = get()
    try:
        for threads in (1, 2, 3):
            set_(threads)
            assert np.array_equal(affinity_from_tokens(x, 10.0), want), threads
            assert np.array_equal(native.native_affinity(x, 10.0), want), threads
            assert get() == threads  # (restored after each call)
    finally:
        set_(before)


def test_affinity_is_the_same_from_concurrent_callers(built):
    """A BLAS call made while another thread's runs may go single-threaded: the affinity must not depend on it (the
    numpy path's and the core's calls at once, on several threads)."""
    import concurrent.futures

    rng = np.random.default_rng(3)
    xs = [l2_normalize(rng.standard_normal((n, 48)).astype(np.float32)) for n in (300, 520, 200)]
    want = [affinity_from_tokens(x, 10.0) for x in xs]
    controls = native.blas_thread_controls()
    before = controls[0]() if controls else None

    def job(i):
        x = xs[i % 3]
        got = affinity_from_tokens(x, 10.0) if i % 2 else native.native_affinity(x, 10.0)
        return np.array_equal(got, want[i % 3])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, range(24)))
    if controls:
        assert controls[0]() == before  # the count is restored once every block ended


def _disconnected_tokens(h, w, regions, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((regions, 64))
    labels = (np.arange(h)[:, None] * regions // h + np.arange(w)[None, :] * 0) % regions
    f = centres[labels] + 0.3 * rng.standard_normal((h, w, 64))
    return f.astype(np.float32)


def test_native_shared_helpers_concurrent_callers_and_forked_child(built):
    """The core's parallel work runs on one process-wide helper pool (run_shared): callers on several threads at
    once (each call takes the helpers or runs its parts alone) and a child forked after the pool started (its
    helpers stayed in the parent) get exactly the labels of a lone call. 32x32 grids: the products, Gram bands,
    scaling pass and gathers all take the shared path."""
    import concurrent.futures
    grids = [_disconnected_tokens(32, 32, 4, 1), _features("lab-coffee", 32, 32), _features("planted-disc", 32, 32)]
    want = [recursive_ncut(f, tau=0.5, graph_backend="native") for f in grids]
    assert max(int(w.max()) for w in want) >= 1
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(recursive_ncut, grids[i % 3], tau=0.5, graph_backend="native") for i in range(12)]
        for i, job in enumerate(jobs):
            assert np.array_equal(job.result(), want[i % 3]), i
    if not hasattr(os, "fork"):
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: same labels, reported through the pipe, then out without cleanup
        code = 1
        try:
            same = all(np.array_equal(recursive_ncut(f, tau=0.5, graph_backend="native"), w)
                       for f, w in zip(grids, want))
            os.write(write, b"same" if same else b"diff")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    reply = os.read(read, 16)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0 and reply == b"same"


@pytest.mark.parametrize("seed", range(6))
def test_nearly_disconnected_labels_do_not_depend_on_the_blas_thread_count(built, seed):
    """Clusters of one-hot features with 1e-3 noise: lambda_2 at rounding level (root NCut ~1e-22), so dsyevr's
    vector, and the split, followed OpenBLAS's thread count in the numpy path (the core runs its small dense solves
    single-threaded): 16 of 24 such cases gave other labels natively. Dense solves below 512 nodes now run
    single-threaded in both."""
    r = np.random.default_rng(seed)
    k, n = 2 + seed % 4, (16, 20, 14)[seed % 3]
    f = np.zeros((n, n, 8), np.float32)
    for j in range(k):
        f[:, j * n // k:(j + 1) * n // k, j] = 1
    f += 1e-3 * r.standard_normal(f.shape).astype(np.float32)
    for solver in ("dense", "auto"):
        want = recursive_ncut(f, tau=0.2, graph_backend="numpy", solver=solver)
        with native.single_threaded_blas():
            assert np.array_equal(recursive_ncut(f, tau=0.2, graph_backend="numpy", solver=solver), want)
        assert np.array_equal(recursive_ncut(f, tau=0.2, graph_backend="native", solver=solver), want), solver


def test_build_tree_on_an_affinity_float32_cannot_hold(built):
    """float64 affinities: "native" rounds to float32 but refuses values whose rounding changes the graph (1e-50
    became 0 and gave 2 segments instead of 4; 1e39 became inf and failed in dsyevr with a RuntimeError); "auto"
    keeps the numpy path for a W float32 does not hold exactly."""
    W = np.full((8, 8), 1e-50)
    for a in range(0, 8, 2):
        W[a:a + 2, a:a + 2] = 1.0
    W[0:2, 2:4] = W[2:4, 0:2] = 0.01
    W[4:6, 6:8] = W[6:8, 4:6] = 0.01
    want = build_tree(W, tau_max=0.5, graph_backend="numpy").cut(0.5)
    assert want.max() == 3
    assert np.array_equal(build_tree(W, tau_max=0.5, graph_backend="auto").cut(0.5), want)
    with pytest.raises(InputError, match="below float32's range"):
        build_tree(W, tau_max=0.5, graph_backend="native")
    B = np.zeros((10, 10))
    B[:5, :5] = B[5:, 5:] = 1e39
    assert np.array_equal(build_tree(B, tau_max=0.5, graph_backend="auto").cut(0.5),
                          build_tree(B, tau_max=0.5, graph_backend="numpy").cut(0.5))
    with pytest.raises(InputError, match="beyond float32's range"):
        build_tree(B, tau_max=0.5, graph_backend="native")
    # a float64 W that float32 holds exactly takes the core and gives the numpy labels
    W2 = np.where(W < 1e-40, 0.0, W).astype(np.float32).astype(np.float64)
    assert np.array_equal(build_tree(W2, tau_max=0.5, graph_backend="native").cut(0.5),
                          build_tree(W2, tau_max=0.5, graph_backend="numpy").cut(0.5))


def test_huge_integer_options_are_input_errors_or_clamped(built):
    f = np.random.default_rng(0).standard_normal((4, 4, 3)).astype(np.float32)
    one = ncut_tree(f, graph_backend="native").cut(0.5)
    trees = ncut_trees([f, f], num_threads=2**31, graph_backend="native")  # more threads than grids: one each
    assert all(np.array_equal(t.cut(0.5), one) for t in trees)
    for backend in ("native", "numpy"):
        with pytest.raises(InputError, match="num_thresholds"):
            recursive_ncut(f, num_thresholds=2**31, graph_backend=backend)


_STEER_SCRIPT = """
import os, numpy as np
from diffcut_engine.graph import recursive_ncut
allowed = set(os.sched_getaffinity(0))
f = np.random.default_rng(0).standard_normal((32, 32, 16)).astype(np.float32)
want = recursive_ncut(f, tau=0.5, graph_backend="native")  # starts the helper pool on every allowed CPU
def cpu_sets():  # each thread's Cpus_allowed_list, parsed
    out = []
    for tid in os.listdir("/proc/self/task"):
        for line in open(f"/proc/self/task/{tid}/status"):
            if line.startswith("Cpus_allowed_list"):
                cpus = set()
                for part in line.split()[1].split(","):
                    lo, _, hi = part.partition("-")
                    cpus.update(range(int(lo), int(hi or lo) + 1))
                out.append(cpus)
    return out
for cpu in sorted(allowed)[:2]:
    os.sched_setaffinity(0, {cpu})
    assert (recursive_ncut(f, tau=0.5, graph_backend="native") == want).all()
    sets = cpu_sets()
    assert allowed - {cpu} in sets, (cpu, sets)  # a helper kept off the caller's CPU
print("steered")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
def test_helpers_are_kept_off_the_callers_cpu(built):
    """A woken helper queued on the caller's own CPU preempted the caller (paused calls slower than one thread);
    the pool now sets the helpers' affinity to the process's CPUs less the caller's before waking them."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _STEER_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "steered" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_the_core_normalising_raw_tokens_gives_the_normalised_tokens_tree(built):
    """ncut_tree's and ncut_trees' native paths hand the raw tokens to the core, which normalises them (row_norm is
    row_norms): the same tree arrays, bit for bit, as normalising in numpy; NaN still raises, and a finite row whose
    norm is beyond float32 becomes zeros, as in numpy."""
    module = native.require_native()
    for name, h, w in (("filters-coffee", 12, 14), ("lab-astronaut", 16, 16), ("planted-disc", 9, 23)):
        tokens = as_token_matrix(_features(name, h, w))[0] * np.float32(3.7)
        a = module.tree_from_tokens(l2_normalize(tokens), 10.0, 0.9, "official", 100, "auto")
        b = module.tree_from_tokens(tokens, 10.0, 0.9, "official", 100, "auto", True)
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), name
        (c,) = module.trees_from_tokens([tokens], 10.0, 0.9, "official", 100, "auto", 1, True)
        assert all(np.array_equal(x, y) for x, y in zip(a, c)), name
    f = _features("filters-coffee", 8, 9)
    for scale in (1e30, 3e37):
        assert np.array_equal(recursive_ncut(f * np.float32(scale), graph_backend="native"),
                              recursive_ncut(f * np.float32(scale), graph_backend="numpy"))
    bad = f.copy()
    bad[1, 2, 0] = np.inf
    with pytest.raises(InputError, match=r"NaN or infinite values \(1 of 72 tokens\)"):
        recursive_ncut(bad, graph_backend="native")


def test_row_norms_are_the_cores_bit_for_bit(built):
    """The C API normalises features itself (no numpy): its row norm summed the squares in a float32 loop and
    numpy's einsum in another order, so 8 of 21 norms differed and the labels from features differed from the
    Python engine's. Both now compute float32(sqrt(float64(exact sum of squares))): a bounded float64 sum, and the
    exactly rounded sum (math.fsum / the core's partials) where the bound leaves the float32 open."""
    import math

    from diffcut_engine.graph.affinity import NORM_EPS, row_norms

    module = native.require_native()
    rng = np.random.default_rng(0)
    for _ in range(60):
        c, n = int(rng.integers(1, 1400)), int(rng.integers(1, 40))
        x = (rng.standard_normal((n, c)) * 10.0 ** rng.uniform(-18, 18)).astype(np.float32)
        assert np.array_equal(row_norms(x), np.maximum(module.row_norms(x), NORM_EPS))
    # rows [a, b] with sqrt(a^2 + b^2) on a float32 rounding boundary, to rounding: the exact branch
    opened = 0
    for _ in range(300):
        a = np.float32(rng.uniform(1, 2) * 2.0 ** int(rng.integers(-10, 10)))
        b = np.float32(math.sqrt(float(a) * float(np.spacing(a))))
        x = np.array([[a, b], [b, a]], np.float32)
        s = float(a) ** 2 + float(b) ** 2
        opened += np.float32(math.sqrt(s * (1 - 4 * 2.0 ** -53))) != np.float32(math.sqrt(s * (1 + 4 * 2.0 ** -53)))
        want = np.float32(math.sqrt(math.fsum([float(a) ** 2, float(b) ** 2])))
        assert row_norms(x)[0] == want == row_norms(x)[1] == module.row_norms(x)[0] == module.row_norms(x)[1]
    assert opened > 10
    huge = np.full((1, 1280), 3e38, np.float32)  # a finite row whose norm is beyond float32: inf in both
    assert np.isinf(row_norms(huge)[0]) and np.isinf(module.row_norms(huge)[0])
