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
