"""Tests of diffcut_engine.refine: concept assignment, PAMR, median filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter

from diffcut_engine.errors import InputError
from diffcut_engine.refine import (
    cluster_centroids,
    concept_assign,
    median3x3,
    pamr,
    pamr_affinity,
    pamr_soft,
    refine,
    refine_at,
)


def _normalised_features(h, w, c, k, seed=0, dtype=torch.float32):
    """Random unit features around k random directions, plus grid labels that use every id 0..k-1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (h, w), generator=g)
    labels.view(-1)[:k] = torch.arange(k)
    centres = torch.randn(k, c, generator=g, dtype=dtype)
    feats = centres[labels] + 0.8 * torch.randn(h, w, c, generator=g, dtype=dtype)
    return F.normalize(feats, dim=-1), labels


# ------------------------------------------------------------------------------------------------------------
# Concept assignment
# ------------------------------------------------------------------------------------------------------------

def _literal_centroids(features, labels, k):
    out = torch.zeros(k, features.shape[-1], dtype=features.dtype)
    for i in range(k):
        sel = features[labels == i]
        out[i] = sel.sum(0) / (sel.shape[0] + 1e-8)
    return out


def _literal_scores(features, centroids, out_size):
    """The official method: upsample all C normalised channels, then dot with the concepts."""
    up = torch.nn.Upsample(size=out_size, mode="bilinear")(features.permute(2, 0, 1)[None])[0]  # (C, H, W)
    return torch.einsum("chw,kc->khw", up, centroids)


def test_centroids_equal_literal_mean():
    feats, labels = _normalised_features(8, 8, 64, 5, seed=1)
    got = cluster_centroids(feats, labels)
    assert got.shape == (5, 64)
    torch.testing.assert_close(got, _literal_centroids(feats, labels, 5), rtol=1e-5, atol=1e-6)
    # Not re-normalised: a mean of several non-parallel unit vectors is shorter than 1.
    assert bool((got.norm(dim=1) < 0.999).all())


def test_centroids_empty_cluster_is_zero():
    feats, labels = _normalised_features(6, 6, 16, 3, seed=2)
    got = cluster_centroids(feats, labels, num_segments=5)
    assert got.shape == (5, 16)
    assert bool((got[3:] == 0).all())


@pytest.mark.parametrize("grid, out", [((8, 8), (64, 64)), ((6, 10), (48, 80)), ((7, 5), (33, 50))])
def test_concept_assign_equals_literal_upsampling(grid, out):
    h, w = grid
    k = 6
    feats, labels = _normalised_features(h, w, 64, k, seed=h * w)
    centroids = _literal_centroids(feats, labels, k)
    literal = _literal_scores(feats, centroids, out)                             # (K, H, W)

    # Score maps: the module's way (grid scores, then upsample) against the literal way.
    ours = F.interpolate(torch.einsum("hwc,kc->khw", feats, cluster_centroids(feats, labels))[None],
                         size=out, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(ours, literal, rtol=1e-5, atol=1e-5)

    got = concept_assign(feats, labels, out)
    assert got.shape == out and got.dtype == torch.int64
    expected = literal.argmax(0)
    top2 = literal.topk(2, dim=0).values
    near_tie = (top2[0] - top2[1]) < 1e-5
    assert int(near_tie.sum()) == 0
    assert torch.equal(got[~near_tie], expected[~near_tie])
    # Non-trivial: several clusters survive, and the result is not the nearest-upsampled grid map.
    assert len(torch.unique(got)) >= 3
    nearest = F.interpolate(labels[None, None].float(), size=out, mode="nearest")[0, 0].long()
    assert not torch.equal(got, nearest)


def test_concept_assign_float64_matches_literal_exactly_in_labels():
    feats, labels = _normalised_features(8, 8, 64, 4, seed=5, dtype=torch.float64)
    literal = _literal_scores(feats, _literal_centroids(feats, labels, 4), (64, 64))
    assert torch.equal(concept_assign(feats, labels, (64, 64)), literal.argmax(0))


def test_concept_assign_batched_equals_single():
    fa, la = _normalised_features(6, 10, 32, 4, seed=11)
    fb, lb = _normalised_features(6, 10, 32, 4, seed=12)
    batched = concept_assign(torch.stack([fa, fb]), torch.stack([la, lb]), (48, 80))
    assert batched.shape == (2, 48, 80)
    assert torch.equal(batched[0], concept_assign(fa, la, (48, 80)))
    assert torch.equal(batched[1], concept_assign(fb, lb, (48, 80)))


def test_concept_assign_never_picks_absent_ids():
    # Cell (0, 0) scores negatively against both real concepts, so an absent id (zero concept, score 0) would
    # win there if it were allowed to compete.
    labels = torch.zeros(4, 4, dtype=torch.long)
    labels[:, 2:] = 1
    feats = torch.zeros(4, 4, 2)
    feats[..., 0] = 1.0
    feats[:, 2:] = F.normalize(torch.tensor([0.3, 1.0]), dim=0)
    feats[0, 0] = torch.tensor([-0.6, -0.8])
    scores = torch.einsum("hwc,kc->khw", feats, cluster_centroids(feats, labels))
    assert float(scores[:, 0, 0].max()) < 0
    got = concept_assign(feats, labels, (16, 16), num_segments=6)
    assert int(got.max()) <= 1
    assert torch.equal(got, concept_assign(feats, labels, (16, 16)))


def test_concept_assign_keeps_ids():
    feats, labels = _normalised_features(8, 8, 32, 4, seed=4)
    perm = torch.tensor([2, 0, 3, 1])
    expected = perm[concept_assign(feats, labels, (32, 32))]
    assert torch.equal(concept_assign(feats, perm[labels], (32, 32)), expected)


# ------------------------------------------------------------------------------------------------------------
# PAMR
# ------------------------------------------------------------------------------------------------------------

def _gather(x, dy, dx):
    """x[..., clamp(i + dy), clamp(j + dx)] by explicit index clamping (replicate borders)."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h) + dy).clamp(0, h - 1)
    cols = (torch.arange(w) + dx).clamp(0, w - 1)
    return x[..., rows, :][..., :, cols]


def _literal_pamr(image, masks, iters, dilations):
    """Plain PAMR: stack all neighbours, std over the 3x3 taps of all dilations, softmax, iterate."""
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    taps = torch.stack([_gather(image, dy * d, dx * d) for d in dilations for dy, dx in offsets], dim=1)
    std = taps.std(dim=1, keepdim=True)                                              # (3, 1, H, W), unbiased
    nbrs = [(dy * d, dx * d) for d in dilations for dy, dx in offsets if (dy, dx) != (0, 0)]
    diffs = torch.stack([(image - _gather(image, oy, ox)).abs() for oy, ox in nbrs], dim=1)  # (3, P, H, W)
    aff = torch.softmax((-diffs / (1e-8 + 0.1 * std)).mean(0), dim=0)                # (P, H, W)
    for _ in range(iters):
        stacked = torch.stack([_gather(masks, oy, ox) for oy, ox in nbrs], dim=1)     # (K, P, H, W)
        masks = (stacked * aff[None]).sum(1)
    return masks


@pytest.mark.parametrize("dilations, iters", [((1, 2, 4, 8), 10), ((1, 3), 4), ((2, 5, 30), 3)])
def test_pamr_soft_equals_literal(dilations, iters):
    g = torch.Generator().manual_seed(7)
    image = torch.rand(3, 20, 24, generator=g, dtype=torch.float64)
    image[:, :, 12:] += 0.5                                                          # some structure
    labels = torch.randint(0, 3, (20, 24), generator=g)
    masks = F.one_hot(labels, 3).permute(2, 0, 1).double()
    got = pamr_soft(image, masks, iters=iters, dilations=dilations)
    want = _literal_pamr(image, masks, iters, dilations)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.sum(0), torch.ones(20, 24, dtype=torch.float64))
    # float32 agrees to float32 rounding.
    got32 = pamr_soft(image.float(), masks.float(), iters=iters, dilations=dilations)
    torch.testing.assert_close(got32, want.float(), rtol=1e-4, atol=1e-5)
    assert torch.equal(pamr(image, labels, iters=iters, dilations=dilations), want.argmax(0))


def test_pamr_affinity_rows_sum_to_one_and_prefer_similar_colours():
    image = torch.zeros(3, 16, 16)
    image[:, :, 8:] = 1.0
    aff = pamr_affinity(image, (1, 2))
    assert aff.shape == (16, 16, 16)                                                  # 8 * 2 neighbours
    torch.testing.assert_close(aff.sum(0), torch.ones(16, 16))
    # Pixel (5, 7) sits left of the edge: its right neighbours (offsets 4 and 7 at dilation 1) are across it.
    assert float(aff[4, 5, 7]) < 1e-3 and float(aff[3, 5, 7]) > 0.05


def test_pamr_batched_equals_single():
    g = torch.Generator().manual_seed(9)
    images = torch.rand(2, 3, 16, 18, generator=g)
    labels = torch.randint(0, 4, (2, 16, 18), generator=g)
    batched = pamr(images, labels, num_segments=4, iters=3)
    for i in range(2):
        assert torch.equal(batched[i], pamr(images[i], labels[i], num_segments=4, iters=3))


def _blocky(mask, block):
    """Coarse labels as from a low-res grid: majority vote per block, then nearest upsampling."""
    h, w = mask.shape
    coarse = mask.float().reshape(h // block, block, w // block, block).mean((1, 3)) > 0.5
    return coarse.repeat_interleave(block, 0).repeat_interleave(block, 1).long()


def _image_from_mask(mask, seed):
    g = torch.Generator().manual_seed(seed)
    dark = torch.tensor([0.15, 0.20, 0.25])[:, None, None]
    bright = torch.tensor([0.85, 0.75, 0.70])[:, None, None]
    image = torch.where(mask.bool()[None], bright, dark)
    return (image + 0.03 * torch.randn(image.shape, generator=g)).clamp(0, 1)


def test_pamr_moves_displaced_vertical_boundary_onto_edge():
    truth = torch.zeros(64, 64, dtype=torch.long)
    truth[:, 29:] = 1                                                                 # true edge at column 29
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[:, 32:] = 1  # 8x8-grid boundary, 3 px off
    image = _image_from_mask(truth, seed=0)
    before = float((labels == truth).float().mean())
    after = float((refine(image, labels) == truth).float().mean())
    assert before < 0.96
    assert after > 0.99 and after > before + 0.03
    assert float((pamr(image, labels) == truth).float().mean()) > 0.99


def test_pamr_moves_blocky_circle_onto_edge():
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    truth = (((yy - 45.3) ** 2 + (xx - 50.6) ** 2) < 27.5 ** 2).long()
    labels = _blocky(truth, 12)  # 8x8 grid of 12 px blocks
    image = _image_from_mask(truth, seed=1)
    before = float((labels == truth).float().mean())
    after = float((refine(image, labels) == truth).float().mean())
    assert before < 0.96
    assert after > 0.99 and after > before + 0.03


def test_pamr_moves_blocky_diagonal_onto_edge():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    truth = (xx > 0.7 * yy + 13.0).long()
    labels = _blocky(truth, 8)
    image = _image_from_mask(truth, seed=2)
    before = float((labels == truth).float().mean())
    after = float((refine(image, labels) == truth).float().mean())
    assert before < 0.97
    assert after > 0.99 and after > before + 0.02


def test_pamr_keeps_ids_and_ignores_absent_ids():
    truth = torch.zeros(32, 32, dtype=torch.long)
    truth[:, 14:] = 1
    image = _image_from_mask(truth, seed=3)
    labels = torch.where(torch.arange(32)[None, :].expand(32, 32) >= 16, 5, 2)
    out = pamr(image, labels, iters=5)
    assert set(torch.unique(out).tolist()) == {2, 5}
    remapped = pamr(image, (labels == 5).long(), iters=5)
    assert torch.equal(out, torch.where(remapped == 1, 5, 2))


def test_pamr_zero_iters_is_identity():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 4, (12, 12), generator=g)
    assert torch.equal(pamr(torch.rand(3, 12, 12, generator=g), labels, iters=0), labels)


# ------------------------------------------------------------------------------------------------------------
# Median filter
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, k, seed", [((17, 23), 5, 0), ((1, 9), 3, 1), ((8, 1), 3, 2), ((2, 2), 4, 3),
                                            ((40, 33), 2, 4), ((31, 29), 60, 5)])
def test_median3x3_equals_scipy(shape, k, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=shape)
    got = median3x3(torch.from_numpy(labels))
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), median_filter(labels, size=3))


def test_median3x3_batched_and_smooth_maps():
    rng = np.random.default_rng(6)
    coarse = rng.integers(0, 6, size=(2, 6, 7))
    labels = np.repeat(np.repeat(coarse, 5, axis=1), 5, axis=2)
    labels[rng.random(labels.shape) < 0.1] = 9                                       # salt noise
    got = median3x3(torch.from_numpy(labels)).numpy()
    for i in range(2):
        np.testing.assert_array_equal(got[i], median_filter(labels[i], size=3))
    # The official eval filters a (1, H, W) array: same result.
    np.testing.assert_array_equal(got[:1], median_filter(labels[:1], size=3))


# ------------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------------

def test_nan_features_raise():
    feats, labels = _normalised_features(4, 4, 8, 2)
    feats[1, 2, 3] = float("nan")
    with pytest.raises(InputError, match="features"):
        concept_assign(feats, labels, (8, 8))
    with pytest.raises(InputError, match="features"):
        cluster_centroids(feats, labels)


def test_label_shape_mismatch_raises():
    feats, labels = _normalised_features(4, 4, 8, 2)
    with pytest.raises(InputError, match="grid_labels"):
        concept_assign(feats, labels[:3], (8, 8))
    with pytest.raises(InputError, match="labels"):
        pamr(torch.rand(3, 8, 8), torch.zeros(8, 9, dtype=torch.long))
    with pytest.raises(InputError, match="image"):
        pamr(torch.rand(4, 8, 8), torch.zeros(8, 8, dtype=torch.long))


def test_labels_out_of_range_raise():
    feats, labels = _normalised_features(4, 4, 8, 3)
    with pytest.raises(InputError, match="num_segments=2"):
        concept_assign(feats, labels, (8, 8), num_segments=2)
    with pytest.raises(InputError, match="-1"):
        concept_assign(feats, labels - 1, (8, 8))
    bad = torch.zeros(8, 8, dtype=torch.long)
    bad[0, 0] = 4
    with pytest.raises(InputError, match="num_segments=3"):
        refine(torch.rand(3, 8, 8), bad, num_segments=3)


def test_other_bad_inputs_raise():
    feats, labels = _normalised_features(4, 4, 8, 2)
    with pytest.raises(InputError, match="integer"):
        concept_assign(feats, labels.float(), (8, 8))
    with pytest.raises(InputError, match="out_size"):
        concept_assign(feats, labels, (8, 0))
    image = torch.rand(3, 8, 8)
    image[0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="image"):
        pamr(image, torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(InputError, match="dilations"):
        pamr(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), dilations=(1, 0))
    with pytest.raises(InputError, match="iters"):
        pamr(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), iters=-1)
    # beyond the bounds the C++ core takes (2**31 reached its binding: a raw TypeError; torch: a storage overflow)
    for backend in ("torch", "auto"):
        with pytest.raises(InputError, match=r"iters must be an int in \[0, 10000\]"):
            refine_at(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), iters=2**31, backend=backend)
        with pytest.raises(InputError, match=r"dilations .* ints in \[1, 32768\]"):
            refine_at(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), dilations=(1, 2**31),
                      backend=backend)
    with pytest.raises(InputError, match="labels"):
        median3x3(torch.zeros(8, 8))


# ------------------------------------------------------------------------------------------------------------
# Float semantics of the reference, and inputs the fast paths must treat as the reference does
# ------------------------------------------------------------------------------------------------------------

def test_pamr_soft_rounds_each_product_and_each_sum():
    """The reference's floats are numpy's float32 product-then-sum, tap by tap, bit for bit: not a fused
    multiply-add (torch's vectorised ``addcmul_`` fuses on AVX2/AVX-512 CPUs and not elsewhere)."""
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 13, 17, generator=g)
    image[:, 6:] *= 0.4
    masks = torch.rand(4, 13, 17, generator=g)
    dil, iters = (1, 3), 3
    aff = pamr_affinity(image, dil).numpy()
    m = masks.numpy().copy()
    rows, cols = np.arange(13), np.arange(17)
    for _ in range(iters):
        new = np.zeros_like(m)
        p = 0
        for d in dil:
            for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
                r, c = np.clip(rows + dy * d, 0, 12), np.clip(cols + dx * d, 0, 16)
                prod = m[:, r][:, :, c] * aff[p]                 # float32 products, each rounded
                new = new + prod                                 # then float32 sums, each rounded
                p += 1
        m = new
    got = pamr_soft(image, masks, iters=iters, dilations=dil).numpy()
    assert got.dtype == np.float32 and np.array_equal(got, m)


def _near_tie_case():
    """A checkerboard image and 2x2 label blocks: many pixels whose leading masks tie up to rounding."""
    h = w = 16
    view = (torch.arange(h)[:, None] + torch.arange(w)[None]).remainder(2).float().expand(3, h, w).contiguous()
    labels = (torch.arange(h)[:, None] // 2 * 3 + torch.arange(w)[None] // 2).remainder(4)
    return view, labels


@pytest.mark.parametrize("work, iters, dil", [((9, 9), 1, (1,)), ((16, 16), 2, (1, 2)), ((11, 7), 3, (1, 2, 4))])
def test_fast_paths_equal_the_reference_on_near_ties(work, iters, dil):
    from diffcut_engine.kernels import pamr_cpu, pamr_native
    from diffcut_engine.refine import refine_at

    view, labels = _near_tie_case()
    ref = refine_at(view, labels, work_size=work, iters=iters, dilations=dil, backend="torch")
    backends = [b for b, ok in (("fast", pamr_cpu.available()), ("native", pamr_native.available())) if ok]
    if not backends:
        pytest.skip("neither numba nor the C++ core is available")
    for backend in backends:
        got = refine_at(view, labels, work_size=work, iters=iters, dilations=dil, backend=backend)
        assert torch.equal(got, ref), (backend, int((got != ref).sum()))


def test_refine_at_computes_in_float32_on_every_backend():
    from diffcut_engine.kernels import pamr_cpu, pamr_native
    from diffcut_engine.refine import refine_at

    g = np.random.default_rng(52)
    labels = torch.from_numpy(g.integers(0, 50, (30, 30)))
    view = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(52)).double()  # 28 pixels differ in float64
    kw = dict(work_size=(17, 23), iters=1, dilations=(1,))
    want = refine_at(view.float(), labels, backend="torch", **kw)
    assert torch.equal(refine_at(view, labels, backend="torch", **kw), want)
    for backend, ok in (("fast", pamr_cpu.available()), ("native", pamr_native.available())):
        if ok:
            assert torch.equal(refine_at(view, labels, backend=backend, **kw), want), backend


def test_more_bad_inputs_raise_input_errors():
    from diffcut_engine.refine import pamr_fast, refine_at

    image, labels = torch.rand(3, 16, 20), torch.randint(0, 3, (16, 20))
    for backend in ("torch", "auto"):
        with pytest.raises(InputError, match="one image"):
            refine_at(torch.rand(1, 3, 16, 20), labels, backend=backend)
    with pytest.raises(InputError, match="empty"):
        refine_at(image, labels[:0])
    if _numba_available():
        with pytest.raises(InputError, match="empty"):
            pamr_fast(image, labels[:0])
    with pytest.raises(InputError, match="dilations"):
        pamr_affinity(image, ())
    with pytest.raises(InputError, match="dilations"):
        pamr_affinity(image, (-1,))
    with pytest.raises(InputError, match="image"):
        pamr_affinity(image[0])
    with pytest.raises(InputError, match="non-finite"):
        pamr_affinity(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(InputError, match="K >= 1"):
        pamr_soft(image, torch.zeros(0, 16, 20))


def _numba_available() -> bool:
    from diffcut_engine.kernels import pamr_cpu
    return pamr_cpu.available()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int16])
def test_median3x3_takes_every_integer_dtype(dtype):
    labels = np.random.default_rng(1).integers(0, 9, (7, 8)).astype(dtype)
    got = median3x3(labels)
    assert got.dtype == torch.from_numpy(labels).dtype
    assert np.array_equal(got.numpy().astype(np.int64), median_filter(labels.astype(np.int64), size=3))
