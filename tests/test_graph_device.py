"""The graph stage on the device (graph/device.py), its dispatch from ncut_tree / recursive_ncut, and the engine's
``graph_device`` option.

Without a GPU the device code path runs on numpy (``xp=numpy``): everything but the CuPy and Triton calls
themselves. References are the host recursion (``build_tree(..., solver="dense", leaf_bounds=False)`` node by node,
``ncut_tree`` / ``recursive_ncut`` labels). Tests marked ``gpu`` run on CUDA and are skipped elsewhere.
"""

import numpy as np
import pytest
import torch

from diffcut_engine import BackendUnavailableError, EngineConfig, InputError
from diffcut_engine.engine import Engine
from diffcut_engine.graph import affinity, batched, build_tree, device, ncut, ncut_tree, recursive_ncut
from diffcut_engine.graph.device import device_affinity, device_ncut_trees
from diffcut_engine.graph.xp import cupy_available

from planted import planted_features, planted_regions
from test_graph import smooth_field
from test_graph_batched import _FakeDeviceArray, _HOST_EXACT, assert_same_tree
from toy_encoder import ColourEncoder

gpu = pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")


def planted(h, w, kind, seed, **kw):
    return planted_features(planted_regions(h, w, kind), seed=seed, **kw)


def host_tree(feats, tau_max):
    """The host reference tree of a feature grid, every leaf value exact."""
    return build_tree(affinity(feats, 10.0), tau_max=tau_max, solver="dense", shape=feats.shape[:2], **_HOST_EXACT)


def tokens_of(feats):
    return feats.reshape(-1, feats.shape[-1])


# ------------------------------------------------------------------------------------------------------------
# device_affinity
# ------------------------------------------------------------------------------------------------------------

def _zero_token(f):
    f = f.copy()
    f[1, 2] = 0.0
    return f


@pytest.mark.parametrize("feats,alpha", [
    (planted(12, 16, "quadrants", 0), 10.0),
    (planted(12, 16, "quadrants", 0), 2.5),   # non-integer: xp.power
    (planted(9, 11, "disc", 1), 1.0),
    (planted(9, 11, "disc", 1), 64.0),        # largest exponent of the binary powering
    (planted(9, 11, "disc", 1), 65.0),        # just above: xp.power
    (_zero_token(planted(6, 7, "stripes", 2)), 10.0),
    (smooth_field(10, 12, seed=3), 10.0),
    (np.ones((5, 6, 4), np.float32), 10.0),   # constant similarities: all ones
])
def test_device_affinity_equals_host_affinity(feats, alpha):
    W = device_affinity(tokens_of(feats), alpha)
    ref = affinity(feats, alpha)
    assert isinstance(W, np.ndarray) and W.dtype == np.float32 and W.shape == ref.shape
    np.testing.assert_allclose(W, ref, rtol=1e-5, atol=1e-7)


def test_device_affinity_accepts_other_dtypes_and_cpu_tensors():
    feats = planted(8, 9, "quadrants", 4)
    ref = affinity(feats, 10.0)
    np.testing.assert_allclose(device_affinity(tokens_of(feats).astype(np.float64)), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(device_affinity(torch.from_numpy(tokens_of(feats))), ref, rtol=1e-5, atol=1e-7)
    ints = np.arange(24).reshape(6, 4) % 5
    np.testing.assert_allclose(device_affinity(ints, 3), affinity(ints.reshape(2, 3, 4), 3), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tokens,alpha,match", [
    (np.array([[1.0, np.nan], [0.0, 1.0]], np.float32), 10.0, r"NaN or infinite values \(1 of 2"),
    (np.array([[1.0, np.inf], [0.0, 1.0], [np.inf, 0]]), 10.0, r"NaN or infinite values \(2 of 3"),
    (np.ones((2, 3, 4)), 10.0, r"\(N, C\)"),
    (np.ones((0, 4)), 10.0, "non-empty"),
    (np.ones((3, 4), complex), 10.0, "real"),
    (np.ones((3, 4), bool), 10.0, "real"),
    (np.ones((3, 4)), 0.0, "alpha"),
    (np.ones((3, 4)), True, "alpha"),
])
def test_device_affinity_rejects_bad_input(tokens, alpha, match):
    with pytest.raises(InputError, match=match):
        device_affinity(tokens, alpha)


# ------------------------------------------------------------------------------------------------------------
# device_ncut_trees: the device code path, run on numpy
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("feats,tau", [
    (planted(12, 16, "quadrants", 0), 0.5),
    (planted(20, 20, "disc", 1), 0.3),
    (planted(14, 18, "stripes", 2), 0.6),
    (planted(10, 12, "quadrants", 3, noise=0.8), 0.9),
    (smooth_field(16, 20, seed=1), 0.5),
])
def test_device_tree_equals_host_tree(feats, tau):
    tree, = device_ncut_trees([feats], alpha=10.0, tau_max=tau, xp=np)
    assert tree.shape == feats.shape[:2] and tree.compat == "official"
    assert assert_same_tree(host_tree(feats, tau), tree) >= 2
    host = ncut_tree(feats, alpha=10.0, tau_max=tau)  # the default host tree (auto solver, leaf bounds)
    for t in (tau / 3, tau / 2, tau):
        labels = tree.cut(t)
        assert isinstance(labels, np.ndarray) and labels.dtype == np.int32 and labels.shape == feats.shape[:2]
        np.testing.assert_array_equal(labels, host.cut(t))
    np.testing.assert_array_equal(tree.cut(tau), recursive_ncut(feats, alpha=10.0, tau=tau))


def test_planted_regions_are_recovered():
    regions = planted_regions(16, 20, "stripes")
    tree, = device_ncut_trees([planted_features(regions, seed=5)], tau_max=0.5, xp=np, compat="clean")
    labels = tree.cut(0.5)
    assert labels.max() + 1 == regions.max() + 1
    pairs = set(zip(labels.ravel().tolist(), regions.ravel().tolist()))
    assert len(pairs) == regions.max() + 1  # the same partition, up to renumbering


def test_several_images_in_one_batched_call(monkeypatch):
    feats = [planted(12, 16, "quadrants", 0), planted(20, 20, "disc", 1, channels=32), planted(1, 1, "disc", 0),
             smooth_field(16, 20, seed=2), planted(5, 8, "stripes", 3)]
    calls = []
    real = device.build_trees_batched

    def spy(Ws, **kw):
        calls.append(len(Ws))
        return real(Ws, **kw)

    monkeypatch.setattr(device, "build_trees_batched", spy)
    tau = 0.5
    trees = device_ncut_trees(feats, alpha=10.0, tau_max=tau, xp=np)
    assert calls == [len(feats)]  # one batched recursion for all images
    splits = 0
    for f, tree in zip(feats, trees):
        assert tree.shape == f.shape[:2]
        splits += assert_same_tree(host_tree(f, tau), tree)
        np.testing.assert_array_equal(tree.cut(tau), recursive_ncut(f, tau=tau))
        np.testing.assert_array_equal(tree.cut(0.2), recursive_ncut(f, tau=0.2))
    assert splits >= 8


def test_host_inputs_default_to_numpy():
    assert device_ncut_trees([], tau_max=0.5) == []
    f = planted(8, 10, "quadrants", 6)
    a, b = device_ncut_trees([f, torch.from_numpy(f.astype(np.float64))], tau_max=0.5)
    np.testing.assert_array_equal(a.cut(0.5), recursive_ncut(f, tau=0.5))
    np.testing.assert_array_equal(b.cut(0.5), a.cut(0.5))


@pytest.mark.parametrize("feats,kw,match", [
    ([planted(4, 5, "disc", 0), np.full((3, 3, 2), np.nan)], {}, r"features 1 contain NaN or infinite values \(9 of 9"),
    ([np.where(np.arange(40).reshape(4, 5, 2) == 7, np.inf, 1.0)], {}, r"^features contain NaN .*\(1 of 20"),
    ([np.ones((4, 5))], {}, r"\(h, w, C\)"),
    ([np.ones((2, 2, 2)), np.ones((4, 5, 2, 1))], {}, r"features 1 must be an \(h, w, C\)"),
    ([np.ones((0, 5, 3))], {}, "empty"),
    ([np.ones((2, 5, 0))], {}, "empty"),
    ([np.ones((2, 2, 3), complex)], {}, "real"),
    ([np.ones((2, 2, 3))], {"alpha": -1.0}, "alpha"),
    ([np.ones((2, 2, 3))], {"tau_max": 0.0}, "tau_max"),
    ([np.ones((2, 2, 3))], {"num_thresholds": 1}, "num_thresholds"),
    ([np.ones((2, 2, 3))], {"xp": "numpy"}, "xp"),
    ([np.ones((2, 2, 3)), _FakeDeviceArray()], {}, "mix host"),
])
def test_bad_features_raise_input_error(feats, kw, match):
    kw = {"tau_max": 0.5, **kw}
    with pytest.raises(InputError, match=match):
        device_ncut_trees(feats, **kw)


# ------------------------------------------------------------------------------------------------------------
# Dispatch from ncut_tree / recursive_ncut
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    ({"compat": "official-float32"}, r"compat='official-float32' runs on the host.*cupy\.asnumpy"),
    ({"solver": "dense"}, r"solver='dense' is a host eigensolver.*tensor\.cpu\(\)"),
    ({"solver": "lanczos"}, "host eigensolver"),
    ({"solver": "nope"}, "unknown eigensolver"),
    ({"compat": "nope"}, "unknown compat"),
])
def test_device_input_with_host_only_options_raises(kw, match):
    fake = _FakeDeviceArray()  # a "CuPy array": rejected before anything touches it
    with pytest.raises(InputError, match=match):
        recursive_ncut(fake, tau=0.5, **kw)
    with pytest.raises(InputError, match=match):
        ncut_tree(fake, tau_max=0.5, **kw)


def test_device_input_without_cupy_names_the_extra():
    if cupy_available():
        pytest.skip("CuPy with a device is available here")
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy imports here (without a device)")
    with pytest.raises(InputError, match=r"diffcut-engine\[gpu\]"):
        recursive_ncut(_FakeDeviceArray(), tau=0.5)


def test_device_input_is_routed_to_the_batched_path(monkeypatch):
    f = planted(12, 16, "disc", 4)
    expected = {tau: recursive_ncut(f, tau=tau) for tau in (0.3, 0.6)}
    calls = []
    real = device.device_ncut_trees

    def spy(features_list, **kw):
        calls.append(len(features_list))
        return real(features_list, **kw)

    monkeypatch.setattr(device, "device_ncut_trees", spy)
    monkeypatch.setattr(ncut, "is_device", lambda x: True)  # treat the numpy grid as a device array
    labels = recursive_ncut(f, tau=0.3)
    assert calls == [1] and isinstance(labels, np.ndarray)
    np.testing.assert_array_equal(labels, expected[0.3])
    tree = ncut_tree(f, tau_max=0.6)
    assert calls == [1, 1] and tree.shape == (12, 16)
    np.testing.assert_array_equal(tree.cut(0.6), expected[0.6])
    with pytest.raises(InputError, match="official"):
        recursive_ncut(f, tau=0.3, compat="official-float32")
    assert calls == [1, 1]


def test_host_input_stays_on_the_host(monkeypatch):
    def forbidden(*args, **kw):
        raise AssertionError("the device path ran for host input")

    monkeypatch.setattr(device, "device_ncut_trees", forbidden)
    f = planted(6, 8, "quadrants", 1)
    assert recursive_ncut(f, tau=0.5).max() == 3
    assert recursive_ncut(f, tau=0.5, compat="official-float32", solver="dense").max() == 3
    assert ncut_tree(torch.from_numpy(f), tau_max=0.5).num_segments(0.5) == 4


# ------------------------------------------------------------------------------------------------------------
# Configuration and command line
# ------------------------------------------------------------------------------------------------------------

def test_config_graph_device_validation():
    assert EngineConfig().graph_device == "auto"
    for mode in ("auto", "host", "device"):
        assert EngineConfig(graph_device=mode).graph_device == mode
    assert EngineConfig(graph_device="auto", compat="official").compat == "official"
    assert EngineConfig.from_options(graph_device="host").replace(graph_device="device").graph_device == "device"
    for bad in ("gpu", "cuda", None, ""):
        with pytest.raises(InputError, match="graph_device"):
            EngineConfig(graph_device=bad)
    assert EngineConfig(graph_device="device").compat == "official"
    with pytest.raises(InputError, match=r"graph_device='device' needs compat='official' or 'clean'"):
        EngineConfig(graph_device="device", compat="official-float32")
    with pytest.raises(InputError, match="graph_device"):
        EngineConfig(graph_device="host").replace(graph_device="both")


def test_cli_graph_device_option():
    from diffcut_engine.cli import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["segment", "a.png", "-o", "out", "--graph-device", "host"])
    assert config_from_args(args).graph_device == "host"
    assert config_from_args(parser.parse_args(["segment", "a.png", "-o", "out"])).graph_device == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "a.png", "-o", "out", "--graph-device", "gpu"])


# ------------------------------------------------------------------------------------------------------------
# Engine
# ------------------------------------------------------------------------------------------------------------

def block_image(seed, rows=6, cols=8):
    """Random colour per 32 px cell, plus pixel noise (so that no two cells have identical features)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, size=(rows, cols, 1)) * np.array([70, 40, 20]) + rng.integers(0, 30, (rows, cols, 3))
    img = np.kron(blocks, np.ones((32, 32, 1))) + rng.normal(scale=3, size=(32 * rows, 32 * cols, 3))
    return img.clip(0, 255).round().astype(np.uint8)


def make_engine(**kw):
    cfg = EngineConfig(size=(192, 256), tau=0.5, device="cpu", batch_size=4, **kw)
    return Engine(cfg, encoder=ColourEncoder())


def test_engine_device_mode_without_cupy_raises(monkeypatch):
    monkeypatch.setattr(device, "cupy_available", lambda: False)
    engine = make_engine(graph_device="device")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'diffcut-engine\[gpu\]'"):
        engine.segment(block_image(0))
    with pytest.raises(BackendUnavailableError):  # not an error of one input: a list fails as a whole too
        engine.segment([block_image(0), block_image(1)], errors="skip")


def test_engine_host_and_auto_on_cpu_stay_on_the_host(monkeypatch):
    def forbidden(*args, **kw):
        raise AssertionError("the device path ran")

    monkeypatch.setattr("diffcut_engine.graph.device_ncut_trees", forbidden)
    img = block_image(2)
    a = make_engine(graph_device="host").segment(img)
    b = make_engine(graph_device="auto").segment(img)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.num_segments >= 3


def test_engine_batched_device_branch_equals_host(monkeypatch):
    imgs = [block_image(s) for s in range(5)]
    host = make_engine(graph_device="host")
    ref = host.segment(imgs, tree_tau_max=0.8, return_features=True)

    calls = []
    real = device.device_ncut_trees

    def spy(features_list, **kw):
        calls.append((len(features_list), kw["xp"]))
        return real(features_list, **kw)

    monkeypatch.setattr("diffcut_engine.graph.device_ncut_trees", spy)
    monkeypatch.setattr(Engine, "graph_namespace", lambda self, features=None: np)  # the device branch, on numpy
    dev = make_engine(graph_device="auto")
    got = dev.segment(imgs, tree_tau_max=0.8, return_features=True)
    assert calls == [(4, np), (1, np)]  # batch_size 4: one batched call per encoder batch
    total = 0
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(g.grid_labels, r.grid_labels)
        np.testing.assert_array_equal(g.labels, r.labels)
        assert g.num_segments == r.num_segments and g.tau == r.tau == 0.5
        assert g.tree is not None and g.tree.tau_max == 0.8
        for t in (0.2, 0.8):
            np.testing.assert_array_equal(g.tree.cut(t), r.tree.cut(t))
        np.testing.assert_array_equal(g.features, r.features)
        assert g.timings["graph"] > 0 and set(g.timings) == set(r.timings)
        total += g.num_segments
    assert total >= 15
    # without return_features / return_tree nothing extra is kept
    plain = dev.segment(imgs[:2])
    assert all(s.features is None and s.tree is None for s in plain)
    np.testing.assert_array_equal(plain[1].labels, ref[1].labels)


# ------------------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------------------

def _cuda_torch():
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")


@pytest.mark.gpu
@gpu
def test_gpu_cupy_features_give_host_labels():
    import cupy

    feats = [planted(32, 32, "quadrants", 0, channels=1280), planted(24, 40, "stripes", 2), smooth_field(16, 20),
             planted(1, 1, "disc", 0)]
    for f in feats[:3]:
        labels = recursive_ncut(cupy.asarray(f), tau=0.5)
        assert isinstance(labels, np.ndarray)
        np.testing.assert_array_equal(labels, recursive_ncut(f, tau=0.5))
        W = device_affinity(cupy.asarray(tokens_of(f)))
        assert isinstance(W, cupy.ndarray) and W.dtype == cupy.float32
        np.testing.assert_allclose(W.get(), affinity(f, 10.0), rtol=1e-4, atol=1e-6)
    trees = device_ncut_trees([cupy.asarray(f) for f in feats], tau_max=0.5)
    for f, tree in zip(feats, trees):
        np.testing.assert_array_equal(tree.cut(0.5), recursive_ncut(f, tau=0.5))
    moved = device_ncut_trees(feats[:2], tau_max=0.5, xp=cupy)  # host input moved to the device
    for f, tree in zip(feats, moved):
        np.testing.assert_array_equal(tree.cut(0.5), recursive_ncut(f, tau=0.5))
    with pytest.raises(InputError, match="features 1 contain NaN"):
        device_ncut_trees([cupy.ones((2, 2, 3)), cupy.full((2, 2, 3), cupy.nan)], tau_max=0.5)


@pytest.mark.gpu
@gpu
def test_gpu_cuda_tensor_is_consumed_without_copy(monkeypatch):
    _cuda_torch()
    import cupy

    f = planted(20, 24, "disc", 3, channels=256)
    t = torch.from_numpy(f).cuda()
    _, arrays = batched.resolve_namespace([t], None)
    assert isinstance(arrays[0], cupy.ndarray) and arrays[0].data.ptr == t.data_ptr()  # DLPack view

    kernel_outputs, handed = [], []
    kaff = device._fused_affinity_module()
    if kaff is not None:  # Triton compiled here: its W must reach the recursion without a copy
        real_fused = kaff.fused_affinity

        def fused_spy(*args, **kw):
            W, d = real_fused(*args, **kw)
            kernel_outputs.append(W.data_ptr())
            return W, d

        monkeypatch.setattr(kaff, "fused_affinity", fused_spy)
    real_build = device.build_trees_batched

    def build_spy(Ws, **kw):
        handed.extend(W.data.ptr for W in Ws)
        return real_build(Ws, **kw)

    monkeypatch.setattr(device, "build_trees_batched", build_spy)
    tree, = device_ncut_trees([t], tau_max=0.5)
    np.testing.assert_array_equal(tree.cut(0.5), recursive_ncut(f, tau=0.5))
    if kaff is not None:
        assert handed == kernel_outputs and len(handed) == 1
    labels = recursive_ncut(t, tau=0.5)  # the dispatch accepts CUDA tensors too
    np.testing.assert_array_equal(labels, recursive_ncut(f, tau=0.5))


@pytest.mark.gpu
@gpu
def test_gpu_engine_end_to_end_tiny_sdxl(tiny_sdxl_path, monkeypatch):
    _cuda_torch()
    calls = []
    real = device.device_ncut_trees

    def spy(features_list, **kw):
        calls.append(len(features_list))
        return real(features_list, **kw)

    monkeypatch.setattr("diffcut_engine.graph.device_ncut_trees", spy)
    imgs = [block_image(s) for s in range(3)]
    for mode in ("auto", "device"):
        calls.clear()
        engine = Engine.from_pretrained(tiny_sdxl_path, size="256x192", device="cuda", dtype="fp32",
                                        graph_device=mode, batch_size=4)
        segs = engine.segment(imgs, return_features=True)
        assert calls == [3]
        for seg in segs:
            assert seg.grid_labels.shape == (6, 8) and isinstance(seg.grid_labels, np.ndarray)
            np.testing.assert_array_equal(seg.grid_labels, recursive_ncut(seg.features, alpha=10.0, tau=engine.tau))
    host = Engine.from_pretrained(tiny_sdxl_path, size="256x192", device="cuda", dtype="fp32", graph_device="host")
    calls.clear()
    host.segment(imgs[0])
    assert calls == []
