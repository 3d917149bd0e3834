"""Graph stage: affinity and recursive Normalized Cut on feature grids (numpy; no torch import)."""

from .affinity import affinity, affinity_from_tokens, l2_normalize
from .ncut import (
    NUM_THRESHOLDS,
    NCutRecord,
    best_threshold_split,
    candidate_thresholds,
    fiedler_vector,
    labels_from_masks,
    ncut_values,
    recursive_ncut,
    recursive_ncut_affinity,
)

__all__ = [
    "affinity",
    "affinity_from_tokens",
    "l2_normalize",
    "NUM_THRESHOLDS",
    "NCutRecord",
    "best_threshold_split",
    "candidate_thresholds",
    "fiedler_vector",
    "labels_from_masks",
    "ncut_values",
    "recursive_ncut",
    "recursive_ncut_affinity",
]
