"""The CLIP classification of segments, as the official ``tools/clip_classifier.py`` (from FC-CLIP) computes it.

- :func:`text_classifier`: one embedding per synonym: the (unnormalised) text embeddings of its 14 template
  prompts, each L2-normalised, averaged, normalised again.
- :func:`classification_logits`: ``clamp(exp(logit_scale), max=100) * normalize(x) @ text.T``, then the max over
  each class's synonyms ("max ensemble" of OpenSeg/ODISE), and, last, the void column: the logit of the
  classifier's last row, appended as FC-CLIP does. The official evaluation drops it (``[..., :-1]``) before the
  softmax and argmax; :func:`class_probabilities` does the same.
- :func:`mask_pool`: ODISE's MaskPooling: masks resized to the feature grid with nearest-exact, binarised, and the
  features averaged over each mask (``sum / (count + 1e-8)``; an empty mask gives a zero vector).
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from .vocabulary import VILD_TEMPLATES, Vocabulary

__all__ = ["text_classifier", "classification_logits", "class_probabilities", "mask_pool", "MAX_LOGIT_SCALE"]

#: Upper bound of the logit scale (the official clamp).
MAX_LOGIT_SCALE = 100.0
#: Prompts per text-encoder call (the official batch, "to avoid oom").
TEXT_BATCH = 128


def text_classifier(encode_text: Callable[[List[str]], torch.Tensor], vocabulary: Vocabulary,
                    templates: Sequence[str] = VILD_TEMPLATES, *, batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """(S, D) float32 unit text embeddings, one per synonym (S = total synonyms), class by class.

    Parameters
    ----------
    encode_text : callable
        Maps a list of prompts to their (n, D) text embeddings (not normalised).
    vocabulary : Vocabulary
    templates : sequence of str
        Prompt templates with one ``{}`` each (default: the 14 ViLD templates).
    """
    prompts = vocabulary.prompts(templates)
    with torch.no_grad():
        emb = torch.cat([encode_text(prompts[i:i + batch_size]).float() for i in range(0, len(prompts), batch_size)])
    emb = emb / emb.norm(dim=-1, keepdim=True)
    emb = emb.reshape(emb.shape[0] // len(templates), len(templates), emb.shape[-1]).mean(1)
    return emb / emb.norm(dim=-1, keepdim=True)


def classification_logits(x: torch.Tensor, text: torch.Tensor, logit_scale, synonym_counts: Sequence[int]
                          ) -> torch.Tensor:
    """Class logits of embeddings ``x`` (..., D): (..., K + 1), the max over each class's synonyms, then void.

    Parameters
    ----------
    x : torch.Tensor
        (..., D) image embeddings (normalised here).
    text : torch.Tensor
        (S, D) unit text embeddings from :func:`text_classifier`; S = ``sum(synonym_counts)``.
    logit_scale : torch.Tensor or float
        The model's learned log scale (``exp`` is clamped to 100).
    synonym_counts : sequence of int
        Synonyms per class, in the order of ``text``'s rows.
    """
    counts = [int(c) for c in synonym_counts]
    if sum(counts) != text.shape[0] or min(counts) < 1:
        raise InputError(f"synonym_counts {counts} do not match the {text.shape[0]} text embeddings")
    x = F.normalize(x.float(), dim=-1)
    scale = torch.clamp(torch.as_tensor(logit_scale, dtype=torch.float32, device=x.device).exp(),
                        max=MAX_LOGIT_SCALE)
    logits = scale * x @ text.to(x.device, torch.float32).T
    per_class = [part.max(-1).values for part in torch.split(logits, counts, dim=-1)]
    per_class.append(logits[..., -1])  # void: the last classifier, as FC-CLIP appends it
    return torch.stack(per_class, dim=-1)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the K classes of :func:`classification_logits`' output, the void column dropped first."""
    return logits[..., :-1].softmax(-1)


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean of (B, C, h, w) ``features`` over each of (B, Q, H, W) ``masks``: (B, Q, C).

    Masks of another size are resized to (h, w) with nearest-exact first; a mask counts where it is > 0.
    """
    if features.ndim != 4 or masks.ndim != 4 or features.shape[0] != masks.shape[0]:
        raise InputError(f"mask_pool needs (B, C, h, w) features and (B, Q, H, W) masks, got "
                         f"{tuple(features.shape)} and {tuple(masks.shape)}")
    masks = masks.to(features.device, features.dtype)
    if masks.shape[-2:] != features.shape[-2:]:
        masks = F.interpolate(masks, size=features.shape[-2:], mode="nearest-exact")
    masks = (masks > 0).to(features.dtype)
    denom = masks.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return torch.einsum("bchw,bqhw->bqc", features, masks / denom)
