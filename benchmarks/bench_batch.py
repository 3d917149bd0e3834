"""`diffcut batch` on Ray Data vs a plain loop over ``engine.segment``: items per second, Ray's overhead per item.

    python benchmarks/bench_batch.py --images 32 --size 256 --workers 1,2

The same images (skimage photos, resized and cropped differently so that no two are alike) are segmented
1. by a plain loop ``for p in paths: engine.segment(p)`` in a fresh process, with the default threads and with
   ``OMP_NUM_THREADS=1`` (what a Ray actor with one CPU gets: Ray sets it to the actor's CPUs);
2. by ``run_batch`` on a local Ray (started once, ``--ray-cpus`` CPUs) with 1, 2, ... workers of one CPU each,
   into a fresh output folder each time (nothing skipped).

For Ray, "wall" counts everything the command does (listing, actor start and model load, writing PNGs and the
manifest); "steady" is the rate between the first and the last item the workers finished (the manifest's
``finished_at``), once the start-up is paid. Ray's overhead per item is the 1-worker steady time per item minus the
1-thread loop's time per item (it includes writing the label PNG, which the loop does not do), and minus the
engine stages' own time in the worker. Timings on a shared machine vary: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)  # this checkout's package, here and (through PYTHONPATH) in Ray's workers


def make_images(folder: Path, n: int, seed: int = 0) -> list:
    from PIL import Image
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
             "cat"]
    photos = []
    for name in names:
        try:
            photos.append(np.asarray(getattr(data, name)()))
        except Exception:  # noqa: BLE001 (a photo that needs a download; skip it)
            continue
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        img = photos[k % len(photos)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(img[top:top + ch, left:left + cw, :3]).resize((320, 240))
        paths.append(folder / f"img{k:03d}.png")
        crop.save(paths[-1])
    return paths


def plain_loop(config, paths) -> float:
    """Seconds of ``for p in paths: engine.segment(p)`` after one untimed warm-up call."""
    from diffcut_engine.engine import Engine

    engine = Engine(config)
    engine.segment(str(paths[0]))
    t0 = time.perf_counter()
    for p in paths:
        engine.segment(str(p))
    return time.perf_counter() - t0


def plain_loop_in_subprocess(folder, size, threads) -> float:
    """:func:`plain_loop` in a fresh process with ``OMP_NUM_THREADS`` (and so torch's and BLAS's threads) set,
    as Ray sets it in an actor; ``threads=None`` keeps the defaults."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--loop-only", str(folder), "--size", str(size)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def ray_run(config, paths, workers) -> dict:
    """One ``run_batch`` into a fresh folder. "steady" is the rate between the first and the last item the
    workers finished (their clocks, in the manifest): the start-up (actors starting, loading the model) excluded."""
    from diffcut_engine.distributed import read_manifest, run_batch

    with tempfile.TemporaryDirectory() as out, open(os.devnull, "w") as devnull:
        t0 = time.perf_counter()
        summary = run_batch([str(p) for p in paths], out, config, num_workers=workers, progress=False, log=devnull)
        wall = time.perf_counter() - t0
        rows = list(read_manifest(out).values())
    assert summary.done == len(rows) == len(paths) and summary.failed == 0, summary.errors
    ends = sorted(r["finished_at"] for r in rows)
    n = len(rows)
    return {"workers": workers, "wall_s": wall, "items_per_s_wall": n / wall,
            "items_per_s_steady": (n - 1) / (ends[-1] - ends[0]) if ends[-1] > ends[0] else float("nan"),
            "worker_compute_s_per_item": float(np.mean([r["timings"]["total"] for r in rows])),
            "worker_item_s": float(np.mean([r["seconds"] for r in rows]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=256, help="network input size (default 256)")
    ap.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--loop-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.loop_only:  # the child of plain_loop_in_subprocess
        from diffcut_engine import EngineConfig

        os.environ["DIFFCUT_NO_PROGRESS"] = "1"
        config = EngineConfig(backbone="efficientnet-lite0", size=args.size, device="cpu", batch_size=1)
        print(plain_loop(config, sorted(args.loop_only.glob("*.png"))))
        return 0

    import ray
    import torch

    import diffcut_engine
    from diffcut_engine import EngineConfig

    os.environ["DIFFCUT_NO_PROGRESS"] = "1"
    config = EngineConfig(backbone="efficientnet-lite0", size=args.size, device="cpu", batch_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "in", args.images)
        n = len(paths)
        loop_default = plain_loop_in_subprocess(Path(tmp) / "in", args.size, None)
        loop_one = plain_loop_in_subprocess(Path(tmp) / "in", args.size, 1)
        os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(
            os.pathsep) if p])
        t0 = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        runs = [ray_run(config, paths, int(w)) for w in args.workers.split(",")]
        ray.shutdown()
    result = {
        "images": n, "size": args.size, "backbone": "efficientnet-lite0", "ray_cpus": args.ray_cpus,
        "ray_init_s": ray_start,
        "loop_items_per_s": n / loop_default, "loop_threads": os.cpu_count(),
        "loop_1thread_items_per_s": n / loop_one,
        "ray": runs,
        "ray_overhead_s_per_item": (1 / runs[0]["items_per_s_steady"]) - loop_one / n if runs else None,
        "ray_overhead_vs_worker_compute_s_per_item": ((1 / runs[0]["items_per_s_steady"])
                                                      - runs[0]["worker_compute_s_per_item"]) if runs else None,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
                    f"diffcut-engine {diffcut_engine.__version__}",
        "command": " ".join(["python", "benchmarks/bench_batch.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"{n} images, efficientnet-lite0 at {args.size} px, CPU")
    print(f"plain loop over engine.segment ({result['loop_threads']} threads): {result['loop_items_per_s']:.2f} "
          f"items/s; 1 thread: {result['loop_1thread_items_per_s']:.2f} items/s")
    print(f"ray.init: {ray_start:.1f} s")
    for r in runs:
        ratio = r["items_per_s_steady"] / result["loop_1thread_items_per_s"]
        print(f"ray, {r['workers']} worker(s): {r['items_per_s_wall']:.2f} items/s wall ({r['wall_s']:.1f} s), "
              f"{r['items_per_s_steady']:.2f} items/s steady ({ratio:.2f}x the 1-thread loop); worker compute "
              f"{r['worker_compute_s_per_item'] * 1e3:.0f} ms/item, item in the worker with its PNG "
              f"{r['worker_item_s'] * 1e3:.0f} ms")
    if runs:
        print("Ray overhead per item (1 worker steady - 1-thread loop): "
              f"{result['ray_overhead_s_per_item'] * 1e3:.0f} ms; (1 worker steady - its engine stages): "
              f"{result['ray_overhead_vs_worker_compute_s_per_item'] * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
