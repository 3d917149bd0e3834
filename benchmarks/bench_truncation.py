"""Truncated UNet vs the official full forward with a hook, on an SSD-1B-sized UNet (random weights).

The official code runs the whole UNet (mid block and decoder included) and keeps only the output of the hooked
``attn1``; the engine stops right after it. This script measures both on the same inputs in the same run and
checks that the features are identical.

    python benchmarks/bench_truncation.py --size 512 --repeats 3

The SSD-1B UNet in fp32 needs about 6 GB of RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ssd1b_config import build_random_unet  # noqa: E402

from diffcut_engine.encoders.diffusion import TruncatedUNet  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    t0 = time.perf_counter()
    unet = build_random_unet()
    if dtype != torch.float32:
        unet = unet.to(dtype)
    build_s = time.perf_counter() - t0
    trunc = TruncatedUNet(unet)
    g = torch.Generator().manual_seed(0)
    lat = args.size // 8
    sample = torch.randn(args.batch, 4, lat, lat, generator=g).to(dtype)
    t = torch.full((args.batch,), 50, dtype=torch.long)
    ehs = torch.randn(args.batch, 77, 2048, generator=g).to(dtype)
    text_embeds = torch.randn(args.batch, 1280, generator=g).to(dtype)
    time_ids = torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * args.batch, dtype=dtype)

    hooked = {}
    module = unet.get_submodule(trunc.hook_path)
    module.register_forward_hook(lambda m, a, out: hooked.__setitem__("out", out))

    def full():
        unet(sample, t, encoder_hidden_states=ehs,
             added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})
        return hooked["out"]

    def truncated():
        return trunc(sample, t, ehs, text_embeds=text_embeds, time_ids=time_ids)

    times = {"full": [], "truncated": []}
    with torch.inference_mode():
        ref = full()
        out = truncated()  # warm-up of both
        for _ in range(args.repeats):
            for name, fn in (("full", full), ("truncated", truncated)):
                t1 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t1)
    grid = out.shape[1:3]
    max_diff = (ref.reshape(out.shape).float() - out.float()).abs().max().item()
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "truncated UNet vs full UNet + hook (SSD-1B config, random weights)",
        "size": args.size, "batch": args.batch, "dtype": args.dtype, "grid": list(grid),
        "median_s": med, "ratio_full_over_truncated": med["full"] / med["truncated"], "max_abs_diff": max_diff,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "build_s": build_s, "repeats": args.repeats,
    }
    print(f"SSD-1B-sized UNet, {args.size} px, batch {args.batch}, {args.dtype}, {torch.get_num_threads()} threads")
    print(f"  full UNet + hook : {med['full']:.3f} s")
    print(f"  truncated        : {med['truncated']:.3f} s")
    print(f"  ratio            : {result['ratio_full_over_truncated']:.2f}x   max |diff| = {max_diff:.3g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0 if max_diff == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
