"""Refinement cost: presets x photo sizes x K, the torch reference vs the fast path, in the same run.

The fast path is the numba one (``--backend fast``, default) or the C++ core's (``--backend native``).

For every (preset, size, K) the skimage astronaut photo is resized to the size, a label map with about K regions
is made from SLIC superpixels (computed at <= 512 px, nearest-upsampled: labels at the photo's size, as concept
assignment gives them), and ``refine.refine_at`` runs the preset (working size, iterations, dilations of
``config.REFINE_PRESETS``; ``demo`` works at the 1024x1024 network size) with ``backend="fast"`` and, where it
fits (``--reference-max``: K x working pixels), ``backend="torch"``. Labels of the two are compared (they must be
identical). Wall time and process CPU time (all threads) are reported: on a shared machine the CPU time is the
steadier of the two. The first fast call on a tiny input compiles the numba kernels and is not timed.

    python benchmarks/bench_refine.py --json out.json
    python benchmarks/bench_refine.py --presets demo --sizes 1024x1024 --ks 10,500
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from diffcut_engine import refine
from diffcut_engine.config import REFINE_PRESETS

NETWORK = (1024, 1024)


def photo(size):
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(img, size=size, mode="bilinear", align_corners=False)[0].contiguous()


def slic_labels(img, k, size):
    from skimage import segmentation

    scale = 512 / max(size)
    small = F.interpolate(img[None], size=(max(8, round(size[0] * scale)), max(8, round(size[1] * scale))),
                          mode="bilinear", align_corners=False)[0]
    lab = segmentation.slic(small.permute(1, 2, 0).numpy(), n_segments=k, compactness=30, start_label=0)
    _, lab = np.unique(lab, return_inverse=True)
    lab = torch.from_numpy(lab.reshape(small.shape[-2:]).astype(np.int64))
    return F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()


def parse_size(s):
    w, h = (int(v) for v in s.lower().split("x"))
    return (h, w)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="demo,eval,full")
    ap.add_argument("--sizes", default="1024x1024,3000x2000", help="WxH photo sizes")
    ap.add_argument("--ks", default="10,100,500", help="requested number of regions (SLIC n_segments)")
    ap.add_argument("--reference-max", type=float, default=1.1e7,
                    help="run the torch reference only where K x working pixels <= this (default 1024^2 x 10)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--backend", choices=("fast", "native"), default="fast",
                    help="the fast path timed against torch: fast (numba on the CPU, default) or native (C++ core)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    refine.refine_at(photo((24, 24)), torch.zeros(24, 24, dtype=torch.long).index_fill_(1, torch.arange(12), 1),
                     iters=1, backend="fast")                                     # compile, untimed
    rows = []
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    for size_s in args.sizes.split(","):
        size = parse_size(size_s)
        img = photo(size)
        for k_req in (int(v) for v in args.ks.split(",")):
            lab = slic_labels(img, k_req, size)
            k = int(lab.max()) + 1
            for name in args.presets.split(","):
                p = REFINE_PRESETS[name]
                work = NETWORK if p["work_size"] == "network" else (size if p["work_size"] == "output"
                                                                    else tuple(p["work_size"]))
                kw = dict(work_size=work, num_segments=k, iters=p["iters"], dilations=p["dilations"])
                t0, c0 = time.perf_counter(), time.process_time()
                fast = refine.refine_at(img, lab, backend=args.backend, **kw)
                t_fast = time.perf_counter() - t0
                row = {"preset": name, "size": size_s, "k": k, "work": f"{work[1]}x{work[0]}", "backend": args.backend,
                       "fast_s": round(t_fast, 3), "fast_cpu_s": round(time.process_time() - c0, 3),
                       "torch_s": None, "torch_cpu_s": None, "speedup": None, "identical": None}
                if k * work[0] * work[1] <= args.reference_max:
                    t0, c0 = time.perf_counter(), time.process_time()
                    ref = refine.refine_at(img, lab, backend="torch", **kw)
                    row["torch_s"] = round(time.perf_counter() - t0, 3)
                    row["torch_cpu_s"] = round(time.process_time() - c0, 3)
                    row["speedup"] = round(row["torch_s"] / t_fast, 2)
                    row["identical"] = bool(torch.equal(fast, ref))
                row["load"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| preset | photo | K | work size | fast (s) | fast CPU (s) | torch (s) | speed-up | labels identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['size']} | {r['k']} | {r['work']} | {r['fast_s']} | {r['fast_cpu_s']} | "
              f"{r['torch_s'] if r['torch_s'] is not None else '-'} | "
              f"{r['speedup'] if r['speedup'] is not None else '-'} | "
              f"{r['identical'] if r['identical'] is not None else '-'} |")
    by = {}
    for r in rows:
        by.setdefault((r["preset"], r["size"]), []).append(r)
    for (name, size_s), rs in by.items():
        if len(rs) > 1:
            lo, hi = min(rs, key=lambda r: r["k"]), max(rs, key=lambda r: r["k"])
            print(f"{name} {size_s}: K={hi['k']} costs {hi['fast_s'] / lo['fast_s']:.2f}x K={lo['k']} (fast path)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
