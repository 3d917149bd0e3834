"""The open-vocabulary evaluation of the official ``eval_diffcut_openvoc.py`` (VOC20, Pascal Context, COCO-Object).

Per image, as the official script does:

1. centre crop (side ``min(H, W) - 1``) resized to the network size (1024 px), DiffCut at tau with the concept
   assignment at the network size;
2. PAMR with 15 iterations and dilations (1, 2, 4, 8, 12, 24, 32, 64) on that image, then a 3x3 median filter
   (unless the engine's ``refine`` is off; the official ``--refinement`` is always on);
3. each segment named by CLIP among the dataset's official class list (:mod:`.datasets`, class 0 = background)
   on the same image (upscaled bilinearly to twice the size for COCO-Object), the argmax class filling the segment;
4. the ground truth shifted by one (background and void become class 0) and scored with torchmetrics'
   multiclass ``JaccardIndex`` on that image alone (:func:`jaccard_index`: the mean IoU over the classes present
   in the prediction or the ground truth);
5. the score is the **mean of the per-image values** (not a dataset-level mIoU).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DiffCutError, InputError
from .datasets import CLIP_IMAGE_SIZE, official_vocabulary

logger = logging.getLogger("diffcut_engine")

__all__ = ["OPEN_VOCAB_PAMR_ITERS", "OPEN_VOCAB_PAMR_DILATIONS", "jaccard_index", "evaluate_open_vocab"]

#: PAMR of the official open-vocabulary evaluation (``eval_diffcut_openvoc.py:92-97``).
OPEN_VOCAB_PAMR_ITERS = 15
OPEN_VOCAB_PAMR_DILATIONS = (1, 2, 4, 8, 12, 24, 32, 64)


def jaccard_index(pred, target, num_classes: int) -> float:
    """torchmetrics ``JaccardIndex(task="multiclass", num_classes=N)`` of one image (average "macro", no ignore
    index): the mean of TP / (TP + FP + FN) over the classes that occur in ``pred`` or ``target``."""
    pred = np.asarray(pred, dtype=np.int64).ravel()
    target = np.asarray(target, dtype=np.int64).ravel()
    if pred.shape != target.shape:
        raise InputError(f"prediction and target differ in size: {pred.size} vs {target.size}")
    if pred.size and (min(pred.min(), target.min()) < 0 or max(pred.max(), target.max()) >= num_classes):
        raise InputError(f"class ids must be in [0, {num_classes}), got {min(pred.min(), target.min())}.."
                         f"{max(pred.max(), target.max())}")
    conf = np.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1) - tp
    present = denom > 0
    return float((tp[present] / denom[present]).mean())


def evaluate_open_vocab(dataset, engine, *, limit: Optional[int] = None, out=None, progress: bool = True,
                        clip=None) -> dict:
    """Evaluate open-vocabulary DiffCut on ``voc``, ``context`` or ``coco-object`` with the official protocol.

    Parameters
    ----------
    dataset : SegmentationDataset
        From :func:`~diffcut_engine.eval.datasets.get_dataset` (``voc``, ``context`` or ``coco-object``).
    engine : Engine
        Its encoder and settings (``tau``, ``alpha``, ``compat``, ``size``, ``refine``, ``clip_model``) are used;
        preprocessing becomes the centre crop and PAMR the open-vocabulary setting.
    limit : int, optional
        Only the first ``limit`` images.
    out : str or pathlib.Path, optional
        A folder (``results.json`` in it) or a ``.json`` path for the results.
    progress : bool
    clip : ClipBackend, optional
        An already loaded CLIP (default: ``engine.config.clip_model``).

    Returns
    -------
    dict
        ``miou`` (the mean per-image Jaccard index, a fraction), ``num_images``, ``failed``, ``per_image``
        (name and value) and ``settings``.
    """
    from .. import images
    from ..engine import Engine
    from ..eval.datasets import eval_labels
    from ..utils.progress import progress_bar
    from .clip import load_clip
    from .namer import SegmentNamer

    key = dataset.key
    vocab = official_vocabulary(key)
    if len(vocab) != dataset.num_classes:
        raise InputError(f"{key}: {len(vocab)} class names for {dataset.num_classes} classes")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    cfg = engine.config
    if cfg.size[0] != cfg.size[1]:
        raise InputError(f"the open-vocabulary evaluation needs a square size, got {cfg.size[1]}x{cfg.size[0]}")
    net = cfg.size[0]
    # the official protocol refines at the network size (= the output size here: preset "full") with its own
    # PAMR settings
    ev = Engine(cfg.replace(resize_mode="center_crop", output_size=(net, net), tau=engine.tau,
                            refine="full" if cfg.refine else False, pamr_iters=OPEN_VOCAB_PAMR_ITERS,
                            pamr_dilations=OPEN_VOCAB_PAMR_DILATIONS),
                encoder=engine.encoder)
    clip_size = net * CLIP_IMAGE_SIZE[key] // 1024
    if clip is None:
        clip = load_clip(cfg.clip_model, device=ev.device, local_files_only=cfg.local_files_only)
    namer = SegmentNamer(clip, vocab, size=clip_size)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    samples = list(dataset.samples[:n])
    per_image, failed = [], []
    t0 = time.perf_counter()
    bar = progress_bar(total=n, enabled=progress, desc=f"open-vocab {key}", unit="img")
    try:
        for res in ev.iter_segment([s.image for s in samples], return_image=True):
            sample = samples[res.index]
            try:
                if not res.ok:
                    raise res.error
                seg = res.segmentation
                gt_full = dataset.load_label(sample)
                if gt_full.shape != tuple(seg.image_size):
                    raise InputError(f"{sample.label}: label is {gt_full.shape[1]}x{gt_full.shape[0]} but the "
                                     f"image is {seg.image_size[1]}x{seg.image_size[0]}")
                gt = eval_labels(gt_full, seg.crop_box, net, net).astype(np.int64) + 1  # -1 (bg, void) -> 0
                image = images.resize(res.image, (net, net)).to(ev.device)
                pred = namer.name(image, seg.labels).class_map
            except DiffCutError as exc:
                failed.append({"index": res.index, "name": sample.name, "error": str(exc)})
                logger.warning("skipping %s: %s", sample.name, exc)
                bar.update(1)
                continue
            per_image.append({"name": sample.name, "jaccard": jaccard_index(pred, gt, dataset.num_classes)})
            bar.update(1)
            bar.set_postfix_str(f"mIoU {100 * np.mean([r['jaccard'] for r in per_image]):.1f}")
    finally:
        bar.close()
    results = {
        "dataset": key,
        "protocol": "eval_diffcut_openvoc.py: mean over images of the per-image multiclass Jaccard index",
        "miou": float(np.mean([r["jaccard"] for r in per_image])) if per_image else None,
        "num_images": len(per_image),
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 3),
        "settings": {"engine": repr(ev), "tau": ev.tau, "alpha": cfg.alpha, "size": net, "refine": cfg.refine,
                     "pamr_iters": OPEN_VOCAB_PAMR_ITERS, "pamr_dilations": list(OPEN_VOCAB_PAMR_DILATIONS),
                     "clip_model": clip.name, "clip_size": clip_size, "num_classes": dataset.num_classes},
        "per_image": per_image,
    }
    if out is not None:
        path = Path(out)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "results.json"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
        os.replace(tmp, path)
        results["file"] = str(path)
    return results
