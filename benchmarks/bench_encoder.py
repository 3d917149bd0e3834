"""Encoder latency per backend (torch vs onnxruntime), batch size and dtype: medians after warm-up.

By default the model is the tiny random SDXL-type pipeline of the tests (built into a temporary folder, no
download), exported once with ``export_onnx``; ``--model`` takes any hub id or diffusers folder instead. Both
backends run on the same seeded pixels in the same process, and the script reports their ratio and the largest
feature difference.

    python benchmarks/bench_encoder.py --size 128 --batch 1,4 --repeats 5
    python benchmarks/bench_encoder.py --model segmind/SSD-1B --size 1024 --batch 1 --device cuda --dtype fp16

On CUDA the onnx backend needs onnxruntime-gpu; its figures then include no host copies (I/O binding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="hub id or diffusers folder (default: the tiny SDXL test model)")
    ap.add_argument("--size", type=int, default=128, help="square input size in pixels (multiple of 32)")
    ap.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--exporter", choices=["dynamo", "torchscript"], default="torchscript")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)

    from diffcut_engine.encoders.diffusion import DiffusionEncoder
    from diffcut_engine.encoders.onnx import OnnxEncoder
    from diffcut_engine.encoders.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from tiny_models import make_tiny_sdxl

            model = make_tiny_sdxl(os.path.join(tmp, "tiny_sdxl"))
        encoder = DiffusionEncoder.from_pretrained(model, device=args.device, dtype=args.dtype)
        batches = [int(b) for b in args.batch.split(",")]
        folder = os.path.join(tmp, "onnx")
        t0 = time.perf_counter()
        manifest = export_onnx(None, folder, size=args.size, batch=max(batches), encoder=encoder,
                               exporter=args.exporter)
        export_s = time.perf_counter() - t0
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
                  f"(onnx/torch speed-up x{med_t / med_o:.2f}, max |diff| {diff:.1e})")
    result = {
        "benchmark": "encoder latency, torch vs onnxruntime (medians after warm-up)",
        "model": args.model or "tiny random SDXL-type (tests/tiny_models.py)",
        "size": args.size, "device": args.device, "dtype": args.dtype, "exporter": args.exporter,
        "providers": runner.providers, "export_s": export_s, "warmup": args.warmup, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(), "machine": platform.platform(), "python": platform.python_version(),
        "versions": manifest["exporter"], "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
