"""Helpers for the evaluation tests: miniature benchmarks in their real on-disk layouts, and a line-by-line
port of the official scoring code to check :mod:`diffcut_engine.eval.metrics` against.

Every image is made of a few flat colour regions (with mild noise) that follow its label map, so that the toy
colour encoder segments them meaningfully; label PNGs hold the dataset's raw values (palette PNGs for VOC's
``SegmentationClass``, grayscale elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

COLOURS = np.array([(200, 40, 40), (30, 90, 220), (40, 190, 60), (230, 210, 40), (150, 60, 200), (20, 20, 20),
                    (240, 240, 240), (0, 160, 160)], dtype=np.int64)


# ------------------------------------------------------------------------------------------------------------
# The official scoring, ported as literally as possible (DiffCut tools/utils.py and eval_diffcut.py)
# ------------------------------------------------------------------------------------------------------------

def official_fast_hist(label_true, label_pred, n_class):
    pred_n_class = np.maximum(n_class, label_pred.max() + 1)
    mask = (label_true >= 0) & (label_true < n_class)
    hist = np.bincount(pred_n_class * label_true[mask] + label_pred[mask],
                       minlength=n_class * pred_n_class).reshape(n_class, pred_n_class)
    return hist


def official_hungarian_matching(pred, label, n_class):
    batch_size = pred.shape[0]
    tp = np.zeros(n_class)
    fp = np.zeros(n_class)
    fn = np.zeros(n_class)
    total = 0
    for i in range(batch_size):
        hist = official_fast_hist(label[i].flatten(), pred[i].flatten(), n_class)
        row_ind, col_ind = linear_sum_assignment(hist, maximize=True)
        total += hist.sum()
        fn += (np.sum(hist, 1) - hist[row_ind, col_ind])
        tp += hist[row_ind, col_ind]
        hist = hist[:, col_ind]
        fp += (np.sum(hist, 0) - np.diag(hist))
    return tp, fp, fn, total, hist, col_ind


def official_merge(pred, label_map, n_class):
    """The many-to-one block of ``eval_diffcut.py`` (pred and label_map of shape (1, H, W), modified copies)."""
    pred, label_map = pred.copy(), label_map.copy()
    _, _, _, _, hist, col_ind = official_hungarian_matching(pred, label_map, n_class - 1)
    label_map[label_map == -1] = n_class - 1
    assigned_gt_clusters = np.where(hist.max(axis=1) > 0)[0].tolist()
    assigned_pred_clusters = [col_ind[i] for i in assigned_gt_clusters]
    background_clusters = list(set(np.unique(pred)) - set(assigned_pred_clusters))
    bg_label = pred.max() + 1
    for bg_cls in background_clusters:
        pred[pred == bg_cls] = bg_label
    return pred, label_map


class OfficialAccumulator:
    """TP/FP/FN/ALL summed as ``Benchmark_Segmentation.evaluate`` sums them (without PAMR)."""

    def __init__(self, n_class, merge):
        self.n, self.merge = n_class, merge
        self.tp, self.fp, self.fn, self.total = np.zeros(n_class), np.zeros(n_class), np.zeros(n_class), 0

    def add(self, pred, gt):
        pred, gt = np.asarray(pred, np.int64)[None], np.asarray(gt, np.int64)[None]
        if self.merge:
            pred, gt = official_merge(pred, gt, self.n)
        tp, fp, fn, total, _, _ = official_hungarian_matching(pred, gt, self.n)
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.total += total

    def miou(self):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nanmean(self.tp / (self.tp + self.fp + self.fn))

    def accuracy(self):
        return self.tp.sum() / self.total


# ------------------------------------------------------------------------------------------------------------
# Miniature datasets
# ------------------------------------------------------------------------------------------------------------

def region_labels(h, w, values, k, void=None):
    """(h, w) uint8 map of three regions holding ``values`` (left half, top right, bottom right), shifted by
    image number ``k``, with a 2 px stripe of ``void`` across the middle if given."""
    lab = np.full((h, w), values[0], np.uint8)
    split = w // 2 + 4 * (k % 3) - 4
    lab[:, split:] = values[1]
    lab[h // 2 + 3 * k % 7:, split:] = values[2]
    if void is not None:
        lab[h // 3:h // 3 + 2, :] = void
    return lab


def image_for(lab, seed):
    """RGB uint8 image with one flat colour per distinct label value, plus noise."""
    rng = np.random.default_rng(seed)
    values = np.unique(lab)
    img = np.zeros(lab.shape + (3,), np.int64)
    for i, v in enumerate(values):
        img[lab == v] = COLOURS[(int(v) * 3 + i) % len(COLOURS)]
    return np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)


def save_label(path, lab, palette=False):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(lab, mode="L")
    if palette:
        im = Image.fromarray(lab, mode="P")
        im.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    im.save(path)


def save_image(path, img):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(img).save(path, quality=95)
    else:
        Image.fromarray(img).save(path)


#: Raw label values used per format: (region values per image, void value or None).
RAW_VALUES = {
    "voc-devkit": ([0, 1, 15], 255),          # background, aeroplane, person
    "voc-d2": ([255, 0, 14], None),           # background, aeroplane, person (already shifted)
    "context-devkit": ([0, 1, 59], None),     # background, aeroplane, wood
    "context-d2": ([255, 0, 58], None),
    "coco": ([0, 91, 156], 255),              # person, banner, sky-other
    "cityscapes": ([7, 26, 23], 0),           # road, car, sky; 0 unlabeled
    "ade20k": ([1, 3, 0], None),              # wall, sky, other
}


def make_dataset(fmt, root, n=3, size=(72, 96)):
    """Write a miniature benchmark in format ``fmt`` under ``root``.

    Returns
    -------
    (dataset_key, root_to_pass, names, raw_labels)
        ``raw_labels[name]`` is the raw label array written for that image.
    """
    root = Path(root)
    values, void = RAW_VALUES[fmt]
    h, w = size
    names, raws = [], {}
    for k in range(n):
        lab = region_labels(h, w, values, k, void)
        img = image_for(lab, k)
        if fmt == "voc-devkit":
            base, name = root / "VOCdevkit" / "VOC2012", f"2007_{32 + k:06d}"
            save_image(base / "JPEGImages" / f"{name}.jpg", img)
            save_label(base / "SegmentationClass" / f"{name}.png", lab, palette=True)
        elif fmt in ("voc-d2", "context-d2"):
            folder, ann = ("pascal_voc_d2", "annotations_pascal20") if fmt == "voc-d2" else \
                ("pascal_ctx_d2", "annotations_ctx59")
            name = f"2008_{2 + k:06d}"
            save_image(root / folder / "images" / "validation" / f"{name}.jpg", img)
            save_label(root / folder / ann / "validation" / f"{name}.png", lab)
        elif fmt == "context-devkit":
            base, name = root / "VOCdevkit" / "VOC2010", f"2008_{2 + k:06d}"
            save_image(base / "JPEGImages" / f"{name}.jpg", img)
            save_label(base / "SegmentationClassContext" / f"{name}.png", lab)
        elif fmt == "coco":
            name = f"{139 + 146 * k:012d}"
            save_image(root / "coco" / "val2017" / f"{name}.jpg", img)
            save_label(root / "coco" / "annotations" / "val2017" / f"{name}.png", lab)
        elif fmt == "cityscapes":
            city = ("frankfurt", "lindau")[k % 2]
            stem = f"{city}_{k:06d}_{19 + k:06d}"
            name = f"{city}/{stem}"
            save_image(root / "cityscapes" / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", img)
            save_label(root / "cityscapes" / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", lab)
        elif fmt == "ade20k":
            name = f"ADE_val_{k + 1:08d}"
            save_image(root / "ADEChallengeData2016" / "images" / "validation" / f"{name}.jpg", img)
            save_label(root / "ADEChallengeData2016" / "annotations" / "validation" / f"{name}.png", lab)
        else:
            raise ValueError(fmt)
        names.append(name)
        raws[name] = lab
    if fmt == "voc-devkit":
        base = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
        base.mkdir(parents=True, exist_ok=True)
        (base / "val.txt").write_text("\n".join(names) + "\n")
    if fmt == "context-devkit":
        base = root / "VOCdevkit" / "VOC2010" / "ImageSets" / "SegmentationContext"
        base.mkdir(parents=True, exist_ok=True)
        (base / "val.txt").write_text("\n".join(names) + "\n")
    if fmt == "coco":
        base = root / "coco" / "curated" / "val2017"
        base.mkdir(parents=True, exist_ok=True)
        (base / "Coco164kFull_Stuff_Coarse_7.txt").write_text("\n".join(names) + "\n")
    key = {"voc-devkit": "voc", "voc-d2": "voc", "context-devkit": "context", "context-d2": "context",
           "coco": "coco-stuff", "cityscapes": "cityscapes", "ade20k": "ade20k"}[fmt]
    return key, root, sorted(names) if fmt == "cityscapes" else names, raws
