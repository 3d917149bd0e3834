"""Encoder latency per backend (torch vs onnxruntime), batch size and dtype: medians after warm-up.

By default the model is the tiny random SDXL-type pipeline of the tests (built into a temporary folder, no
download). ``--model ssd1b-random`` builds an SSD-1B-sized pipeline with random weights instead
(``benchmarks/ssd1b_config.py``: SSD-1B UNet, SDXL VAE, small text encoders of SSD-1B's widths; 5.8 GB written
to a temporary folder in about a minute, no download), and ``--model`` also takes any hub id or diffusers
folder. Either way the folder is loaded with the engine's own ``DiffusionEncoder.from_pretrained`` and exported
once with ``export_onnx``. Both backends run on the same seeded pixels in the same process, and the script reports
their ratio and the largest feature difference. The header names the model and gives the exported graph's size.

    python benchmarks/bench_encoder.py --size 128 --batch 1,4 --repeats 5
    python benchmarks/bench_encoder.py --model ssd1b-random --size 512 --batch 1,4 --warmup 2 --repeats 5
    python benchmarks/bench_encoder.py --model ssd1b-random --size 1024 --batch 1 --warmup 1 --repeats 3
    python benchmarks/bench_encoder.py --model segmind/SSD-1B --size 1024 --batch 1 --device cuda --dtype fp16

With ``ssd1b-random`` in fp32 the process peaked at 7.2 GB of RAM at 256 px (more at larger sizes, from the
activations); the export (tracing, the manifest's folder hash, the export-time check) took about two minutes. The
truncated fp32 graph is 1.67 GB, under protobuf's 2 GB limit, so it is a single ``model.onnx``;
``--external-data`` writes the weights to ``model.onnx.data`` anyway (``export_onnx`` does so by itself above the
limit).

On CUDA the onnx backend needs onnxruntime-gpu; its figures then include no host copies (I/O binding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

#: ``--model`` value that builds an SSD-1B-sized random-weight pipeline (benchmarks/ssd1b_config.py).
SSD1B_RANDOM = "ssd1b-random"
TINY_LABEL = "tiny random SDXL-type (tests/tiny_models.py)"


def _time(fn, warmup, repeats, device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _onnx_files(manifest) -> dict:
    # The graph's files (model.onnx, and model.onnx.data with external data) and their sizes in bytes.
    return {name: info["bytes"] for name, info in sorted(manifest["files"].items()) if name.startswith("model.onnx")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None,
                    help=f"hub id, diffusers folder, or {SSD1B_RANDOM!r} (an SSD-1B-sized random-weight pipeline "
                         "built in a temporary folder); default: the tiny SDXL test model")
    ap.add_argument("--size", type=int, default=128, help="square input size in pixels (multiple of 32)")
    ap.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--exporter", choices=["dynamo", "torchscript"], default="torchscript")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--external-data", action="store_true",
                    help="store the ONNX weights in model.onnx.data even under 2 GB (automatic above)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)

    from diffcut_engine.encoders.diffusion import DiffusionEncoder
    from diffcut_engine.encoders.onnx import OnnxEncoder
    from diffcut_engine.encoders.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        model, label, build_s = args.model, args.model, None
        t0 = time.perf_counter()
        if model is None:
            from tiny_models import make_tiny_sdxl

            model, label = make_tiny_sdxl(os.path.join(tmp, "tiny_sdxl")), TINY_LABEL
        elif model == SSD1B_RANDOM:
            from ssd1b_config import MODEL_LABEL, build_random_pipeline

            model, label = build_random_pipeline(os.path.join(tmp, "ssd1b_random")), MODEL_LABEL
            build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        encoder = DiffusionEncoder.from_pretrained(model, device=args.device, dtype=args.dtype)
        load_s = time.perf_counter() - t0
        if build_s is not None:
            print(f"[{SSD1B_RANDOM}] loaded with DiffusionEncoder.from_pretrained ({load_s:.0f} s); exporting "
                  f"to ONNX at {args.size} px", flush=True)
        batches = [int(b) for b in args.batch.split(",")]
        folder = os.path.join(tmp, "onnx")
        t0 = time.perf_counter()
        manifest = export_onnx(None, folder, size=args.size, batch=max(batches), encoder=encoder,
                               exporter=args.exporter, external_data=True if args.external_data else None)
        export_s = time.perf_counter() - t0
        onnx_files = _onnx_files(manifest)
        onnx_bytes = sum(onnx_files.values())
        print(f"model: {label}")
        print(f"  {args.size} px, {args.device}, {args.dtype}, torch threads {torch.get_num_threads()}, "
              f"onnxruntime threads {args.threads or 'default'}; warm-up {args.warmup}, median of {args.repeats}")
        print(f"  ONNX ({args.exporter} exporter, {export_s:.0f} s): {onnx_bytes / 1e9:.3f} GB in "
              f"{' + '.join(onnx_files)}", flush=True)
        runner = OnnxEncoder(folder, device=args.device, threads=args.threads)
        rows = []
        for b in batches:
            g = torch.Generator().manual_seed(b)
            pixels = (torch.rand(b, 3, args.size, args.size, generator=g) * 2 - 1).to(encoder.device)
            with torch.inference_mode():
                t_torch = _time(lambda: encoder.encode(pixels), args.warmup, args.repeats, encoder.device)
                t_onnx = _time(lambda: runner.encode(pixels), args.warmup, args.repeats, encoder.device)
                diff = float((encoder.encode(pixels) - runner.encode(pixels).to(encoder.device)).abs().max())
            med_t, med_o = statistics.median(t_torch), statistics.median(t_onnx)
            rows.append({"batch": b, "torch_ms": 1e3 * med_t, "onnx_ms": 1e3 * med_o,
                         "torch_img_per_s": b / med_t, "onnx_img_per_s": b / med_o,
                         "speedup_onnx_vs_torch": med_t / med_o, "max_abs_diff": diff})
            print(f"batch {b:3d}: torch {1e3 * med_t:9.2f} ms  onnx {1e3 * med_o:9.2f} ms  "
                  f"(onnx/torch speed-up x{med_t / med_o:.2f}, max |diff| {diff:.1e})", flush=True)
    print(f"  host peak RSS {_peak_rss_mb():.0f} MB")
    result = {
        "benchmark": "encoder latency, torch vs onnxruntime (medians after warm-up)",
        "model": label,
        "size": args.size, "device": args.device, "dtype": args.dtype, "exporter": args.exporter,
        "providers": runner.providers, "export_s": export_s, "warmup": args.warmup, "repeats": args.repeats,
        "build_s": build_s, "load_s": load_s, "onnx_bytes": onnx_bytes, "onnx_files": onnx_files,
        "external_data": manifest["external_data"], "ort_threads": args.threads,
        "host_peak_rss_mb": round(_peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(), "machine": platform.platform(), "python": platform.python_version(),
        "versions": manifest["exporter"], "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
