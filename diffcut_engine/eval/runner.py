"""The benchmark runner behind ``diffcut eval``: DiffCut over a dataset with the official protocol.

Per image (DiffCut's ``eval_diffcut.py``):

1. centre-crop the image to the square of side ``min(H, W) - 1``, resize to the network size, encode (in
   batches, through :meth:`Engine.iter_segment`);
2. recursive NCut on the feature grid, concept assignment directly at the evaluation size (128x128);
3. ground truth: the same crop, nearest-exact to the network size, nearest to the evaluation size
   (:func:`~diffcut_engine.eval.datasets.eval_labels`);
4. VOC, Context, COCO-Object: merge the clusters not matched to a foreground class into one background
   cluster (:func:`~diffcut_engine.eval.metrics.merge_background`);
5. PAMR (10 iterations, dilations 1, 2, 4, 8) on the image bilinearly downsized to the evaluation size, then a
   3x3 median filter, if the engine's config has ``refine=True`` (the paper's ``--refinement``);
6. per-image Hungarian matching; TP/FP/FN are summed over the dataset.

Several thresholds (``taus``) are evaluated from one NCut tree per image (``Engine.at_tau``): the encoder and
the eigen-solves run once per image.

**Resuming.** With an output path, every finished image is appended to ``<stem>.cache.jsonl`` (its integer
counts for every tau) and flushed at once. A run that is killed and started again with the same settings reads
the cache, skips the images it holds and computes the rest; since the totals are sums of integers, the final
numbers are identical to those of an uninterrupted run. Different settings raise an error unless ``restart``.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DiffCutError, InputError
from ..graph.validation import check_tau, tau_name
from .datasets import PUBLISHED, SegmentationDataset, eval_labels
from .metrics import FP_COUNTING, ImageScore, Scorer, merge_background, score_image

logger = logging.getLogger("diffcut_engine")

__all__ = ["evaluate", "eval_engine", "output_paths", "score_prediction", "format_table", "CACHE_VERSION"]

CACHE_VERSION = 1
METHODS = ("diffcut", "rwncut", "autosc")


# ------------------------------------------------------------------------------------------------------------
# Protocol pieces
# ------------------------------------------------------------------------------------------------------------

def eval_engine(engine, eval_size: int, method: Optional[str] = None):
    """The engine used for scoring: same encoder and settings, but centre-crop preprocessing, labels at
    ``eval_size`` and no built-in refinement (the runner refines after the background merge); ``method``
    overrides the engine's."""
    from ..engine import Engine

    cfg = engine.config.replace(resize_mode="center_crop", output_size=(eval_size, eval_size), refine=False,
                                tau=engine.tau, method=method or engine.config.method)
    return Engine(cfg, encoder=engine.encoder)


def score_prediction(pred: np.ndarray, gt: np.ndarray, image=None, *, num_classes: int, background_merge: bool,
                     fp_counting: str = "official", refine: Optional[dict] = None) -> Tuple[ImageScore, np.ndarray]:
    """Steps 4-6 of the protocol for one image and one tau.

    Parameters
    ----------
    pred : numpy.ndarray
        (S, S) int cluster ids at the evaluation size.
    gt : numpy.ndarray
        (S, S) int class ids, -1 = ignore (background and void for merged datasets).
    image : torch.Tensor, optional
        (3, S, S) float [0, 1]: the image at the evaluation size, needed when ``refine`` is given.
    num_classes : int
    background_merge : bool
    fp_counting : {"official", "present"}
    refine : dict, optional
        ``{"iters": int, "dilations": tuple}``: run PAMR and the median filter after the merge.

    Returns
    -------
    score : ImageScore
    pred : numpy.ndarray
        The scored prediction (after merge and refinement).
    """
    gt = np.asarray(gt, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if background_merge:
        pred, gt = merge_background(pred, gt, num_classes, fp_counting=fp_counting)
    if refine is not None:
        import torch

        from .. import refine as refine_mod

        # Number the clusters 0..K-1 in increasing order, as the official code's one-hot over torch.unique does.
        _, compact = np.unique(pred, return_inverse=True)
        labels = torch.from_numpy(compact.reshape(pred.shape).astype(np.int64)).to(image.device)
        out = refine_mod.refine_at(image, labels, num_segments=int(compact.max()) + 1, iters=refine["iters"],
                                   dilations=refine["dilations"], median=True,
                                   backend=refine.get("backend", "auto"))
        pred = out.cpu().numpy().astype(np.int64)
    return score_image(pred, gt, num_classes, fp_counting=fp_counting), pred


def _eval_image(view, net_size: int, eval_size: int):
    """The image as the official PAMR sees it: bilinear to the network size, then bilinear to the eval size."""
    from .. import images

    return images.resize(images.resize(view, (net_size, net_size)), (eval_size, eval_size))


# ------------------------------------------------------------------------------------------------------------
# Output files and the cache
# ------------------------------------------------------------------------------------------------------------

def output_paths(out) -> Dict[str, Path]:
    """Where results go: ``out`` is a folder (``results.json`` in it) or a ``.json`` file path.

    Returns a dict with ``results`` (the JSON), ``cache`` (``<stem>.cache.jsonl``), ``confusion`` (a format
    string taking the tau) and ``overlays`` (a folder).
    """
    out = Path(out).expanduser()
    if out.suffix.lower() == ".json":
        folder, stem = out.parent, out.stem
    else:
        folder, stem = out, "results"
    return {"folder": folder, "results": folder / f"{stem}.json", "cache": folder / f"{stem}.cache.jsonl",
            "confusion": folder / (stem + "_confusion_tau{tau}.png"), "overlays": folder / f"{stem}_overlays"}


def _jsonable(x):
    return json.loads(json.dumps(x))


class _Cache:
    """Append-only per-image results: a header line with the settings, then one JSON line per finished image."""

    def __init__(self, path: Optional[Path], settings: dict, *, restart: bool):
        self.path = path
        self.records: Dict[int, dict] = {}
        self.fh = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        has_header = path.exists() and not restart and self._load(settings)
        if not has_header:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"diffcut_eval_cache": CACHE_VERSION, "settings": settings}) + "\n")
        self.fh = open(path, "a", encoding="utf-8")

    def _load(self, settings: dict) -> bool:
        """Read the records of an earlier run; False if the file has no complete header yet."""
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if not complete:
            return False            # killed while writing the header: start over
        try:
            header = json.loads(complete[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{self.path} is not a diffcut eval cache (bad header); delete it or use --restart")
        if not isinstance(header, dict) or header.get("diffcut_eval_cache") != CACHE_VERSION:
            raise InputError(f"{self.path} is not a diffcut eval cache of version {CACHE_VERSION}; delete it or "
                             "use --restart")
        old = header.get("settings", {})
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff[:4])
            raise InputError(f"{self.path} holds results made with other settings ({detail}); use --restart to "
                             "discard them, or another --out")
        for n, line in enumerate(complete[1:], 2):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self.records[int(rec["index"])] = rec
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                raise InputError(f"{self.path} line {n} is corrupt; delete the file or use --restart")
        if tail:
            # A line cut short when the previous run was killed: drop it, keep everything before it.
            with open(self.path, "r+b") as fh:
                fh.truncate(len(raw) - len(tail))
            logger.info("dropped an unfinished line at the end of %s", self.path)
        return True

    def append(self, record: dict) -> None:
        self.records[record["index"]] = record
        if self.fh is not None:
            self.fh.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _record(index: int, name: str, per_tau: Dict[float, Tuple[ImageScore, int]]) -> dict:
    taus = {}
    for tau, (score, k) in per_tau.items():
        conf = score.class_confusion()
        rows, cols = np.nonzero(conf)
        taus[_tau_key(tau)] = {"tp": score.tp.tolist(), "fp": score.fp.tolist(), "fn": score.fn.tolist(),
                               "total": score.total, "segments": int(k),
                               "confusion": np.stack([rows, cols, conf[rows, cols]], 1).tolist()}
    return {"index": index, "name": name, "taus": taus}


def _counts(value, length: Optional[int] = None) -> Optional[np.ndarray]:
    """``value`` as an int64 array of non-negative integers (of ``length``), else ``None``."""
    if isinstance(value, bool) or (length is not None and not isinstance(value, list)):
        return None
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if arr.dtype == object or arr.dtype.kind not in "iu" or (arr < 0).any():
        return None
    if length is not None and arr.shape != (length,):
        return None
    return arr.astype(np.int64)


def record_problem(rec, taus, num_classes: int) -> Optional[str]:
    """Why a cached per-image record cannot be trusted (``None`` if it checks out).

    A record must hold, for every tau of the run, per-class ``tp``, ``fp``, ``fn`` (``num_classes`` non-negative
    integers), ``total`` labelled pixels, ``segments`` >= 1 and the class confusion as ``[row, col, count]``
    triples inside the (N, N + 1) matrix, and these must agree: the confusion sums to ``total``, each class row
    sums to ``tp + fn`` and holds ``tp`` on its diagonal, and ``tp + fp`` never exceeds ``total``.
    """
    if not isinstance(rec, dict) or not isinstance(rec.get("taus"), dict):
        return "no \"taus\" table"
    for t in taus:
        r = rec["taus"].get(_tau_key(t))
        if not isinstance(r, dict):
            return f"no entry for tau {_tau_key(t)}"
        tp, fp, fn = (_counts(r.get(k), num_classes) for k in ("tp", "fp", "fn"))
        if tp is None or fp is None or fn is None:
            return f"tp, fp and fn must be {num_classes} non-negative integers each"
        total, segments = r.get("total"), r.get("segments")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            return f"bad total {total!r}"
        if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
            return f"bad segment count {segments!r}"
        conf = _counts(r.get("confusion"))
        if conf is None or (conf.size and (conf.ndim != 2 or conf.shape[1] != 3)):
            return "bad confusion entries"
        conf = conf.reshape(-1, 3)
        if (conf[:, 0] >= num_classes).any() or (conf[:, 1] > num_classes).any():
            return "confusion entries outside the class range"
        matrix = np.zeros((num_classes, num_classes + 1), np.int64)
        np.add.at(matrix, (conf[:, 0], conf[:, 1]), conf[:, 2])
        if int(matrix.sum()) != total or (matrix.sum(axis=1) != tp + fn).any() or \
                (np.diagonal(matrix[:, :num_classes]) != tp).any() or int((tp + fp).max(initial=0)) > total:
            return "counts that do not add up"
    return None


def _tau_key(tau: float) -> str:
    return tau_name(tau)


# ------------------------------------------------------------------------------------------------------------
# Pictures (Pillow only)
# ------------------------------------------------------------------------------------------------------------

def _class_colours(n: int) -> np.ndarray:
    from .. import viz

    return viz.palette(n)


def _colour_gt(gt: np.ndarray, colours: np.ndarray) -> np.ndarray:
    out = np.zeros(gt.shape + (3,), np.uint8)
    ok = gt >= 0
    out[ok] = colours[gt[ok]]
    return out


def _colour_pred(pred: np.ndarray, score: ImageScore, colours: np.ndarray) -> np.ndarray:
    """Clusters in the colour of the class they were matched to; unmatched clusters grey."""
    lut = np.tile(np.array([[128, 128, 128]], np.uint8), (score.hist.shape[1], 1))
    ok = score.matched >= 0
    lut[score.matched[ok]] = colours[np.flatnonzero(ok)]
    return lut[pred]


def _write_overlay(path: Path, image, gt: np.ndarray, preds: List[Tuple[np.ndarray, ImageScore]],
                   colours: np.ndarray, scale: int = 2) -> None:
    from PIL import Image

    rgb = (image.permute(1, 2, 0).cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    panels = [rgb, _colour_gt(gt, colours)] + [_colour_pred(p, s, colours) for p, s in preds]
    sep = np.full((rgb.shape[0], 2, 3), 255, np.uint8)
    strip = np.concatenate([x for panel in panels for x in (panel, sep)][:-1], axis=1)
    strip = np.kron(strip, np.ones((scale, scale, 1), np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path)


def _write_confusion(path: Path, conf: np.ndarray, class_names: Sequence[str]) -> None:
    """Row-normalised confusion (true class rows; matched class columns, the last one 'unmatched') as a PNG."""
    from PIL import Image, ImageDraw

    n = conf.shape[0]
    rows = conf.sum(axis=1, keepdims=True)
    frac = np.divide(conf, rows, out=np.zeros(conf.shape, np.float64), where=rows > 0)
    cell = max(4, min(24, 720 // max(n, 1)))
    # white (0) -> dark blue (1)
    lo, hi = np.array([255, 255, 255.0]), np.array([8, 48, 107.0])
    grid = (lo + frac[..., None] * (hi - lo)).round().astype(np.uint8)
    grid = np.kron(grid, np.ones((cell, cell, 1), np.uint8))
    label_w = 130 if n <= 60 else 0
    canvas = Image.new("RGB", (label_w + grid.shape[1] + 4, grid.shape[0] + 20), "white")
    canvas.paste(Image.fromarray(grid), (label_w, 16))
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 2), "rows: true class; columns: matched class, last = unmatched", fill=(0, 0, 0))
    if label_w and cell >= 10:
        for i, name in enumerate(class_names):
            draw.text((2, 16 + i * cell + (cell - 10) // 2), str(name)[:20], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ------------------------------------------------------------------------------------------------------------
# The runner
# ------------------------------------------------------------------------------------------------------------

def _settings(dataset: SegmentationDataset, engine, taus, eval_size, fp_counting, method) -> dict:
    """What defines the numbers (and so must match to resume); not the device or the batch size."""
    cfg = engine.config
    ev_refine = cfg.refine_settings("eval")
    extra = {}
    if method == "rwncut":  # (only then: caches of diffcut runs keep their settings)
        import dataclasses

        from ..config import RWNCutOptions
        extra["rwncut"] = dataclasses.asdict(cfg.rwncut or RWNCutOptions())
    return _jsonable({**extra,
        "dataset": dataset.key, "root": str(dataset.root.resolve()), "layout": dataset.layout,
        "split_file": str(dataset.split_file.resolve()) if dataset.split_file else None,
        "method": method, "encoder": f"{type(engine.encoder).__module__}.{type(engine.encoder).__qualname__}",
        "model": cfg.model, "backbone": cfg.backbone,
        "revision": cfg.revision, "size": list(cfg.size), "timestep": cfg.timestep, "seed": cfg.seed,
        "alpha": cfg.alpha, "compat": cfg.compat, "dtype": cfg.dtype, "refine": bool(cfg.refine),
        "pamr_iters": ev_refine["iters"], "pamr_dilations": list(ev_refine["dilations"]), "eval_size": eval_size,
        "taus": list(taus), "fp_counting": fp_counting,
    })


def _check_taus(taus, default: float) -> Tuple[float, ...]:
    if taus is None:
        return (float(default),)
    if isinstance(taus, numbers.Real):
        taus = (taus,)
    try:
        out = tuple(sorted({check_tau(t, "taus") for t in taus}))
    except (TypeError, InputError):
        raise InputError(f"taus must be finite positive numbers, got {taus!r}") from None
    if not out:
        raise InputError(f"taus must be finite positive numbers, got {taus!r}")
    return out


def evaluate(dataset: SegmentationDataset, engine, *, taus=None, eval_size: int = 128,
             fp_counting: str = "official", out=None, limit: Optional[int] = None, overlays: int = 4,
             restart: bool = False, progress: bool = True, method: str = "diffcut") -> dict:
    """Evaluate DiffCut on a benchmark with the official protocol.

    Parameters
    ----------
    dataset : SegmentationDataset
        From :func:`~diffcut_engine.eval.datasets.get_dataset`.
    engine : Engine
        Its encoder and settings are used (``alpha``, ``compat``, ``size``, PAMR settings; ``refine`` turns the
        PAMR step of the protocol on or off). Preprocessing is switched to the evaluation's centre crop.
    taus : float or sequence of float, optional
        NCut thresholds; all come from one tree per image. Default: the engine's tau.
    eval_size : int
        Side of the scored label maps (128 in the paper).
    fp_counting : {"official", "present"}
        See :mod:`diffcut_engine.eval.metrics`.
    out : str or pathlib.Path, optional
        A folder, or a ``.json`` path; the per-image cache, the confusion matrix PNG(s) and the overlays go
        beside it. Without it nothing is written and nothing can be resumed.
    limit : int, optional
        Evaluate only the first ``limit`` images (a later run with a larger limit resumes from the cache).
    overlays : int
        Write example strips (image | ground truth | prediction at each tau) for the first this-many images.
    restart : bool
        Discard a cache made with other settings instead of raising.
    progress : bool
        Show a progress bar with the running mIoU on stderr.
    method : {"diffcut", "rwncut", "autosc"}
        The segmentation method (overrides the engine's ``config.method``); ``rwncut`` takes one tau and the
        engine's ``config.rwncut`` options; ``autosc`` picks K itself (its tau is only a label of the results).

    Returns
    -------
    dict
        The content of the results JSON: ``settings``, ``num_images``, ``failed``, ``published`` and one entry
        per tau in ``results`` with ``miou``, ``pixel_accuracy`` (fractions in [0, 1]), ``mean_segments`` and
        the per-class table.

    Raises
    ------
    InputError
        For bad arguments or a cache made with other settings.
    """
    from ..utils.progress import progress_bar

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if fp_counting not in FP_COUNTING:
        raise InputError(f"unknown fp_counting {fp_counting!r}; choose one of {', '.join(FP_COUNTING)}")
    if isinstance(eval_size, bool) or not isinstance(eval_size, int) or eval_size < 2:
        raise InputError(f"eval_size must be an integer >= 2, got {eval_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    taus = _check_taus(taus, engine.tau)
    if method in ("rwncut", "autosc") and len(taus) > 1:
        raise InputError(f"method={method!r} evaluates one tau per run (it builds no NCut tree; autosc ignores tau)")
    ev = eval_engine(engine, eval_size, method=method)
    cfg = ev.config
    net_size = cfg.size[0]
    # The evaluation protocol refines with the official eval settings (preset "eval": 10 iterations, dilations
    # 1, 2, 4, 8) at eval_size, unless pamr_iters / pamr_dilations are set explicitly.
    refine = engine.config.refine_settings("eval") if engine.config.refine else None
    if refine is not None:
        refine["backend"] = engine.config.refine_backend
    settings = _settings(dataset, engine, taus, eval_size, fp_counting, method)
    paths = output_paths(out) if out is not None else None
    n_total = len(dataset) if limit is None else min(limit, len(dataset))
    samples = list(dataset.samples[:n_total])
    colours = _class_colours(dataset.num_classes)

    cache = _Cache(paths["cache"] if paths else None, settings, restart=restart)
    for index, rec in cache.records.items():
        if index >= len(dataset.samples) or dataset.samples[index].name != rec.get("name"):
            cache.close()
            raise InputError(f"{paths['cache']} lists image {index} as {rec.get('name')!r}, which is not that image "
                             "of this dataset; use --restart")
    for index, rec in list(cache.records.items()):
        problem = record_problem(rec, taus, dataset.num_classes)
        if problem is not None:   # a damaged or edited record: recompute that image, never count it
            logger.warning("%s: the cached record of image %d (%s) is invalid (%s); recomputing it",
                           paths["cache"], index, rec.get("name"), problem)
            del cache.records[index]
    scorers = {t: Scorer(dataset.num_classes, dataset.background_merge, fp_counting=fp_counting) for t in taus}
    confusion = {t: np.zeros((dataset.num_classes, dataset.num_classes + 1), np.int64) for t in taus}
    segments = {t: [] for t in taus}

    def add(rec: dict) -> None:
        for t in taus:
            r = rec["taus"][_tau_key(t)]
            scorers[t].add(r)
            segments[t].append(r["segments"])
            c = np.asarray(r["confusion"], dtype=np.int64).reshape(-1, 3)
            np.add.at(confusion[t], (c[:, 0], c[:, 1]), c[:, 2])

    todo = [i for i in range(n_total) if i not in cache.records]
    for i in range(n_total):
        if i in cache.records:
            add(cache.records[i])
    failed: List[dict] = []
    bar = progress_bar(total=n_total, enabled=progress, desc=f"eval {dataset.key}", unit="img")
    bar.update(n_total - len(todo))
    t_start = time.perf_counter()
    seg_kwargs = {"tau": taus[0], "return_image": True}
    if len(taus) > 1:
        seg_kwargs.update(tree_tau_max=taus[-1], return_features=True)
    try:
        stream = ev.iter_segment([samples[i].image for i in todo], **seg_kwargs)
        for res in stream:
            index = todo[res.index]
            sample = samples[index]
            if not res.ok:
                failed.append({"index": index, "name": sample.name, "error": str(res.error)})
                logger.warning("skipping %s: %s", sample.name, res.error)
                bar.update(1)
                continue
            seg0 = res.segmentation
            try:
                gt_full = dataset.load_label(sample)
                if gt_full.shape != tuple(seg0.image_size):
                    raise InputError(f"{sample.label}: label is {gt_full.shape[1]}x{gt_full.shape[0]} but the "
                                     f"image is {seg0.image_size[1]}x{seg0.image_size[0]}")
                gt = eval_labels(gt_full, seg0.crop_box, net_size, eval_size)
            except DiffCutError as exc:
                failed.append({"index": index, "name": sample.name, "error": str(exc)})
                logger.warning("skipping %s: %s", sample.name, exc)
                bar.update(1)
                continue
            image = None
            if refine or index < overlays:
                image = _eval_image(res.image, net_size, eval_size).to(ev.device)
            per_tau, shown = {}, []
            for t in taus:
                seg = seg0 if t == taus[0] else ev.at_tau(seg0, t, res.image)
                score, pred = score_prediction(seg.labels, gt, image, num_classes=dataset.num_classes,
                                               background_merge=dataset.background_merge, fp_counting=fp_counting,
                                               refine=refine)
                per_tau[t] = (score, seg.num_segments)
                shown.append((pred, score))
            rec = _record(index, sample.name, per_tau)
            cache.append(rec)
            add(rec)
            if paths is not None and index < overlays:
                gt_shown = np.where(gt == -1, dataset.num_classes - 1, gt) if dataset.background_merge else gt
                _write_overlay(paths["overlays"] / f"{index:05d}_{Path(sample.name).name}.png", image, gt_shown,
                               shown, colours)
            bar.update(1)
            miou = scorers[taus[0]].compute()["miou"]
            bar.set_postfix_str(f"mIoU {100 * miou:.1f}" + (f" @ tau {taus[0]:g}" if len(taus) > 1 else ""))
    finally:
        bar.close()
        cache.close()

    results = _results(dataset, ev, settings, taus, scorers, confusion, segments, failed, n_total,
                       time.perf_counter() - t_start, len(todo))
    if paths is not None:
        files = {"cache": str(paths["cache"]), "confusion": {}, "overlays": str(paths["overlays"])}
        for t in taus:
            p = Path(str(paths["confusion"]).format(tau=_tau_key(t)))
            _write_confusion(p, confusion[t], dataset.class_names)
            files["confusion"][_tau_key(t)] = str(p)
        results["files"] = files
        tmp = paths["results"].with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
        os.replace(tmp, paths["results"])
    return results


def _nan_to_none(x) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


def _results(dataset, ev, settings, taus, scorers, confusion, segments, failed, n_total, seconds, n_new) -> dict:
    per_tau = []
    for t in taus:
        m = scorers[t].compute()
        table = [{"class": name, "iou": _nan_to_none(iou), "tp": int(tp), "fp": int(fp), "fn": int(fn)}
                 for name, iou, tp, fp, fn in zip(dataset.class_names, m["per_class_iou"], m["tp"], m["fp"], m["fn"])]
        per_tau.append({"tau": t, "miou": _nan_to_none(m["miou"]), "pixel_accuracy": _nan_to_none(m["pixel_accuracy"]),
                        "mean_segments": float(np.mean(segments[t])) if segments[t] else None,
                        "num_scored": m["num_images"], "per_class": table,
                        "confusion": confusion[t].tolist()})
    return {
        "dataset": dataset.key, "title": dataset.title, "num_classes": dataset.num_classes,
        "background_merge": dataset.background_merge, "num_images": n_total, "dataset_size": len(dataset),
        "official_size": dataset.expected_size,
        "complete": n_total == dataset.expected_size, "failed": failed, "engine": repr(ev),
        "settings": settings, "published_miou_percent": PUBLISHED.get(dataset.key, {}),
        "seconds_this_run": round(seconds, 3), "images_this_run": n_new, "results": per_tau,
    }


def format_table(results: dict) -> str:
    """A plain-text summary: mIoU and pixel accuracy per tau beside the published numbers, then per-class IoU."""
    lines = [f"{results['title']}: {results['num_images']} images"
             + ("" if results["complete"] else f" (official split: {results['official_size']})")
             + (f", {len(results['failed'])} failed" if results["failed"] else "")]
    pub = results.get("published_miou_percent", {})
    if pub:
        lines.append("published mIoU: " + ", ".join(f"{k} {v:.1f}" for k, v in pub.items()))
    settings = results.get("settings", {})
    method = settings.get("method", "diffcut")
    # AutoSC and the random-walk NCut's automatic rules use no tau: name the method, not a tau it ignored
    uses_tau = method == "diffcut" or (method == "rwncut"
                                       and settings.get("rwncut", {}).get("threshold") == "constant")
    label = (lambda t: f"tau {t:g}") if uses_tau else (lambda t: f"method {method}")
    for r in results["results"]:
        miou = "n/a" if r["miou"] is None else f"{100 * r['miou']:.2f}"
        acc = "n/a" if r["pixel_accuracy"] is None else f"{100 * r['pixel_accuracy']:.2f}"
        seg = "n/a" if r["mean_segments"] is None else f"{r['mean_segments']:.1f}"
        lines.append(f"{label(r['tau'])}: mIoU {miou}  pixel accuracy {acc}  mean segments {seg}")
    first = results["results"][0]
    lines.append(f"per-class IoU ({label(first['tau'])}):" if not uses_tau else
                 f"per-class IoU at tau {first['tau']:g}:")
    for row in first["per_class"]:
        iou = "  n/a" if row["iou"] is None else f"{100 * row['iou']:5.1f}"
        lines.append(f"  {row['class']:<24s} {iou}")
    return "\n".join(lines)


def print_summary(results: dict, file=sys.stdout) -> None:
    print(format_table(results), file=file)
