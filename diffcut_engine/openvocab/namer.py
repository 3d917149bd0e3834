"""Name the segments of a label map with CLIP: the official ``associate_label`` of ``eval_diffcut_openvoc.py``.

For one image and its (H, W) segment labels:

1. CLIP's dense features of the image (resized to ``size``; the official run uses the 1024 px image, 2048 px for
   COCO);
2. for each segment id present, in increasing order: its mask pooled over the dense features
   (:func:`~diffcut_engine.openvocab.classifier.mask_pool`), embedded (:meth:`ClipBackend.embed_pooled`);
3. the class logits against the vocabulary's text classifier (max over synonyms, void appended), the void dropped,
   a softmax over the classes; the segment takes the argmax class, its probability is the score;
4. the class map: each pixel gets its segment's class index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import InputError
from .classifier import class_probabilities, classification_logits, mask_pool, text_classifier
from .clip import ClipBackend, load_clip
from .vocabulary import VILD_TEMPLATES, Vocabulary

__all__ = ["SegmentNamer", "SegmentNames"]


@dataclass(frozen=True)
class SegmentNames:
    """The names of one image's segments.

    Attributes
    ----------
    segment_ids : tuple of int
        The segment ids present in the label map, increasing.
    class_ids : tuple of int
        Class index (into ``vocabulary``) of each segment.
    names : tuple of str
        Display name of each segment's class.
    scores : tuple of float
        Softmax probability of each segment's class over the vocabulary (void excluded).
    class_map : numpy.ndarray
        (H, W) int32 class index of every pixel (the label map's size).
    vocabulary : Vocabulary
    """

    segment_ids: Tuple[int, ...]
    class_ids: Tuple[int, ...]
    names: Tuple[str, ...]
    scores: Tuple[float, ...]
    class_map: np.ndarray
    vocabulary: Vocabulary

    def __repr__(self):
        pairs = ", ".join(f"{s}:{n}({p:.2f})" for s, n, p in zip(self.segment_ids, self.names, self.scores))
        return f"SegmentNames({pairs})"

    def as_dicts(self) -> list:
        """One ``{"segment", "class", "class_id", "score"}`` dict per segment (for JSON)."""
        return [{"segment": int(s), "class": n, "class_id": int(c), "score": round(float(p), 6)}
                for s, c, n, p in zip(self.segment_ids, self.class_ids, self.names, self.scores)]


class SegmentNamer:
    """Names segments with a CLIP model and a vocabulary (the text classifier is computed once).

    Parameters
    ----------
    clip : ClipBackend or str, optional
        A loaded back end, or a model string for :func:`~diffcut_engine.openvocab.clip.load_clip` (default: the
        official open_clip ConvNeXt-Large).
    vocabulary : Vocabulary or list of str
    size : int or (int, int), optional
        Side (or (height, width)) the image is resized to for CLIP; ``None`` keeps the image's size.
    templates : sequence of str
        Prompt templates (default: the 14 ViLD templates).
    """

    def __init__(self, clip: Union[ClipBackend, str, None], vocabulary, *, size=None, device="cpu",
                 templates: Sequence[str] = VILD_TEMPLATES):
        self.clip = clip if isinstance(clip, ClipBackend) else load_clip(clip, device=device)
        self.vocabulary = Vocabulary.coerce(vocabulary)
        if isinstance(size, int):
            size = (size, size)
        self.size = None if size is None else tuple(int(s) for s in size)
        self.text = text_classifier(self.clip.encode_text, self.vocabulary, templates)
        self.counts = self.vocabulary.synonym_counts

    def __repr__(self):
        return f"SegmentNamer({self.clip!r}, {len(self.vocabulary)} classes)"

    def logits(self, image: torch.Tensor, labels) -> Tuple[np.ndarray, torch.Tensor]:
        """(segment ids present, (Q, K + 1) logits with the void column last) of one image and its labels."""
        lab = torch.as_tensor(np.asarray(labels)).long()
        if lab.ndim != 2:
            raise InputError(f"labels must be an (H, W) map, got shape {tuple(lab.shape)}")
        ids = torch.unique(lab)
        with torch.no_grad():
            dense = self.clip.dense_features(self.clip.prepare(image, self.size)).float()
            masks = (lab[None] == ids[:, None, None]).float()[None]  # (1, Q, H, W)
            pooled = mask_pool(dense, masks)[0]  # (Q, C)
            emb = self.clip.embed_pooled(pooled.to(dense.dtype))
            logits = classification_logits(emb, self.text, self.clip.logit_scale, self.counts)
        return ids.numpy(), logits

    def name(self, image: torch.Tensor, labels) -> SegmentNames:
        """Name each segment of ``labels`` ((H, W) int) on ``image`` ((3, h, w) float in [0, 1])."""
        ids, logits = self.logits(image, labels)
        probs = class_probabilities(logits)
        score, cls = probs.max(-1)
        cls_np = cls.cpu().numpy().astype(np.int32)
        lut = np.zeros(int(ids.max()) + 1, dtype=np.int32)
        lut[ids] = cls_np
        lab = np.asarray(labels)
        names = tuple(self.vocabulary.names[c] for c in cls_np)
        return SegmentNames(segment_ids=tuple(int(i) for i in ids), class_ids=tuple(int(c) for c in cls_np),
                            names=names, scores=tuple(float(s) for s in score.cpu().numpy()),
                            class_map=lut[lab].astype(np.int32), vocabulary=self.vocabulary)

    def class_map(self, image: torch.Tensor, labels) -> np.ndarray:
        """Only the (H, W) int32 class map of :meth:`name`."""
        return self.name(image, labels).class_map
