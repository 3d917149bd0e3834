"""The benchmark baseline ``benchmarks/reference_official.py`` computes what the official code computes.

Its painting recursion must give the labels of the literal numpy port of the official code, and its index-set
variant those of the engine's ``compat="clean"``; otherwise the speed ratios of ``bench_graph.py`` would compare
different work.
"""

import os
import sys

import numpy as np
import pytest

from diffcut_engine.graph import recursive_ncut

from graph_reference import literal_official, official_affinity
from planted import planted_features, planted_regions

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from reference_official import official_recursive_ncut  # noqa: E402

CASES = [(16, 16, "quadrants", 0), (12, 20, "stripes", 2)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}")
def planted(request):
    h, w, kind, seed = request.param
    return planted_regions(h, w, kind), planted_features(planted_regions(h, w, kind), seed=seed)


def test_painting_recursion_equals_literal_official(planted):
    regions, feats = planted
    labels, info = official_recursive_ncut(feats, alpha=10.0, tau=0.5, return_info=True)
    assert labels.shape == regions.shape and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, literal_official(feats, alpha=10.0, tau=0.5))
    # One full eigendecomposition per visited subgraph (2K - 1) and one host sync per threshold.
    assert info["segments"] == regions.max() + 1
    assert info["solves"] == 2 * info["segments"] - 1
    assert info["host_syncs"] == 100 * info["solves"]


def test_index_sets_equal_engine_clean(planted):
    regions, feats = planted
    labels = official_recursive_ncut(feats, alpha=10.0, tau=0.5, index_sets=True)
    np.testing.assert_array_equal(labels, recursive_ncut(feats, alpha=10.0, tau=0.5, compat="clean"))
    # The two variants differ only on the nodes the zero-row rule drops.
    painted = official_recursive_ncut(feats, alpha=10.0, tau=0.5)
    zero_rows = (official_affinity(feats, 10.0) == 0).any(axis=1).reshape(regions.shape)
    assert np.all(zero_rows[painted != labels])


def test_accepts_torch_input_and_single_segment():
    import torch

    feats = planted_features(planted_regions(8, 8, "quadrants"), seed=0)
    np.testing.assert_array_equal(official_recursive_ncut(torch.from_numpy(feats)), official_recursive_ncut(feats))
    # tau so small that no split is accepted: one segment, as the official "no cluster" branch.
    assert not official_recursive_ncut(feats, tau=1e-9).any()
    with pytest.raises(ValueError):
        official_recursive_ncut(feats[0])


def test_exact_decisions_take_the_float64_rule_and_time_the_float32_work():
    """``decisions="float64"`` (bench_graph's exact-decision reference): the labels of the official rule solved in
    float64 (what ``compat="official"`` promises), the official float32 work still done once per visited subgraph,
    and the float64 decisions' time reported apart."""
    import bench_graph

    disconnected, _ = bench_graph.disconnected_case(16, 16, 4, 0.5, seed=3)
    planted_feats = planted_features(planted_regions(12, 20, "stripes"), seed=2)
    for feats in (disconnected, planted_feats):
        labels, info = official_recursive_ncut(feats, alpha=10.0, tau=0.5, return_info=True, decisions="float64")
        np.testing.assert_array_equal(labels, literal_official(feats, alpha=10.0, tau=0.5, dtype=np.float64))
        np.testing.assert_array_equal(labels, recursive_ncut(feats, alpha=10.0, tau=0.5))
        assert info["segments"] >= 3 and info["solves"] == 2 * info["segments"] - 1
        assert info["host_syncs"] == 100 * info["solves"]  # the float32 loop's, the float64 one's not counted
        assert info["decision_seconds"] > 0
    # Where rounding decides nothing, both modes agree and do the same float32 work.
    plain, plain_info = official_recursive_ncut(planted_feats, alpha=10.0, tau=0.5, return_info=True)
    exact, exact_info = official_recursive_ncut(planted_feats, alpha=10.0, tau=0.5, return_info=True,
                                                decisions="float64")
    np.testing.assert_array_equal(plain, exact)
    assert plain_info["solves"] == exact_info["solves"] and plain_info["decision_seconds"] == 0.0
    with pytest.raises(ValueError, match="decisions"):
        official_recursive_ncut(planted_feats, decisions="float16")
