"""The native PAMR with subnormal results flushed (the default) against IEEE subnormals, same machine, same run.

The C++ core's propagation steps run with FTZ/DAZ (``FlushSubnormals``, csrc/src/refine.cpp);
``DIFFCUT_NO_FLUSH_SUBNORMALS=1`` keeps IEEE arithmetic. The variable is read once per process, so each timing runs
in a child process, the two modes alternated; a child times ``pamr_native.pamr`` (PAMR + median) on the astronaut
photo at ``--size`` with SLIC labels (computed at half size, nearest-upsampled), best of ``--repeats`` calls.

    python benchmarks/bench_subnormals.py                       # full and demo, K ~ 7 and ~ 20, 1024 x 1024
    python benchmarks/bench_subnormals.py --presets demo --segments 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PRESETS = {"full": (10, (1, 2, 4, 8)), "demo": (30, (1, 2, 4, 8, 12, 24, 32, 64))}

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
from skimage import data, segmentation, transform
from diffcut_engine.kernels import pamr_native as pn
size, n_segments, iters, dilations, repeats = json.loads(sys.argv[1])
img = transform.resize(data.astronaut(), (size, size), anti_aliasing=True).astype(np.float32)
chw = np.ascontiguousarray(img.transpose(2, 0, 1))
lab = segmentation.slic(transform.resize(data.astronaut(), (size // 2, size // 2)), n_segments=n_segments,
                        start_label=0)
lab = np.kron(lab, np.ones((2, 2), int)).astype(np.int32)
k = int(lab.max()) + 1
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    out = pn.pamr(chw, lab, k, iters=iters, dilations=tuple(dilations))
    best = min(best, time.perf_counter() - t)
print(json.dumps({"k": k, "seconds": best, "labels": hashlib.sha1(np.ascontiguousarray(out).tobytes()).hexdigest()}))
"""


def child(size, n_segments, preset, repeats, flush):
    iters, dilations = PRESETS[preset]
    env = dict(os.environ, DIFFCUT_NO_FLUSH_SUBNORMALS="0" if flush else "1")
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps([size, n_segments, iters, dilations, repeats])],
                         env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="full,demo")
    ap.add_argument("--segments", default="20,30", help="SLIC n_segments (K comes out about 7 and 20)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2, help="calls per child process (best taken)")
    ap.add_argument("--rounds", type=int, default=2, help="child processes per mode, the modes alternated")
    args = ap.parse_args(argv)
    print("| preset | K | IEEE (s) | flushed (s) | IEEE / flushed | same labels |\n|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        for n in (int(s) for s in args.segments.split(",")):
            runs = {True: [], False: []}
            for _ in range(args.rounds):
                for flush in (False, True):
                    runs[flush].append(child(args.size, n, preset, args.repeats, flush))
            ieee, flushed = (min(r["seconds"] for r in runs[m]) for m in (False, True))
            same = len({r["labels"] for r in runs[False] + runs[True]}) == 1
            print(f"| {preset} | {runs[True][0]['k']} | {ieee:.3f} | {flushed:.3f} | {ieee / flushed:.2f}x | "
                  f"{'yes' if same else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
