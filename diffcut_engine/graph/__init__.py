"""Graph stage: affinity and recursive Normalized Cut on feature grids (numpy; no torch import)."""

from .affinity import affinity, affinity_from_tokens, l2_normalize
from .batched import build_trees_batched
from .device import device_affinity, device_namespace, device_ncut_trees
from .eigen import SOLVERS, fiedler_vector
from .ncut import (
    NUM_THRESHOLDS,
    NCutNode,
    NCutTree,
    best_threshold_split,
    binned_ncut_values,
    build_tree,
    candidate_thresholds,
    labels_from_masks,
    ncut_tree,
    ncut_values,
    prefix_ncut_values,
    recursive_ncut,
    recursive_ncut_affinity,
)
from .xp import array_namespace, as_array, cupy_available, is_device, to_host

__all__ = [
    "affinity",
    "affinity_from_tokens",
    "l2_normalize",
    "SOLVERS",
    "fiedler_vector",
    "NUM_THRESHOLDS",
    "NCutNode",
    "NCutTree",
    "best_threshold_split",
    "binned_ncut_values",
    "build_tree",
    "candidate_thresholds",
    "labels_from_masks",
    "ncut_tree",
    "ncut_values",
    "prefix_ncut_values",
    "recursive_ncut",
    "recursive_ncut_affinity",
    "build_trees_batched",
    "device_affinity",
    "device_namespace",
    "device_ncut_trees",
    "array_namespace",
    "as_array",
    "cupy_available",
    "is_device",
    "to_host",
]
