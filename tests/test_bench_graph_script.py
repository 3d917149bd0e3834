"""``benchmarks/bench_graph.py`` (the source of the graph-stage ratios in RESULTS.md) runs and reports honestly."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bench_graph  # noqa: E402


def test_interleaved_alternates_calls_and_keeps_failures_apart():
    calls = []

    def make(name, fail_at=None):
        def fn():
            calls.append(name)
            if fail_at is not None and calls.count(name) == fail_at:
                raise RuntimeError(f"{name} broke")
            return name.upper()
        return fn

    out = bench_graph.interleaved({"ref": make("ref"), "a": make("a"), "b": make("b", fail_at=2)}, 3)
    # A B C, A B C (B fails on its second call and leaves the rotation), A, ...
    assert calls == ["ref", "a", "b", "ref", "a", "b", "ref", "a"]
    assert isinstance(out["b"], RuntimeError)
    median, times, result = out["a"]
    assert result == "A" and len(times) == 3 and median == sorted(times)[1]


def test_small_run_matches_the_reference(tmp_path):
    path = tmp_path / "graph.json"
    assert bench_graph.main(["--grids", "8,6x10", "--cases", "planted", "--repeats", "2", "--solvers", "auto",
                             "--json", str(path)]) in (0, None)
    rows = json.loads(path.read_text())["results"]
    assert [r["grid"] for r in rows] == ["8x8", "6x10"]
    for row in rows:
        assert row["interleaved"] and len(row["reference_times"]) == 2
        auto = row["engine"]["auto"]
        assert auto["same_partition"] and auto["moved_nodes"] == 0 and len(auto["times"]) == 2
        assert auto["ratio"] == row["reference_s"] / auto["seconds"]


def test_disconnected_family_differs_from_the_reference_only_at_zero_row_nodes():
    """RESULTS.md's reading of the nearly disconnected family: where the engine's default and the official float32
    recursion disagree, the nodes in other segments are only those the official zero-row rule leaves out below the
    root (their leaf follows the split order, which float32 rounding decides on a clustered spectrum)."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    import reference_official

    from diffcut_engine.graph import recursive_ncut

    feats, _ = bench_graph.disconnected_case(32, 32, 8, 0.5, seed=32 * 1000 + 32 + 8)
    ref = reference_official.official_recursive_ncut(feats, 10.0, 0.5).ravel()
    ours = np.asarray(recursive_ncut(feats, tau=0.5)).ravel()
    assert ref.max() == ours.max() >= 7
    tokens, _ = reference_official._tokens(feats, "cpu")
    zero_row = set(np.flatnonzero((reference_official._affinity(tokens, 10.0).numpy() == 0).any(1)).tolist())
    k = int(ref.max()) + 1
    overlap = np.zeros((k, k))
    np.add.at(overlap, (ref, ours), 1)
    rows, cols = linear_sum_assignment(-overlap)
    match = dict(zip(cols.tolist(), rows.tolist()))
    moved = set(np.flatnonzero(np.array([match[int(x)] for x in ours]) != ref).tolist())
    assert 0 < len(zero_row) <= 4 and moved <= zero_row


def test_exact_decision_reference_row(tmp_path):
    """``--exact-reference always``: each case also has the exact-decision reference (official float32 work along
    the float64 rule's recursion), the engine's ratio against it and whether its labels are that partition's."""
    path = tmp_path / "graph.json"
    assert bench_graph.main(["--grids", "12", "--cases", "disconnected", "--repeats", "1", "--solvers", "auto",
                             "--exact-reference", "always", "--json", str(path)]) in (0, None)
    rows = json.loads(path.read_text())["results"]
    assert len(rows) == len(bench_graph.DISCONNECTED)
    for row in rows:
        exact, auto = row["exact_reference"], row["engine"]["auto"]
        # one solve per visited subgraph of more than one node (the zero-row rule can leave a side with one)
        assert exact["segments"] - 1 <= exact["solves"] <= 2 * exact["segments"] - 1 and len(exact["times"]) == 1
        # the float64 rule's partition (label ids can differ where W's last bits decide a two-node split's side)
        assert auto["moved_vs_exact"] == 0 and isinstance(auto["same_labels_as_exact"], bool)
        assert auto["exact_ratio"] == exact["seconds"] / auto["seconds"]
    # auto: only where the reference's own labels are in question.
    bench_graph.main(["--grids", "8", "--cases", "planted", "--repeats", "1", "--solvers", "auto",
                      "--json", str(path)])
    row, = json.loads(path.read_text())["results"]
    assert row["engine"]["auto"]["same_labels"] and "exact_reference" not in row
