"""Open-vocabulary segment names with CLIP (the official ``eval_diffcut_openvoc.py`` and ``tools/clip_classifier.py``).

- :mod:`.vocabulary` (torch-free): :class:`Vocabulary` (classes with synonyms), the 14 ViLD prompt templates;
- :mod:`.datasets` (torch-free): the official class lists of VOC20, Pascal Context and COCO-Object;
- :mod:`.classifier`: text classifier, classification logits (max over synonyms, void), mask pooling;
- :mod:`.clip`: the open_clip (official ConvNeXt) and transformers (ViT) back ends, :func:`load_clip`;
- :mod:`.namer`: :class:`SegmentNamer`, the per-segment names, scores and class map of one image.

``Engine.segment(image, classes=[...])`` and ``diffcut segment --classes`` use them.
"""

from .classifier import class_probabilities, classification_logits, mask_pool, text_classifier
from .clip import DEFAULT_CLIP_MODEL, ClipBackend, OpenClipBackend, TransformersClipBackend, load_clip
from .datasets import OPEN_VOCAB_DATASETS, official_vocabulary
from .namer import SegmentNamer, SegmentNames
from .vocabulary import VILD_TEMPLATES, Vocabulary

__all__ = [
    "Vocabulary",
    "VILD_TEMPLATES",
    "OPEN_VOCAB_DATASETS",
    "official_vocabulary",
    "text_classifier",
    "classification_logits",
    "class_probabilities",
    "mask_pool",
    "ClipBackend",
    "OpenClipBackend",
    "TransformersClipBackend",
    "DEFAULT_CLIP_MODEL",
    "load_clip",
    "SegmentNamer",
    "SegmentNames",
]
