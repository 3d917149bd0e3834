"""One prepared device check (issue 21), run by ``benchmarks/gpu_check.sh``; ``--mode smoke`` runs the same steps
on the CPU at toy sizes (Triton interpreter, numpy in place of CuPy, a tiny UNet), which CI runs.

Steps, in order of value (each bounded by its own alarm and by the internal deadline):

a. ``triton``: the fused affinity kernel against the float64 and the float32 torch references (max |diff|,
   symmetry, exact 0 and 1) and its speed against the torch reference and CuPy, at N = 1,024 and 4,096, C = 1,280.
b. ``graph``: the batched device NCut on 16 grids of 32x32 and of 64x64 (planted features): partitions against the
   host recursion, first-call and per-image time, and each stacked eigensolver (``batched``, ``loop``, ``torch``).
c. ``encoder``: an SSD-1B-sized random-weight UNet (fp16) + SDXL VAE (fp32) built directly on the GPU, 1,024 px,
   batch 1 and 8, CUDA graphs off and on: encoder img/s, the VAE's share, peak memory, and features + graph stage
   img/s.

Output: ``$OUT/results.json``, rewritten after every step (the log is the shell script's). Exit codes: see
:data:`EXIT_CODES`. Every figure is measured in this run; ratios are against references timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback

EXIT_CODES = {
    0: "every step ran and passed its checks",
    1: "a step failed or missed a parity check (see results.json)",
    2: "bad command line",
    10: "preflight: torch sees no CUDA device",
    11: "preflight: Triton missing, or not compiled for CUDA (or, in smoke mode, not interpreted)",
    12: "preflight: CuPy missing or sees no device",
    13: "preflight: diffusers missing (carry the wheelhouse: benchmarks/make_wheelhouse.sh)",
    14: "wheelhouse install failed (gpu_check.sh)",
    20: "internal deadline reached before every step ran",
}

SIZES = {
    "gpu": {"affinity": [(1024, 1280), (4096, 1280)], "grids": [(32, 32), (64, 64)], "images": 16, "channels": 1280,
            "host_images": {32: 16, 64: 4}, "px": 1024, "batches": [1, 8], "reps": 5, "deadline": 480,
            "budgets": {"triton": 100, "graph": 160, "encoder": 200}},
    "smoke": {"affinity": [(64, 32), (128, 32)], "grids": [(6, 6), (8, 8)], "images": 3, "channels": 32,
              "host_images": {6: 3, 8: 3}, "px": 64, "batches": [1, 2], "reps": 0, "deadline": 120,
              "budgets": {"triton": 40, "graph": 40, "encoder": 40}},
}


class StepTimeout(Exception):
    pass


class Check:
    def __init__(self, out: str, mode: str, deadline: float):
        self.out, self.mode = out, mode
        self.start = time.monotonic()
        self.deadline = deadline
        self.results = {"mode": mode, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "deadline_s": deadline, "status": "running", "preflight": {}, "steps": {}}
        self.save()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.deadline - self.elapsed()

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {msg}", flush=True)

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 2)
        path = os.path.join(self.out, "results.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.results, fh, indent=1, default=str)
        os.replace(tmp, path)

    def step(self, name: str, fn, budget: float) -> bool:
        entry = self.results["steps"].setdefault(name, {})
        left = self.remaining()
        if left < 5:
            entry.update(status="skipped", reason="internal deadline")
            self.log(f"step {name}: skipped (deadline)")
            self.save()
            return False
        limit = max(1, int(min(budget, left)))
        self.log(f"step {name}: start (limit {limit} s)")
        t0 = time.monotonic()

        def alarm(signum, frame):
            raise StepTimeout(f"step {name} passed its {limit} s limit")

        previous = signal.signal(signal.SIGALRM, alarm)
        signal.alarm(limit)
        try:
            fn(entry)
            entry["status"] = "ok" if entry.get("checks_passed", True) else "check_failed"
        except StepTimeout as exc:
            entry.update(status="timeout", error=str(exc))
        except Exception as exc:  # noqa: BLE001  (a failed step is recorded; the next one still runs)
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            entry["seconds"] = round(time.monotonic() - t0, 2)
            self.save()
        self.log(f"step {name}: {entry['status']} in {entry['seconds']} s")
        return entry["status"] == "ok"


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------

def sync(device) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps: int, device) -> dict:
    """First call (compilation, autotuning, allocation) and the median / min of ``reps`` further calls, in ms
    (``reps=0``, smoke mode: the first call only)."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    first = (time.perf_counter() - t) * 1e3
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    times = times or [first]
    return {"first_ms": round(first, 3), "median_ms": round(statistics.median(times), 4),
            "min_ms": round(min(times), 4), "reps": reps}


def clustered_tokens(n: int, c: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, c, generator=g)
    labels = torch.randint(0, 6, (n,), generator=g)
    scale = torch.rand(n, 1, generator=g) * 3 + 0.1
    return ((centres[labels] + 0.6 * torch.randn(n, c, generator=g)) * scale).float()


def planted_grid(h: int, w: int, c: int, seed: int):
    """(h, w, c) float32 features of 3-5 rectangular regions (random centres + noise): a known partition."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    k = int(rng.integers(3, 6))
    cuts_y = np.sort(rng.integers(1, h, size=k - 1))
    cuts_x = np.sort(rng.integers(1, w, size=k - 1))
    regions = (np.searchsorted(cuts_y, yy) + np.searchsorted(cuts_x, xx)) % k
    centres = rng.normal(size=(k, c))
    return (centres[regions] + 0.35 * rng.normal(size=(h, w, c))).astype(np.float32)


def same_partition(a, b) -> bool:
    a, b = a.ravel().tolist(), b.ravel().tolist()
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


def reference64(x, alpha: float):
    """The DiffCut affinity in float64 (the ground truth of the parity figures)."""
    import torch

    xd = torch.nn.functional.normalize(x.double(), dim=1, eps=1e-12)
    s = xd @ xd.T
    lo, hi = s.min(), s.max()
    return ((s - lo) / (hi - lo)).clamp(0, 1) ** alpha


# ------------------------------------------------------------------------------------------------------------
# Preflight
# ------------------------------------------------------------------------------------------------------------

def preflight(check: Check) -> int:
    info = check.results["preflight"]
    info["python"] = platform.python_version()
    import torch

    info["torch"] = torch.__version__
    smoke = check.mode == "smoke"
    if not smoke:
        if not torch.cuda.is_available():
            info["error"] = "torch.cuda.is_available() is False"
            return 10
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
        info["cuda"] = torch.version.cuda
    import diffcut_engine.kernels.affinity as kaff

    if kaff.tl is None:
        info["error"] = "Triton is not importable"
        return 11
    info["triton"] = kaff.triton.__version__
    if smoke != kaff.triton_interpreted():
        info["error"] = (f"Triton interpreted={kaff.triton_interpreted()} in {check.mode} mode "
                         f"(TRITON_INTERPRET must be 1 exactly in smoke mode)")
        return 11
    if not smoke:
        try:  # compile one small launch now rather than fail inside step a
            kaff.fused_affinity(torch.randn(40, 8, device="cuda"), 10.0, block=32)
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001
            info["error"] = f"the Triton kernel does not compile or run: {type(exc).__name__}: {exc}"
            return 11
        from diffcut_engine.graph.xp import cupy_available

        if not cupy_available():
            info["error"] = "CuPy is missing or sees no CUDA device"
            return 12
        import cupy

        info["cupy"] = cupy.__version__
    else:
        info["cupy"] = "numpy stands in (smoke mode)"
    try:
        import diffusers
    except ImportError as exc:
        info["error"] = f"diffusers: {exc}"
        return 13
    info["diffusers"] = diffusers.__version__
    info["seconds"] = round(check.elapsed(), 2)
    return 0


# ------------------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------------------

def step_triton(check: Check, sizes: dict, entry: dict) -> None:
    import numpy as np
    import torch

    import diffcut_engine.kernels.affinity as kaff
    from diffcut_engine.graph.device import device_affinity

    smoke = check.mode == "smoke"
    dev = "cpu" if smoke else "cuda"
    alpha, passed, rows = 10.0, True, []
    entry["cases"] = rows
    for n, c in sizes["affinity"]:
        x = clustered_tokens(n, c, seed=n).to(dev)
        row = {"N": n, "C": c}
        rows.append(row)
        t = time.perf_counter()
        w, d = kaff.fused_affinity(x, alpha)
        sync(dev)
        row["first_call_ms"] = round((time.perf_counter() - t) * 1e3, 2)  # compilation + autotuning
        w_ref, d_ref = kaff.affinity_reference(x, alpha)
        w64 = reference64(x, alpha)
        row["ieee_vs_fp32_max_abs"] = float((w - w_ref).abs().max())
        row["ieee_vs_fp64_max_abs"] = float((w.double() - w64).abs().max())
        row["fp32_ref_vs_fp64_max_abs"] = float((w_ref.double() - w64).abs().max())
        row["degrees_rel_err"] = float(((d - d_ref).abs() / d_ref.abs()).max())
        row["symmetric"] = bool(torch.equal(w, w.T))
        row["exact_0_and_1"] = bool(w.min().item() == 0.0 and w.max().item() == 1.0)
        w_tf32, _ = kaff.fused_affinity(x, alpha, precision="tf32")
        row["tf32_vs_fp64_max_abs"] = float((w_tf32.double() - w64).abs().max())
        row["parity_ok"] = bool(torch.allclose(w, w_ref, rtol=2e-5, atol=1e-6) and row["symmetric"]
                                and row["exact_0_and_1"])
        passed &= row["parity_ok"]
        reps = sizes["reps"]
        if smoke:
            xs = x.numpy()
        else:
            import cupy

            xs = cupy.asarray(x)
        row["speed"] = {
            "triton_ieee": timed(lambda: kaff.fused_affinity(x, alpha, check_finite=False), reps, dev),
            "triton_tf32": timed(lambda: kaff.fused_affinity(x, alpha, precision="tf32", check_finite=False),
                                 reps, dev),
            "torch_reference": timed(lambda: kaff.affinity_reference(x, alpha, check_finite=False), reps, dev),
            ("numpy" if smoke else "cupy"): timed(lambda: device_affinity(xs, alpha, check_finite=False), reps, dev),
        }
        ref = row["speed"]["torch_reference"]["median_ms"]
        row["speedup_vs_torch"] = {k: round(ref / v["median_ms"], 3) for k, v in row["speed"].items()
                                   if v["median_ms"] > 0}
        w = w_ref = w64 = w_tf32 = None  # free before the next size
        check.log(f"  affinity N={n} C={c}: parity {row['parity_ok']}, ieee {row['speed']['triton_ieee']} ms")
        check.save()
    entry["checks_passed"] = bool(passed)
    if not np.isfinite([r["ieee_vs_fp64_max_abs"] for r in rows]).all():
        entry["checks_passed"] = False


def step_graph(check: Check, sizes: dict, entry: dict) -> None:
    import numpy as np

    import diffcut_engine.graph.eigen as eigen
    from diffcut_engine.graph import device_ncut_trees, ncut_tree

    smoke = check.mode == "smoke"
    dev = "cpu" if smoke else "cuda"
    if smoke:
        xp = np
    else:
        import cupy as xp
    taus, tau_max, passed = (0.3, 0.5), 0.5, True
    entry["grids"] = []
    for h, w in sizes["grids"]:
        feats = [planted_grid(h, w, sizes["channels"], seed=100 * h + i) for i in range(sizes["images"])]
        row = {"grid": f"{h}x{w}", "images": len(feats)}
        entry["grids"].append(row)
        n_host = min(len(feats), sizes["host_images"][h])
        t = time.perf_counter()
        host = [ncut_tree(f, tau_max=tau_max) for f in feats[:n_host]]
        row["host_ms_per_image"] = round((time.perf_counter() - t) * 1e3 / n_host, 3)
        dev_feats = [xp.asarray(f) for f in feats]

        def run():
            return device_ncut_trees(dev_feats, tau_max=tau_max)

        previous = eigen.get_stacked_eigh()
        row["methods"] = {}
        try:
            for method in ("auto", "batched", "loop", "torch"):
                if check.remaining() < 10:
                    row["methods"][method] = {"status": "skipped (deadline)"}
                    continue
                eigen.set_stacked_eigh(method)
                out = {}
                trees = []

                def solve():
                    trees[:] = run()

                out.update(timed(solve, max(0, sizes["reps"] - 2), dev))
                out["ms_per_image"] = round(out["median_ms"] / len(feats), 4)
                out["same_partitions"] = int(sum(same_partition(a.cut(tau), b.cut(tau))
                                                 for a, b in zip(host, trees) for tau in taus))
                out["compared"] = len(host) * len(taus)
                out["segments_at_0.3"] = [int(b.cut(0.3).max()) + 1 for b in trees[:4]]
                row["methods"][method] = out
                passed &= out["same_partitions"] == out["compared"]
                check.log(f"  graph {h}x{w} {method}: {out['ms_per_image']} ms/image, "
                          f"{out['same_partitions']}/{out['compared']} partitions as the host")
                check.save()
        finally:
            eigen.set_stacked_eigh(previous)
        if not smoke and check.remaining() > 10:  # CUDA tensors: the Triton affinity handed to CuPy by DLPack
            import torch

            tensors = [torch.from_numpy(f).cuda() for f in feats]
            row["cuda_tensor_input"] = timed(lambda: device_ncut_trees(tensors, tau_max=tau_max), 2, dev)
            row["cuda_tensor_input"]["ms_per_image"] = round(row["cuda_tensor_input"]["median_ms"] / len(feats), 4)
    entry["target"] = "< 2 ms per 32x32 grid in a batch of 16 (PERFORMANCE.md)"
    entry["checks_passed"] = bool(passed)


def _build_encoder(check: Check, sizes: dict):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffcut_engine.encoders.diffusion import DiffusionEncoder

    smoke = check.mode == "smoke"
    scheduler = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if smoke:
        unet_cfg = dict(sample_size=8, in_channels=4, out_channels=4,
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                        block_out_channels=(32, 64, 64), layers_per_block=2, transformer_layers_per_block=(1, 2, 3),
                        attention_head_dim=(2, 4, 4), cross_attention_dim=80, norm_num_groups=32,
                        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                        projection_class_embeddings_input_dim=6 * 8 + 40)
        vae_cfg = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                       up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                       layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=64,
                       scaling_factor=0.13025)
        text, pooled, dev, dtype = 80, 40, "cpu", "fp32"
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from ssd1b_config import POOLED_DIM, SDXL_VAE, SSD1B_UNET

        unet_cfg, vae_cfg = SSD1B_UNET, SDXL_VAE
        text, pooled, dev, dtype = SSD1B_UNET["cross_attention_dim"], POOLED_DIM, "cuda", "fp16"
    torch.manual_seed(0)
    with torch.device(dev):  # built where it runs: no multi-GB save or host copy
        unet = UNet2DConditionModel(**unet_cfg)
        if not smoke:
            unet = unet.half()
        vae = AutoencoderKL(**vae_cfg)
        prompt = torch.randn(1, 77, text) * 0.5
        pooled_embeds = torch.randn(1, pooled) * 0.5
    return DiffusionEncoder(unet, vae, scheduler, prompt, pooled_embeds, model="random SSD-1B-sized", device=dev,
                            dtype=dtype)


def step_encoder(check: Check, sizes: dict, entry: dict) -> None:
    import torch

    from diffcut_engine.graph import device_ncut_trees

    smoke = check.mode == "smoke"
    dev = "cpu" if smoke else "cuda"
    t = time.perf_counter()
    enc = _build_encoder(check, sizes)
    sync(dev)
    entry["build_s"] = round(time.perf_counter() - t, 2)
    entry["model"] = "SSD-1B-sized random UNet (fp16) + SDXL VAE (fp32)" if not smoke else "tiny SDXL-type, fp32"
    entry["unet_params_M"] = round(sum(p.numel() for p in enc.unet.parameters()) / 1e6, 1)
    entry["vae_tf32"] = enc.vae_tf32
    px, runs = sizes["px"], []
    entry["runs"] = runs
    for graphs in (False, True):
        if graphs and smoke:
            runs.append({"cuda_graphs": True, "status": "skipped: needs CUDA"})
            continue
        enc.configure_speed(cuda_graphs=graphs)
        for batch in sizes["batches"]:
            if check.remaining() < 20:
                runs.append({"cuda_graphs": graphs, "batch": batch, "status": "skipped (deadline)"})
                continue
            pixels = torch.rand(batch, 3, px, px, device=dev) * 2 - 1
            if not smoke:
                torch.cuda.reset_peak_memory_stats()
            reps = max(0, sizes["reps"] - (2 if batch > 1 else 0))
            enc_t = timed(lambda: enc.encode(pixels), reps, dev)

            def vae_only():
                with torch.no_grad():
                    enc.vae.encode(pixels).latent_dist.mean

            vae_t = timed(vae_only, reps, dev)
            feats = enc.encode(pixels)
            graph_t = timed(lambda: [tr.cut(0.3) for tr in device_ncut_trees(list(feats), tau_max=0.5)],
                            min(1, reps), dev)

            def end_to_end():
                f = enc.encode(pixels)
                return [tr.cut(0.3) for tr in device_ncut_trees(list(f), tau_max=0.5)]

            e2e_t = timed(end_to_end, min(1, reps), dev)
            run = {"cuda_graphs": graphs, "batch": batch, "px": px, "encode": enc_t, "vae": vae_t, "graph": graph_t,
                   "end_to_end": e2e_t,
                   "encoder_img_per_s": round(batch * 1e3 / enc_t["median_ms"], 2),
                   "vae_share": round(vae_t["median_ms"] / enc_t["median_ms"], 3),
                   "end_to_end_img_per_s": round(batch * 1e3 / e2e_t["median_ms"], 2),
                   "features_finite": bool(torch.isfinite(feats).all())}
            if not smoke:
                run["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            runs.append(run)
            check.log(f"  encoder graphs={graphs} batch={batch}: {run['encoder_img_per_s']} img/s, "
                      f"e2e {run['end_to_end_img_per_s']} img/s")
            check.save()
            pixels = feats = None  # free before the next batch
    entry["target"] = ">= 100 img/s end to end at 1024 px on one H100 (FLOP floor ~160 img/s)"
    entry["end_to_end_scope"] = "encode + device graph stage + cut at tau 0.3 (grid labels; no pixel refinement)"
    entry["checks_passed"] = all(r.get("features_finite", True) for r in runs)


# ------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("gpu", "smoke"), default="gpu")
    parser.add_argument("--out", required=True, help="folder for results.json")
    parser.add_argument("--deadline", type=float, default=None, help="internal deadline in seconds")
    parser.add_argument("--steps", default="triton,graph,encoder", help="comma-separated subset, in order")
    args = parser.parse_args(argv)
    sizes = SIZES[args.mode]
    os.makedirs(args.out, exist_ok=True)
    check = Check(args.out, args.mode, args.deadline or sizes["deadline"])
    check.log(f"gpu_check ({args.mode}), deadline {check.deadline:.0f} s, results in {args.out}/results.json")
    code = preflight(check)
    check.results["preflight"]["exit_code"] = code
    if code:
        check.results["status"] = f"preflight failed: {EXIT_CODES[code]}"
        check.results["exit_code"] = code
        check.save()
        check.log(f"preflight failed (exit {code}): {check.results['preflight'].get('error')}")
        return code
    check.log(f"preflight ok in {check.elapsed():.1f} s: {json.dumps(check.results['preflight'])}")
    steps = {"triton": step_triton, "graph": step_graph, "encoder": step_encoder}
    wanted = [s for s in args.steps.split(",") if s]
    unknown = [s for s in wanted if s not in steps]
    if unknown:
        print(f"unknown steps: {unknown}", file=sys.stderr)
        return 2
    for name in wanted:
        check.step(name, lambda entry, fn=steps[name]: fn(check, sizes, entry), sizes["budgets"][name])
    statuses = {k: v.get("status") for k, v in check.results["steps"].items()}
    if any(s == "skipped" for s in statuses.values()):
        code = 20
    elif all(s == "ok" for s in statuses.values()):
        code = 0
    else:
        code = 1
    check.results.update(status=EXIT_CODES[code], exit_code=code)
    check.save()
    check.log(f"done: {statuses} -> exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
