"""Benchmark evaluation: dataset readers, the matching protocol and metrics, and the ``diffcut eval`` runner.

``diffcut_engine.eval.metrics`` and ``diffcut_engine.eval.datasets`` need numpy, scipy and Pillow only; the
runner (``diffcut_engine.eval.runner``) imports torch through the engine when it is used.

Examples
--------
>>> from diffcut_engine.eval import Scorer, get_dataset                           # doctest: +SKIP
>>> ds = get_dataset("voc", "datasets/VOCdevkit/VOC2012")                          # doctest: +SKIP
>>> scorer = Scorer(ds.num_classes, background_merge=ds.background_merge)          # doctest: +SKIP
"""

from .datasets import ALIASES, DATASETS, PUBLISHED, Sample, SegmentationDataset, eval_labels, get_dataset
from .metrics import FP_COUNTING, ImageScore, Scorer, confusion_matrix, merge_background, score_image

__all__ = [
    "ALIASES",
    "DATASETS",
    "PUBLISHED",
    "Sample",
    "SegmentationDataset",
    "eval_labels",
    "get_dataset",
    "FP_COUNTING",
    "ImageScore",
    "Scorer",
    "confusion_matrix",
    "merge_background",
    "score_image",
    "evaluate",
]


def __getattr__(name):
    # The runner pulls in the engine (torch); load it only when asked for.
    if name == "evaluate":
        from .runner import evaluate

        return evaluate
    raise AttributeError(f"module 'diffcut_engine.eval' has no attribute {name!r}")
