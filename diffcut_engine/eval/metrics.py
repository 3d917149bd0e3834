"""Unsupervised segmentation metrics: per-image Hungarian matching, dataset-level IoU, background merge.

This is the protocol of DiffCut's ``eval_diffcut.py`` and ``tools/utils.py`` (itself adapted from PiCIE [2]_),
reproduced so that the engine's numbers mean what the paper's mean:

1. For each image, the confusion matrix ``hist`` of ground-truth classes (rows) against predicted cluster ids
   (columns) is built over the labelled pixels (ground truth ``-1`` is ignored). It has
   ``max(num_classes, pred.max() + 1)`` columns, so that every class can be matched even with few clusters.
2. ``scipy.optimize.linear_sum_assignment(hist, maximize=True)`` matches classes to clusters, one to one.
3. TP, FP and FN per class are added over the whole dataset; ``IoU_c = TP / (TP + FP + FN)``, the mIoU is the
   mean over classes that were ever seen (``nanmean``) and the pixel accuracy is ``sum(TP) / labelled pixels``.

**FP counting.** In the official code every class is matched, including classes absent from the image; such a
class can be given a leftover non-empty cluster, and that cluster's pixels then count as false positives of a
class that is not there (``fp_counting="official"``, the default: use it to compare with published numbers).
``fp_counting="present"`` matches only the classes present in the image, so clusters are never charged to absent
classes; everything else is unchanged. Pixels of clusters left unmatched count as FN of their true class in both
variants and as FP of no class.

**Background merge** (VOC, Pascal Context, COCO-Object; :func:`merge_background`): the ``N - 1`` foreground
classes are matched first, every cluster not matched to a class seen in the image is merged into one background
cluster, ground-truth ``-1`` (background and void) becomes class ``N - 1``, and the result is matched again with
``N`` classes. The official evaluation runs PAMR between the merge and the second matching; :class:`Scorer` with
``background_merge=True`` does both matchings with no refinement in between (the runner calls the steps itself).

This module needs numpy and scipy only.

References
----------
.. [1] P. Couairon et al., "DiffCut: Catalyzing Zero-Shot Semantic Segmentation with Diffusion Features and
   Recursive Normalized Cut", NeurIPS 2024, arXiv:2406.02842.
.. [2] J. H. Cho, U. Mall, K. Bala, B. Hariharan, "PiCIE: Unsupervised Semantic Segmentation using Invariance
   and Equivariance in Clustering", CVPR 2021.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..errors import InputError

__all__ = [
    "FP_COUNTING",
    "ImageScore",
    "Scorer",
    "confusion_matrix",
    "match_clusters",
    "score_image",
    "merge_background",
    "iou_from_counts",
]

#: Accepted values of ``fp_counting``.
FP_COUNTING = ("official", "present")


# ------------------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------------------

def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_fp_counting(fp_counting) -> str:
    if fp_counting not in FP_COUNTING:
        raise InputError(f"unknown fp_counting {fp_counting!r}; choose one of {', '.join(FP_COUNTING)}")
    return fp_counting


def _as_int_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and arr.size and np.all(np.isfinite(arr)) \
                and np.array_equal(arr, np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InputError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_pair(pred, gt, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    pred = _as_int_array(pred, "pred")
    gt = _as_int_array(gt, "gt")
    if pred.shape != gt.shape:
        raise InputError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    if pred.size == 0:
        raise InputError("pred and gt are empty")
    if pred.min() < 0:
        raise InputError(f"pred must hold cluster ids >= 0, got {int(pred.min())}")
    lo, hi = int(gt.min()), int(gt.max())
    if lo < -1 or hi >= num_classes:
        raise InputError(f"gt must hold class ids in [0, {num_classes - 1}] or -1 (ignore), got range [{lo}, {hi}]")
    return pred.ravel(), gt.ravel()


# ------------------------------------------------------------------------------------------------------------
# One image
# ------------------------------------------------------------------------------------------------------------

def confusion_matrix(pred, gt, num_classes: int) -> np.ndarray:
    """Confusion of ground-truth classes against cluster ids over the labelled pixels of one image.

    Parameters
    ----------
    pred : array_like of int, any shape
        Cluster ids ``>= 0``.
    gt : array_like of int, shape of ``pred``
        Class ids in ``[0, num_classes)``; ``-1`` is ignored.
    num_classes : int
        N.

    Returns
    -------
    numpy.ndarray, shape (N, max(N, pred.max() + 1)), int64
        ``hist[c, k]`` = number of pixels of class ``c`` predicted as cluster ``k`` (PiCIE's ``_fast_hist``).

    Raises
    ------
    InputError
        On a shape mismatch, non-integer input, negative cluster ids or classes outside ``[-1, N)``.
    """
    num_classes = _check_num_classes(num_classes)
    pred, gt = _check_pair(pred, gt, num_classes)
    return _confusion(pred, gt, num_classes)


def _confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    cols = max(num_classes, int(pred.max()) + 1)
    keep = gt >= 0
    flat = np.bincount(cols * gt[keep] + pred[keep], minlength=num_classes * cols)
    return flat.reshape(num_classes, cols).astype(np.int64)


def match_clusters(hist: np.ndarray, *, fp_counting: str = "official") -> np.ndarray:
    """Hungarian matching of classes (rows) to clusters (columns), maximising the matched pixel count.

    Parameters
    ----------
    hist : numpy.ndarray, shape (N, M) with M >= N
        A confusion matrix from :func:`confusion_matrix`.
    fp_counting : {"official", "present"}
        ``official`` matches every class (scipy's assignment on the whole matrix, as the official code);
        ``present`` matches only the classes with pixels in this image.

    Returns
    -------
    numpy.ndarray, shape (N,), int64
        The cluster matched to each class, ``-1`` for a class left unmatched (``present`` mode only).
    """
    from scipy.optimize import linear_sum_assignment

    fp_counting = _check_fp_counting(fp_counting)
    hist = np.asarray(hist)
    if hist.ndim != 2 or hist.shape[1] < hist.shape[0]:
        raise InputError(f"hist must be (N, M) with M >= N, got shape {hist.shape}")
    n = hist.shape[0]
    out = np.full(n, -1, dtype=np.int64)
    rows = np.arange(n) if fp_counting == "official" else np.flatnonzero(hist.sum(axis=1) > 0)
    if rows.size:
        r, c = linear_sum_assignment(hist[rows], maximize=True)
        out[rows[r]] = c
    return out


@dataclass
class ImageScore:
    """Counts of one image after matching.

    Attributes
    ----------
    tp, fp, fn : numpy.ndarray
        (N,) int64 per-class true positives, false positives, false negatives.
    total : int
        Labelled pixels of the image.
    matched : numpy.ndarray
        (N,) int64 cluster matched to each class (``-1`` if none).
    hist : numpy.ndarray
        (N, M) int64 confusion matrix the counts come from.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    total: int
    matched: np.ndarray
    hist: np.ndarray

    def class_confusion(self) -> np.ndarray:
        """(N, N + 1) pixels of each true class (rows) per matched predicted class; the last column counts
        pixels of clusters matched to no class."""
        n, m = self.hist.shape
        cluster_to_class = np.full(m, n, dtype=np.int64)
        ok = self.matched >= 0
        cluster_to_class[self.matched[ok]] = np.flatnonzero(ok)
        out = np.zeros((n, n + 1), dtype=np.int64)
        np.add.at(out.T, cluster_to_class, self.hist.T)
        return out


def _score_hist(hist: np.ndarray, fp_counting: str) -> ImageScore:
    n = hist.shape[0]
    matched = match_clusters(hist, fp_counting=fp_counting)
    ok = matched >= 0
    tp = np.zeros(n, dtype=np.int64)
    fp = np.zeros(n, dtype=np.int64)
    tp[ok] = hist[np.flatnonzero(ok), matched[ok]]
    # FP only over matched columns: the column total of each class's cluster minus its TP (official behaviour;
    # in "present" mode absent classes have no cluster and so no FP).
    fp[ok] = hist[:, matched[ok]].sum(axis=0) - tp[ok]
    fn = hist.sum(axis=1) - tp
    return ImageScore(tp=tp, fp=fp, fn=fn, total=int(hist.sum()), matched=matched, hist=hist)


def score_image(pred, gt, num_classes: int, *, fp_counting: str = "official") -> ImageScore:
    """Match the clusters of one image to its classes and count TP, FP and FN.

    Parameters
    ----------
    pred : array_like of int, any shape
        Cluster ids ``>= 0`` (any numbering; only the partition and, for ties, the order of ids matter).
    gt : array_like of int, shape of ``pred``
        Class ids in ``[0, num_classes)``; ``-1`` is ignored.
    num_classes : int
        N.
    fp_counting : {"official", "present"}
        See the module docstring.

    Returns
    -------
    ImageScore

    Raises
    ------
    InputError
        As :func:`confusion_matrix`, or for an unknown ``fp_counting``.
    """
    num_classes = _check_num_classes(num_classes)
    fp_counting = _check_fp_counting(fp_counting)
    pred, gt = _check_pair(pred, gt, num_classes)
    return _score_hist(_confusion(pred, gt, num_classes), fp_counting)


def merge_background(pred, gt, num_classes: int, *, fp_counting: str = "official") -> Tuple[np.ndarray, np.ndarray]:
    """The many-to-one background rule of VOC, Pascal Context and COCO-Object.

    1. Match the clusters with the ``N - 1`` foreground classes (ground truth ``-1`` ignored).
    2. Keep the clusters matched to classes seen in the image; merge every other cluster into one new
       background cluster ``pred.max() + 1``.
    3. Set ground truth ``-1`` (background and void) to class ``N - 1``.

    In step 2 the official code tests "seen" on the confusion matrix restricted to the matched columns: a class
    is kept when any of its pixels fall in any matched cluster (``hist[:, col_ind].max(axis=1) > 0``); this is
    reproduced with ``fp_counting="official"``. With ``"present"`` only the present classes are matched and
    all of their clusters are kept. For an optimal matching the two rules keep the same clusters (a present
    class always has pixels in some matched cluster, or moving it to the cluster holding them would gain); only
    scipy's choice among tied matchings can differ.

    Parameters
    ----------
    pred : array_like of int
        Cluster ids ``>= 0``.
    gt : array_like of int, shape of ``pred``
        Foreground class ids in ``[0, N - 1)``; ``-1`` for background and void.
    num_classes : int
        N, background included (21 for VOC, 60 for Context, 81 for COCO-Object).
    fp_counting : {"official", "present"}
        Matching variant of step 1.

    Returns
    -------
    pred : numpy.ndarray
        Same shape, int64: the merged cluster ids.
    gt : numpy.ndarray
        Same shape, int64: ``-1`` replaced by ``N - 1``.

    Raises
    ------
    InputError
        As :func:`confusion_matrix`; also if ``gt`` already holds the background class ``N - 1``.
    """
    num_classes = _check_num_classes(num_classes)
    if num_classes < 2:
        raise InputError("background merge needs num_classes >= 2 (foreground classes plus background)")
    fp_counting = _check_fp_counting(fp_counting)
    shape = np.shape(pred)
    pred, gt = _check_pair(pred, gt, num_classes)
    if gt.max() == num_classes - 1:
        raise InputError(f"gt holds class {num_classes - 1}, the background class the merge creates; "
                         "give background and void as -1")
    n_fg = num_classes - 1
    hist = _confusion(pred, gt, n_fg)
    matched = match_clusters(hist, fp_counting=fp_counting)
    ok = np.flatnonzero(matched >= 0)
    if fp_counting == "official":
        seen = hist[:, matched].max(axis=1) > 0
        kept = {int(matched[c]) for c in np.flatnonzero(seen)}
    else:
        kept = {int(matched[c]) for c in ok}
    present = np.unique(pred)
    background = np.setdiff1d(present, np.fromiter(kept, dtype=np.int64, count=len(kept)))
    merged = pred.copy()
    merged[np.isin(pred, background)] = int(pred.max()) + 1
    filled = np.where(gt == -1, n_fg, gt)
    return merged.reshape(shape), filled.reshape(shape)


# ------------------------------------------------------------------------------------------------------------
# Dataset accumulation
# ------------------------------------------------------------------------------------------------------------

def iou_from_counts(tp, fp, fn) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` as float64, NaN where the denominator is 0."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    den = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, tp / np.where(den > 0, den, 1), np.nan)


class Scorer:
    """Accumulate matched counts over a dataset and report mIoU, pixel accuracy and per-class IoU.

    Parameters
    ----------
    num_classes : int
        N, background included where there is one (21 VOC, 60 Context, 27 COCO-Stuff, 81 COCO-Object,
        27 Cityscapes, 150 ADE20K).
    background_merge : bool
        Apply :func:`merge_background` before matching (VOC, Context, COCO-Object). Ground truth then gives
        background and void as ``-1`` and foreground classes as ``0 .. N-2``.
    fp_counting : {"official", "present"}
        ``official`` (default) reproduces the published protocol; ``present`` matches only the classes seen in
        each image (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> s = Scorer(2)
    >>> _ = s.update(np.array([[5, 5], [7, 7]]), np.array([[0, 0], [1, -1]]))
    >>> s.compute()["miou"]
    1.0
    """

    def __init__(self, num_classes: int, background_merge: bool = False, *, fp_counting: str = "official"):
        self.num_classes = _check_num_classes(num_classes)
        if background_merge and self.num_classes < 2:
            raise InputError("background_merge needs num_classes >= 2")
        self.background_merge = bool(background_merge)
        self.fp_counting = _check_fp_counting(fp_counting)
        self.reset()

    def __repr__(self):
        return (f"Scorer(num_classes={self.num_classes}, background_merge={self.background_merge}, "
                f"fp_counting={self.fp_counting!r}, images={self.num_images})")

    def reset(self) -> None:
        """Forget every image."""
        n = self.num_classes
        self.tp = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)
        self.total = 0
        self.num_images = 0

    def update(self, pred, gt) -> ImageScore:
        """Score one image and add its counts.

        Parameters
        ----------
        pred : array_like of int, shape (H, W)
            Cluster ids ``>= 0`` of one image (any numbering).
        gt : array_like of int, shape (H, W)
            Class ids; ``-1`` = ignore (with ``background_merge``: background and void).

        Returns
        -------
        ImageScore
            This image's counts (already added).
        """
        if self.background_merge:
            pred, gt = merge_background(pred, gt, self.num_classes, fp_counting=self.fp_counting)
        score = score_image(pred, gt, self.num_classes, fp_counting=self.fp_counting)
        self.add(score)
        return score

    def add(self, score) -> None:
        """Add the counts of an already scored image (an :class:`ImageScore` or a dict with ``tp``, ``fp``,
        ``fn`` and ``total``), e.g. one read back from a results cache."""
        get = (lambda k: score[k]) if isinstance(score, dict) else (lambda k: getattr(score, k))
        counts = [np.asarray(get(k), dtype=np.int64) for k in ("tp", "fp", "fn")]
        if any(c.shape != (self.num_classes,) for c in counts):
            raise InputError(f"counts must have {self.num_classes} entries, got shapes {[c.shape for c in counts]}")
        self.tp += counts[0]
        self.fp += counts[1]
        self.fn += counts[2]
        self.total += int(get("total"))
        self.num_images += 1

    def compute(self) -> dict:
        """The metrics so far.

        Returns
        -------
        dict
            ``miou`` (float in [0, 1]; NaN before any labelled pixel), ``pixel_accuracy`` (float in [0, 1]),
            ``per_class_iou`` ((N,) float64, NaN for classes never seen nor predicted), ``tp``/``fp``/``fn``
            ((N,) int64 copies) and ``num_images``.
        """
        iou = iou_from_counts(self.tp, self.fp, self.fn)
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        acc = float(self.tp.sum() / self.total) if self.total else float("nan")
        return {"miou": miou, "pixel_accuracy": acc, "per_class_iou": iou, "tp": self.tp.copy(),
                "fp": self.fp.copy(), "fn": self.fn.copy(), "num_images": self.num_images}

