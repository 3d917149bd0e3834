"""Refinement presets (issue 19), the K-independent CPU path of PAMR and the edge-aware upsampling.

The fast path must give the labels of the torch reference (``refine._pamr_torch_at``: the official mask resize,
``pamr_soft``, argmax): identical labels, including where its top-C bound cannot decide and it falls back to the
exact dense propagation of the disputed labels. Small images only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffcut_engine import refine
from diffcut_engine.config import REFINE_PRESETS, EngineConfig
from diffcut_engine.errors import InputError
from diffcut_engine.kernels import pamr_cpu
from refine_inputs import photo, voronoi_labels

needs_numba = pytest.mark.skipif(not pamr_cpu.available(), reason="numba not installed (extra [fast])")


# ------------------------------------------------------------------------------------------------------------
# Config and presets
# ------------------------------------------------------------------------------------------------------------

def test_refine_bool_and_presets():
    assert EngineConfig(refine=True).refine == "demo"
    assert EngineConfig(refine=False).refine is False and EngineConfig(refine="none").refine is False
    assert EngineConfig(refine=False).refine_settings() is None
    cfg = EngineConfig(size=512, refine="demo")
    assert cfg.refine_settings()["work_size"] == (512, 512)
    assert EngineConfig(refine="full").refine_settings() == {"preset": "full", "work_size": None, "iters": 10,
                                                             "dilations": (1, 2, 4, 8)}
    ev = EngineConfig(refine="eval").refine_settings()
    assert ev["work_size"] == (128, 128) and ev["iters"] == 10
    over = EngineConfig(refine="demo", pamr_iters=3, pamr_dilations=[1, 2]).refine_settings()
    assert over["iters"] == 3 and over["dilations"] == (1, 2) and over["preset"] == "demo"
    # a changed preset does not carry the previous one's settings
    assert EngineConfig().replace(refine="full").refine_settings()["iters"] == REFINE_PRESETS["full"]["iters"]
    with pytest.raises(InputError, match="refine"):
        EngineConfig(refine="crf")


def test_cli_refine_flags():
    import argparse

    from diffcut_engine.cli.options import add_engine_options, config_from_args

    p = argparse.ArgumentParser()
    add_engine_options(p)
    assert config_from_args(p.parse_args([])).refine == "demo"
    assert config_from_args(p.parse_args(["--refine", "eval"])).refine == "eval"
    assert config_from_args(p.parse_args(["--no-refine"])).refine is False
    cfg = config_from_args(p.parse_args(["--refine", "full", "--pamr-iters", "4", "--refine-dilations", "1,3"]))
    assert cfg.refine_settings()["iters"] == 4 and cfg.refine_settings()["dilations"] == (1, 3)
    assert config_from_args(p.parse_args(["--refine-iters", "2"])).pamr_iters == 2


# ------------------------------------------------------------------------------------------------------------
# The official mask resize
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("src, dst", [((20, 30), (37, 23)), ((16, 16), (16, 16)), ((9, 40), (64, 8))])
def test_resize_masks_init_is_the_bilinear_one_hot(src, dst):
    lab = voronoi_labels(src, 7, seed=1)
    dense = F.interpolate(F.one_hot(lab, 7).movedim(-1, 0).float()[None], size=dst, mode="bilinear",
                          align_corners=True)[0]
    mine = refine.resize_masks_init(lab, dst, candidates=range(7))
    torch.testing.assert_close(mine, dense, rtol=0, atol=1e-6)
    lab4, val4 = refine.resize_masks_init(lab, dst)
    rebuilt = torch.zeros_like(dense)
    for j in range(4):
        ok = lab4[..., j] >= 0
        rebuilt.view(7, -1)[lab4[..., j][ok].long(), ok.flatten().nonzero()[:, 0]] += val4[..., j][ok]
    torch.testing.assert_close(rebuilt, dense, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# The fast path gives the reference's labels
# ------------------------------------------------------------------------------------------------------------

@needs_numba
def test_fast_affinity_and_dense_step_match_the_reference():
    img = photo((40, 52))
    dil = (1, 3, 8)
    aff = pamr_cpu.affinity(img.numpy(), dil)
    ref = refine.pamr_affinity(img, dil)
    np.testing.assert_allclose(aff, ref.numpy(), rtol=1e-4, atol=1e-6)
    masks = F.one_hot(voronoi_labels((40, 52), 5, 2), 5).movedim(-1, 0).float()
    out = pamr_cpu.dense_step(masks.numpy().copy(), aff, pamr_cpu.offsets(dil), np.empty((5, 40, 52), np.float32))
    ref_step = refine.pamr_soft(img, masks, iters=1, dilations=dil)
    np.testing.assert_allclose(out, ref_step.numpy(), rtol=1e-4, atol=1e-6)


@needs_numba
@pytest.mark.parametrize("size, lsize, k, iters, dil, cands", [
    ((48, 56), None, 6, 10, (1, 2, 4, 8), 6),
    ((48, 56), None, 40, 10, (1, 2, 4, 8), 2),    # small C: the fallback decides many pixels; dense: 2 chunks
    ((40, 40), (55, 31), 12, 30, (1, 2, 4, 8, 12, 24, 32, 64), 6),  # demo dilations, masks resized
    ((33, 47), (33, 47), 4, 0, (1, 2), 4),                            # no iteration
    ((23, 71), (30, 18), 30, 10, (1, 2, 4, 8), 4),                    # non-square, masks resized, many labels
    ((64, 24), None, 60, 3, (1, 3, 40), 4),                           # a dilation wider than the image
])
def test_fast_pamr_labels_equal_the_reference(size, lsize, k, iters, dil, cands):
    img = photo(size)
    lab = voronoi_labels(lsize or size, k, seed=k)
    ref = refine._pamr_torch_at(img, lab, k, iters, dil)
    for method in ("auto", "box", "sparse", "dense"):
        fast, stats = refine.pamr_fast(img, lab, num_segments=k, iters=iters, dilations=dil, candidates=cands,
                                       method=method, return_stats=True)
        assert fast.dtype == torch.int64 and fast.shape == ref.shape
        assert torch.equal(fast, ref), f"{method}: {int((fast != ref).sum())} pixels differ; {stats}"
        if cands == 2 and method == "sparse":
            assert stats["uncertain"] > 0   # the exact fallback was exercised


@needs_numba
@pytest.mark.parametrize("preset", sorted(REFINE_PRESETS))
@pytest.mark.parametrize("size, lsize, k", [((36, 52), None, 5), ((41, 29), (64, 80), 70), ((30, 30), (7, 9), 12)])
def test_box_path_equals_the_reference_for_every_preset_k_and_chunking(preset, size, lsize, k):
    """The support-box path, one label per chunk and all labels in one chunk, on borders and absent ids."""
    p = REFINE_PRESETS[preset]
    iters, dil = p["iters"], p["dilations"]
    img = photo(size)
    lab = voronoi_labels(lsize or size, k, seed=k + 7)
    lab[0, :] = k - 1                          # a label along the top border
    n = k + 3                                  # ids k .. k+2 are absent: their masks stay zero
    ref = refine._pamr_torch_at(img, lab, n, iters, dil)
    aff = pamr_cpu.affinity(img.numpy(), dil)
    offs = pamr_cpu.offsets(dil)
    corners = None
    if tuple(lab.shape) != size:
        corners = tuple(np.ascontiguousarray(v.numpy()) for ax in refine._bilinear_corners(tuple(lab.shape), size)
                        for v in ax)
    for budget, major in ((1, None), (1 << 25, False), (1 << 25, True)):
        pamr_cpu.FORCE_LABEL_MAJOR = major        # both loop orders of the step
        try:
            got = pamr_cpu.box_argmax(lab.numpy(), size, n, aff, offs, iters, corners, budget=budget)
        finally:
            pamr_cpu.FORCE_LABEL_MAJOR = None
        assert np.array_equal(got, ref.numpy()), f"budget {budget}: {int((got != ref.numpy()).sum())} differ"


@needs_numba
def test_refine_at_backends_agree_and_return_the_output_size():
    view = photo((70, 90))
    lab = voronoi_labels((70, 90), 8, seed=3)
    for work in (None, (48, 64)):
        a = refine.refine_at(view, lab, work_size=work, iters=5, dilations=(1, 2, 4), backend="torch")
        b = refine.refine_at(view, lab, work_size=work, iters=5, dilations=(1, 2, 4), backend="fast")
        assert a.shape == (70, 90) and torch.equal(a, b)
    with pytest.raises(InputError, match="backend"):
        refine.refine_at(view, lab, backend="cuda")


@needs_numba
def test_joint_upsampling_follows_the_image_edge():
    # A vertical colour edge at column 37 of 96; labels at 24 px wide cannot place it exactly (37 / 4 = 9.25).
    h, w = 32, 96
    big = torch.zeros(3, h, w)
    big[:, :, 37:] = 1.0
    small = F.interpolate(big[None], size=(8, 24), mode="bilinear", align_corners=False)[0]
    small_lab = (torch.arange(24)[None].expand(8, 24) >= 9).long()      # nearest puts the boundary at col 36
    truth = (torch.arange(w)[None].expand(h, w) >= 37).long()
    joint = torch.from_numpy(pamr_cpu.joint_upsample(small_lab.numpy(), small.numpy(), big.numpy()))
    nearest = F.interpolate(small_lab[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    assert int((joint != truth).sum()) < int((nearest != truth).sum())
    assert int((joint != truth).sum()) == 0


@needs_numba
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (17, 29), (40, 33)])
def test_numba_median_equals_the_torch_median(shape):
    g = torch.Generator().manual_seed(sum(shape))
    lab = torch.randint(0, 6, shape, generator=g)
    lab[: shape[0] // 2] = torch.randint(0, 2, (shape[0] // 2, shape[1]), generator=g)   # many ties
    assert np.array_equal(pamr_cpu.median3x3(lab.numpy()), refine.median3x3(lab).numpy())


@needs_numba
@pytest.mark.parametrize("label_major", [False, True])
def test_box_step_gives_the_dense_step_floats_bit_for_bit(label_major):
    """One step on a support box equals the dense step: the same floats inside, exact zeros outside."""
    h, w, dil = 37, 53, (1, 3, 5)
    img = photo((h, w)).numpy()
    aff = pamr_cpu.affinity(img, dil)
    offs = pamr_cpu.offsets(dil)
    g = np.random.default_rng(3)
    supports = [(0, 9, 40, 53), (12, 20, 5, 14), (30, 37, 0, 6)]     # [r0, r1, c0, c1): two touch borders
    masks = np.zeros((len(supports), h, w), np.float32)
    for j, (r0, r1, c0, c1) in enumerate(supports):
        masks[j, r0:r1, c0:c1] = g.random((r1 - r0, c1 - c0), dtype=np.float32)
    dense = pamr_cpu.dense_step(masks, aff, offs, np.empty_like(masks))
    d = max(dil)

    def grow(b, r):
        return np.array([[max(r0 - r, 0), min(r1 + r, h), max(c0 - r, 0), min(c1 + r, w)] for r0, r1, c0, c1 in b],
                        np.int64)

    box = grow(supports, d)
    sbox = grow(supports, 2 * d)
    area = (sbox[:, 1] - sbox[:, 0]) * (sbox[:, 3] - sbox[:, 2])
    off = np.concatenate([[0], np.cumsum(area)[:-1]]).astype(np.int64)
    src = np.concatenate([masks[j, r0:r1, c0:c1].ravel() for j, (r0, r1, c0, c1) in enumerate(sbox)])
    dst = pamr_cpu._box_step(src, np.zeros_like(src), off, sbox, box, aff, offs, label_major)
    for j, (r0, r1, c0, c1) in enumerate(sbox):
        got = dst[off[j]:off[j] + area[j]].reshape(r1 - r0, c1 - c0)
        assert np.array_equal(got, dense[j, r0:r1, c0:c1])              # bit for bit, zeros outside the box
        outside = np.ones((h, w), bool)
        outside[r0:r1, c0:c1] = False
        assert not dense[j][outside].any()


@pytest.mark.skipif(not pamr_cpu.available(), reason="numba not installed (extra [fast])")
def test_cpu_kernels_take_iterators_and_refuse_out_of_range_labels():
    """affinity() read its dilations twice (an iterator gave NaN); box_argmax indexed by label without bounds
    checks (a label >= num_labels wrote out of bounds and returned silently)."""
    img = photo((12, 14)).numpy()
    assert np.array_equal(pamr_cpu.affinity(img, iter((1, 2))), pamr_cpu.affinity(img, (1, 2)))
    aff = pamr_cpu.affinity(img, (1,))
    offs = pamr_cpu.offsets((1,))
    lab = np.zeros((12, 14), np.int64)
    lab[3, 4] = 5
    with pytest.raises(InputError, match=r"\[0, num_labels=2\)"):
        pamr_cpu.box_argmax(lab, (12, 14), 2, aff, offs, 1)
    with pytest.raises(InputError, match="num_labels"):
        pamr_cpu.box_argmax(lab - 6, (12, 14), 2, aff, offs, 1)


def _backends():
    from diffcut_engine.kernels import pamr_native

    return ["torch", "fast"] + (["native"] if pamr_native.available() else [])


def test_refine_at_dilations_beyond_the_image_are_cheap_and_exact():
    """A dilation of 32768 (the bound) made the torch reference pad a 10 x 10 image to 65546 x 65546 (51 GB); taps
    beyond the image's size clamp to its border whatever the dilation, so every backend gives the labels of the
    dilation capped at the image's size."""
    img = photo((10, 12))
    lab = voronoi_labels((10, 12), 3, 2)
    want = refine.refine_at(img, lab, iters=3, dilations=(1, 12), backend="torch")
    for backend in _backends():
        got = refine.refine_at(img, lab, iters=3, dilations=(1, 32768), backend=backend)
        assert torch.equal(got, want), backend
    soft = refine.pamr_soft(img, F.one_hot(lab, 3).movedim(-1, 0).float(), iters=2, dilations=(2, 32768))
    assert torch.equal(soft, refine.pamr_soft(img, F.one_hot(lab, 3).movedim(-1, 0).float(), iters=2,
                                              dilations=(2, 12)))


def test_refine_at_label_ids_with_gaps_cost_what_the_labels_present_cost():
    """Ids {0, 3, 100000}: the torch path built 100001 masks (16 s, 1.8 GB for a 20 x 30 image) and an id of
    2**31 - 1 failed with raw errors; ids are renumbered in their order (exact: ties, the median and the edge-aware
    return follow the ids' order), so every backend gives the labels of the compact ids, mapped back."""
    img = photo((20, 30))
    base = voronoi_labels((20, 30), 3, 5)
    compact = refine.refine_at(img, base, iters=4, work_size=(16, 24), backend="torch")
    for ids in ((0, 3, 100000), (7, 8, 2**31 - 1)):
        lut = torch.tensor(ids)
        for backend in _backends():
            got = refine.refine_at(img, lut[base], iters=4, work_size=(16, 24), backend=backend)
            assert torch.equal(got, lut[compact]), (ids, backend)
        assert torch.equal(refine.pamr(img, lut[base], iters=2), lut[refine.pamr(img, base, iters=2)])


def test_refine_options_take_numpy_integers_and_name_work_size():
    """EngineConfig took numpy integers and the functions refused them; a bad work_size was reported as out_size,
    and ("4", "4") was taken."""
    img, lab = photo((12, 12)), voronoi_labels((12, 12), 3, 1)
    want = refine.refine_at(img, lab, iters=3, dilations=(1, 2), num_segments=3)
    got = refine.refine_at(img, lab, iters=np.int64(3), dilations=np.array([1, 2]), num_segments=np.int32(3))
    assert torch.equal(got, want)
    assert torch.equal(refine.pamr(img, lab, iters=np.int16(3), dilations=(np.int64(1), 2)),
                       refine.pamr(img, lab, iters=3, dilations=(1, 2)))
    for bad in (("4", "4"), (0, 4), (4.5, 4), (4,), True):
        with pytest.raises(InputError, match="^work_size must be"):
            refine.refine_at(img, lab, work_size=bad)
    for bad in (np.bool_(True), 2.0, "3"):
        with pytest.raises(InputError, match="iters must be an int"):
            refine.refine_at(img, lab, iters=bad)


def test_fast_backend_leaves_torchs_thread_count_alone():
    """numba's parallel kernels reset the OpenMP thread count torch shares: one refine_at(backend="fast") after
    torch.set_num_threads(1) left torch on 2 threads, and torch's bilinear resize differs in the last bit between
    1 and 2 threads, so refine_at's labels depended on what ran before in the process."""
    before = torch.get_num_threads()
    img = torch.rand(3, 20, 385, generator=torch.Generator().manual_seed(0))
    lab = torch.zeros(31, 257, dtype=torch.long)
    lab[:, 128:] = 1
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            refine.refine_at(img, lab, num_segments=2, iters=1, backend="fast")
            assert torch.get_num_threads() == threads
            refine.pamr_fast(img, lab, num_segments=2, iters=1)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
