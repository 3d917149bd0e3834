"""Refinement in the C++ core (csrc/src/refine.cpp, ``refine_backend="native"``) against the Python engine.

PAMR (affinities, support-box propagation, argmax) and the 3x3 median repeat the CPU fast path's float32 operations
in its order: their labels must equal the torch reference's (``refine._pamr_torch_at``) and the numba path's, pixel
for pixel, and the affinities the numba ones bit for bit. Concept assignment sums its two small matrix products
(concepts, grid scores) in its own order where torch calls a GEMM, so its scores agree with torch's to float32
rounding only: a pixel whose two best concepts tie within that rounding may differ, hence >= 99.9 % there (measured:
identical on every case below). Skipped only where no C++ compiler exists (as tests/test_native.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffcut_engine import refine
from diffcut_engine.config import EngineConfig
from diffcut_engine.errors import BackendUnavailableError, InputError
from diffcut_engine.kernels import pamr_cpu, pamr_native
from refine_inputs import photo, voronoi_labels

needs_numba = pytest.mark.skipif(not pamr_cpu.available(), reason="numba not installed (extra [fast])")


def _random_image(size, seed):
    """Smooth random colours plus noise: many near-equal neighbours, as on flat image regions."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 5, 6, generator=g), size=size, mode="bilinear", align_corners=False)[0]
    return (0.8 * base + 0.2 * torch.rand(3, *size, generator=g)).contiguous()


def _features(h, w, c, k, seed):
    """L2-normalised features around k directions and grid labels using every id 0..k-1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (h, w), generator=g)
    labels.view(-1)[:k] = torch.arange(k)
    feats = torch.randn(k, c, generator=g)[labels] + 0.8 * torch.randn(h, w, c, generator=g)
    return F.normalize(feats, dim=-1), labels


# ------------------------------------------------------------------------------------------------------------
# PAMR and the median: the reference's labels, pixel for pixel
# ------------------------------------------------------------------------------------------------------------

PAMR_CASES = [
    # image size, label size (None: the image's), K, iters, dilations, image kind
    ((48, 56), None, 6, 10, (1, 2, 4, 8), "photo"),
    ((48, 56), None, 40, 10, (1, 2, 4, 8), "photo"),
    ((40, 40), (55, 31), 12, 30, (1, 2, 4, 8, 12, 24, 32, 64), "photo"),   # demo dilations, masks resized
    ((33, 47), None, 4, 0, (1, 2), "random"),                               # no iteration
    ((33, 47), (20, 9), 4, 0, (1, 2), "photo"),                             # no iteration, masks resized
    ((23, 71), (30, 18), 30, 10, (1, 2, 4, 8), "random"),                   # non-square, more labels than cells
    ((64, 24), None, 25, 1, (1, 3, 40), "photo"),                           # one step, a dilation > the image
    ((37, 37), (12, 12), 2, 10, (1, 2, 4, 8), "random"),
    ((29, 44), None, 1, 10, (2,), "photo"),                                 # one label
    ((1, 9), None, 3, 2, (1, 2), "random"),                                 # one row
    ((7, 1), (3, 1), 2, 3, (1,), "random"),                                 # one column, masks resized
    ((12, 150), None, 5, 4, (1, 2, 4, 8, 12, 24, 32, 64), "photo"),         # wide: fused taps and clamped edges
]


@pytest.mark.parametrize("size, lsize, k, iters, dil, kind", PAMR_CASES)
def test_native_pamr_labels_equal_the_reference(built, size, lsize, k, iters, dil, kind):
    img = photo(size) if kind == "photo" else _random_image(size, seed=k)
    lab = voronoi_labels(lsize or size, k, seed=k + iters)
    n = k + 2                                   # two absent ids: their masks stay zero and never win
    ref = refine._pamr_torch_at(img, lab, n, iters, dil).numpy()
    for threads, budget in ((1, 1 << 25), (3, 1 << 25), (2, 1)):   # one label per chunk with budget 1
        got = pamr_native.pamr(img.numpy(), lab.numpy(), n, iters=iters, dilations=dil, median=False,
                               num_threads=threads, budget=budget)
        assert got.dtype == np.int32 and got.shape == size
        assert np.array_equal(got, ref), f"{int((got != ref).sum())} pixels differ (threads {threads})"
    if pamr_cpu.available():
        fast = refine.pamr_fast(img, lab, num_segments=n, iters=iters, dilations=dil)
        assert np.array_equal(fast.numpy(), ref)


@needs_numba
@pytest.mark.parametrize("size, dil", [((40, 52), (1, 3, 8)), ((17, 90), (1, 2, 4, 8)), ((9, 9), (1, 16))])
def test_native_affinities_are_the_numba_floats(built, size, dil):
    img = photo(size).numpy()
    got = pamr_native.pamr_affinity(img, dil, num_threads=2)
    assert got.dtype == np.float32 and got.shape == (8 * len(dil), *size)
    assert np.array_equal(got, pamr_cpu.affinity(img, dil))                       # bit for bit
    np.testing.assert_allclose(got, refine.pamr_affinity(torch.from_numpy(img), dil).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (17, 29), (40, 33)])
def test_native_median_equals_the_torch_median(built, shape):
    g = torch.Generator().manual_seed(sum(shape))
    lab = torch.randint(0, 6, shape, generator=g)
    lab[: shape[0] // 2] = torch.randint(0, 2, (shape[0] // 2, shape[1]), generator=g)   # many ties
    assert np.array_equal(pamr_native.median3x3(lab.numpy(), num_threads=2), refine.median3x3(lab).numpy())


@pytest.mark.parametrize("work", [None, (48, 64)])
@pytest.mark.parametrize("median", [True, False])
def test_refine_at_native_equals_torch(built, work, median):
    view = photo((70, 90))
    lab = voronoi_labels((70, 90), 8, seed=3)
    a = refine.refine_at(view, lab, work_size=work, iters=5, dilations=(1, 2, 4), median=median, backend="torch")
    b = refine.refine_at(view, lab, work_size=work, iters=5, dilations=(1, 2, 4), median=median, backend="native")
    assert b.dtype == torch.int64 and b.shape == (70, 90)
    # (from a working size both return edge-aware: numba's joint_upsample or the core's, the same labels)
    assert torch.equal(a, b)


@pytest.mark.parametrize("small, big", [((32, 32), (100, 90)), ((48, 40), (48, 40)), ((64, 64), (30, 25)),
                                        ((17, 23), (161, 97)), ((1, 5), (4, 20)), ((5, 1), (20, 3))])
@pytest.mark.parametrize("k", [2, 5, 40])
def test_native_joint_upsample_is_numbas_bit_for_bit(built, small, big, k):
    # random and blocky labels, random colours, two sigmas: the C++ joint bilateral vote gives numba's labels
    rng = np.random.default_rng(k + small[0] * big[1])
    hs, ws = small
    noisy = rng.integers(0, k, small)
    blocky = np.kron(rng.integers(0, k, ((hs + 3) // 4, (ws + 3) // 4)), np.ones((4, 4), int))[:hs, :ws]
    for lab in (noisy, blocky):
        small_img = rng.random((3, *small)).astype(np.float32)
        big_img = rng.random((3, *big)).astype(np.float32)
        for sigma in (0.1, 0.03):
            got = pamr_native.joint_upsample(lab, small_img, big_img, sigma, num_threads=2)
            assert got.dtype == np.int32 and got.shape == big
            assert set(np.unique(got)) <= set(np.unique(lab))
            if pamr_cpu.available():
                assert np.array_equal(got, pamr_cpu.joint_upsample(lab, small_img, big_img, sigma))


def test_native_joint_upsample_on_a_photo_and_without_numba(built, monkeypatch):
    # the demo-style flow (PAMR at a working size, back to the photo's size) on a photo: native == numba == torch
    # backend; with numba missing, the edge-aware return is the core's (not nearest-neighbour), the same labels
    view = photo((90, 120))
    lab = voronoi_labels((90, 120), 9, seed=5)
    kw = dict(work_size=(64, 64), iters=4, dilations=(1, 2, 4, 8))
    ref = refine.refine_at(view, lab, backend="torch", **kw)
    nat = refine.refine_at(view, lab, backend="native", **kw)
    assert torch.equal(ref, nat) and int(nat.max()) >= 1
    nearest = refine.refine_at(view, lab, backend="native", upsample="nearest", **kw)
    assert not torch.equal(nearest, nat)  # the two returns differ on a photo: the test can tell them apart
    monkeypatch.setattr(refine, "_fast_available", lambda device: False)
    assert torch.equal(refine.refine_at(view, lab, backend="auto", **kw), nat)
    monkeypatch.setattr(refine, "_native_available", lambda: False)
    assert torch.equal(refine.refine_at(view, lab, backend="torch", **kw), nearest)  # neither: nearest


def test_native_joint_upsample_errors(built):
    module = pamr_native.require()
    lab = np.zeros((4, 5), np.int32)
    small_img, big_img = np.zeros((3, 4, 5), np.float32), np.zeros((3, 8, 10), np.float32)
    for args, msg in (((lab[0], small_img, big_img, 0.1, 0), "labels"),
                      ((lab, small_img[:, :3], big_img, 0.1, 0), "small_img"),
                      ((lab, small_img, big_img[0], 0.1, 0), "big_img"),
                      ((lab, small_img, big_img, 0.0, 0), "sigma"),
                      ((lab, small_img, big_img, float("nan"), 0), "sigma")):
        with pytest.raises(ValueError, match=msg):
            module.joint_upsample(*args)


# ------------------------------------------------------------------------------------------------------------
# Concept assignment and the whole refinement
# ------------------------------------------------------------------------------------------------------------

def _agreement(a, b):
    return float((np.asarray(a) == np.asarray(b)).mean())


@pytest.mark.parametrize("grid, out, k", [((8, 8), (64, 64), 5), ((6, 10), (48, 80), 1), ((7, 5), (33, 50), 3),
                                          ((16, 16), (128, 128), 40), ((12, 20), (120, 200), 12),
                                          ((9, 9), (9, 9), 7)])
def test_native_concept_assign_matches_python(built, grid, out, k):
    feats, lab = _features(*grid, 64, k, seed=grid[0] * grid[1] + k)
    n = k + 2                                   # ids k, k + 1 have no grid cell: never assigned
    ref = refine.concept_assign(feats, lab, out, num_segments=n).numpy()
    got = pamr_native.concept_assign(feats.numpy(), lab.numpy(), n, out, num_threads=2)
    assert got.dtype == np.int32 and got.shape == out and got.max() < k
    # float32 rounding of the two small matrix products may flip a near-tie (see the module docstring)
    assert _agreement(got, ref) >= 0.999


@pytest.mark.parametrize("grid, size, k, iters, dil", [((8, 8), (64, 64), 6, 10, (1, 2, 4, 8)),
                                                      ((6, 10), (60, 100), 9, 10, (1, 2, 4, 8)),
                                                      ((10, 7), (50, 35), 20, 1, (1, 3)),
                                                      ((8, 8), (40, 40), 1, 10, (1, 2, 4, 8))])
def test_native_refine_is_the_engines_full_refinement(built, grid, size, k, iters, dil):
    """features + grid labels + image -> labels at the image's size, as methods.diffcut.pixel_labels ("full")."""
    feats, lab = _features(*grid, 32, k, seed=k)
    img = photo(size)
    assigned = refine.concept_assign(feats, lab, size, num_segments=k)
    ref = assigned if k == 1 else refine.refine_at(img, assigned, num_segments=k, iters=iters, dilations=dil,
                                                   backend="torch")
    got = pamr_native.refine(feats.numpy(), lab.numpy(), k, img.numpy(), iters=iters, dilations=dil)
    assert got.shape == size and _agreement(got, ref.numpy()) >= 0.999
    # the PAMR part alone on the same concept labels: identical
    if k > 1:
        alone = pamr_native.pamr(img.numpy(), assigned.numpy(), k, iters=iters, dilations=dil)
        assert np.array_equal(alone, ref.numpy())


@pytest.mark.parametrize("grid, size, work, k, iters, dil", [
    ((8, 8), (150, 200), (128, 128), 6, 10, (1, 2, 4, 8)),          # "eval": 128 x 128, back up to the photo
    ((6, 10), (90, 150), (160, 256), 9, 3, (1, 2, 4, 8, 12, 24)),    # "demo"-like: a larger working size
    ((10, 7), (120, 110), (100, 100), 20, 2, (1, 3)),
    ((8, 8), (130, 140), (120, 128), 1, 10, (1, 2, 4, 8))])         # one segment: no refinement
def test_native_refine_at_a_working_size_is_the_engines(built, grid, size, work, k, iters, dil):
    """work_size: the image resized to it (torch's bilinear arithmetic), PAMR and the median there, the labels back
    to the image's size by the joint bilateral vote: refine.refine_at(work_size=...) on the same concept labels."""
    from diffcut_engine import images

    feats, lab = _features(*grid, 32, k, seed=k + 1)
    img = photo(size)
    assigned = refine.concept_assign(feats, lab, size, num_segments=k)
    ref = assigned if k == 1 else refine.refine_at(img, assigned, work_size=work, num_segments=k, iters=iters,
                                                   dilations=dil, backend="torch")
    got = pamr_native.refine(feats.numpy(), lab.numpy(), k, img.numpy(), iters=iters, dilations=dil,
                             work_size=work)
    assert got.shape == size and _agreement(got, ref.numpy()) >= 0.999
    if k > 1:
        # the image at the working size is torch's bit for bit (output widths of 100 and more, as here)
        module = pamr_native.require()
        assert np.array_equal(module.resize_bilinear(img.numpy(), *work, 0), images.resize(img, work).numpy())
        # PAMR + median + return on the same concept labels: identical
        small = pamr_native.pamr(images.resize(img, work).numpy(), assigned.numpy(), k, iters=iters, dilations=dil)
        back = pamr_native.joint_upsample(small, images.resize(img, work).numpy(), img.numpy())
        assert np.array_equal(back, ref.numpy())
        assert not np.array_equal(got, pamr_native.refine(feats.numpy(), lab.numpy(), k, img.numpy(), iters=iters,
                                                          dilations=dil))  # the working size mattered


def test_native_refine_work_size_errors(built):
    feats, lab = _features(8, 8, 16, 3, seed=1)
    img = photo((40, 40)).numpy()
    for work in ((0, 64), (64, 0), (-1, 5), (40000, 40)):
        with pytest.raises(ValueError, match="working size"):
            pamr_native.refine(feats.numpy(), lab.numpy(), 3, img, work_size=work)


# ------------------------------------------------------------------------------------------------------------
# Selection and errors
# ------------------------------------------------------------------------------------------------------------

def test_backend_selection_and_config(built, monkeypatch):
    assert "native" in refine.PAMR_BACKENDS
    assert EngineConfig(refine_backend="native").refine_backend == "native"
    with pytest.raises(InputError, match="refine_backend"):
        EngineConfig(refine_backend="cpp")
    view, lab = photo((30, 40)), voronoi_labels((30, 40), 4, seed=1)
    with pytest.raises(InputError, match="backend"):
        refine.refine_at(view, lab, backend="c++")
    # auto on the CPU takes native where it is built (with or without numba), numba's path where it is not
    calls = []
    real = pamr_native.pamr
    monkeypatch.setattr(pamr_native, "pamr", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    want = refine.refine_at(view, lab, iters=3, backend="torch")
    assert torch.equal(refine.refine_at(view, lab, iters=3, backend="auto"), want) and calls
    calls.clear()
    monkeypatch.setattr(refine, "_fast_available", lambda device: False)
    assert torch.equal(refine.refine_at(view, lab, iters=3, backend="auto"), want) and calls
    calls.clear()
    monkeypatch.setattr(refine, "_native_available", lambda: False)
    monkeypatch.setattr(refine, "_fast_available", lambda device: device.type == "cpu")
    assert torch.equal(refine.refine_at(view, lab, iters=3, backend="auto"), want) and not calls


def test_native_not_built_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(pamr_native, "available", lambda: False)
    view, lab = photo((20, 20)), voronoi_labels((20, 20), 3, seed=2)
    with pytest.raises(BackendUnavailableError, match="native") as err:
        refine.refine_at(view, lab, backend="native")
    assert "\n" not in str(err.value) and "not built" in str(err.value)


def test_native_refine_errors(built):
    img = photo((20, 24)).numpy()
    lab = voronoi_labels((20, 24), 3, seed=0).numpy()
    feats, grid = (t.numpy() for t in _features(4, 5, 8, 3, seed=0))
    # int64 ids beyond int32 were wrapped silently by the cast to the core's int32 (2**32 became 0)
    with pytest.raises(InputError, match="fit int32"):
        pamr_native.median3x3(lab.astype(np.int64) + 2**32)
    with pytest.raises(InputError, match="fit int32"):
        pamr_native.pamr(img, lab.astype(np.int64) - 2**40, 3)
    with pytest.raises(ValueError, match="image"):
        pamr_native.pamr(img[:2], lab, 3)
    with pytest.raises(ValueError, match="labels"):
        pamr_native.pamr(img, lab[None], 3)
    with pytest.raises(ValueError, match="num_segments"):
        pamr_native.pamr(img, lab, 2)                                    # a label >= num_segments
    with pytest.raises(ValueError, match=">= 0"):
        pamr_native.pamr(img, lab - 1, 3)
    with pytest.raises(ValueError, match="dilations"):
        pamr_native.pamr(img, lab, 3, dilations=(1, 0))
    with pytest.raises(ValueError, match="dilations"):
        pamr_native.pamr(img, lab, 3, dilations=())
    with pytest.raises(ValueError, match="iters"):
        pamr_native.pamr(img, lab, 3, iters=-1)
    bad = img.copy()
    bad[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        pamr_native.pamr(bad, lab, 3)
    nan_feats = feats.copy()
    nan_feats[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pamr_native.refine(nan_feats, grid, 3, img)
    with pytest.raises(ValueError, match="NaN"):
        pamr_native.concept_assign(nan_feats, grid, 3, (8, 8))
    with pytest.raises(ValueError, match="grid"):
        pamr_native.refine(feats, grid[:3], 3, img)
    with pytest.raises(ValueError, match="positive"):
        pamr_native.concept_assign(feats, grid, 3, (0, 8))
    with pytest.raises(ValueError, match="labels"):
        pamr_native.median3x3(lab[0])
    with pytest.raises(InputError, match="non-finite"):
        refine.refine_at(torch.from_numpy(bad), torch.from_numpy(lab), backend="native")


@pytest.mark.parametrize("preset", ["full", "eval"])
def test_engine_pixel_labels_with_the_native_backend(built, preset):
    """methods.diffcut.pixel_labels (concept assignment, then the preset's refinement) with refine_backend="native"
    gives the torch backend's labels."""
    from diffcut_engine.methods.diffcut import pixel_labels

    feats, lab = _features(8, 8, 16, 5, seed=4)
    view = photo((64, 80))
    out = {}
    for backend in ("torch", "native"):
        timings = {}
        out[backend] = pixel_labels(feats, lab.numpy(), view, EngineConfig(refine=preset, refine_backend=backend),
                                    timings)
        assert out[backend].shape == (64, 80) and set(timings) == {"assign", "refine"}
    if preset == "full" or pamr_cpu.available():   # eval returns from 128x128 by numba's upsampling (or nearest)
        assert np.array_equal(out["torch"], out["native"])


def test_baseline_avx2_and_avx512_kernels_give_the_same_floats(built, tmp_path):
    """The hot loops run as AVX-512 code where the CPU has it, else AVX2 + FMA, else baseline code: the same IEEE
    operations, so the same affinities bit for bit and the same labels (DIFFCUT_NO_AVX512=1 stops at AVX2,
    DIFFCUT_NO_AVX2=1 forces the baseline; each in a subprocess). And the propagation with IEEE subnormals
    (DIFFCUT_NO_FLUSH_SUBNORMALS=1) gives the flushed one's labels."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = (
        "import numpy as np, sys; sys.path.insert(0, sys.argv[1])\n"
        "from diffcut_engine.kernels import pamr_native as pn\n"
        "d = np.load(sys.argv[2])\n"
        "np.savez(sys.argv[3], aff=pn.pamr_affinity(d['img'], (1, 2, 5)),\n"
        "         pamr=pn.pamr(d['img'], d['lab'], 7, dilations=(1, 2, 5)),\n"
        "         ca=pn.concept_assign(d['f'], d['g'], 6, (37, 45)))\n")
    feats, grid = _features(6, 7, 16, 6, seed=9)
    np.savez(tmp_path / "in.npz", img=photo((37, 45)).numpy(), lab=voronoi_labels((37, 45), 7, seed=5).numpy(),
             f=feats.numpy(), g=grid.numpy())
    results = []
    for avx, avx512, flush in (("0", "0", "0"), ("1", "0", "0"), ("0", "1", "0"), ("0", "0", "1")):
        out = tmp_path / f"out{avx}{avx512}{flush}.npz"
        run = subprocess.run([sys.executable, "-c", script, root, str(tmp_path / "in.npz"), str(out)],
                             env=dict(os.environ, DIFFCUT_NO_AVX2=avx, DIFFCUT_NO_AVX512=avx512,
                                      DIFFCUT_NO_FLUSH_SUBNORMALS=flush),
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        results.append(np.load(out))
    for key in ("aff", "pamr", "ca"):
        for other in results[1:]:
            assert np.array_equal(results[0][key], other[key]), key
