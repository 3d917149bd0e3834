"""Graph stage: affinity and recursive Normalized Cut on feature grids (numpy; no torch import).

Layout (docs/ALGORITHM.md): :mod:`.affinity` (the one affinity definition), :mod:`.eigen` (every Fiedler solver),
:mod:`.scoring` (thresholds and split scores), :mod:`.tree` (the one recursion: tree, acceptance rule, schedule),
:mod:`.host` and :mod:`.batched` (its splitters), :mod:`.ncut` and :mod:`.device` (entry points on host and device
features), :mod:`.rwncut` (the random-walk NCut), :mod:`.autosc` (AutoSC, one-shot K-way spectral clustering).
"""

from .affinity import affinity, affinity_from_tokens, l2_normalize, namespace_affinity, reference_affinity
from .autosc import AUTOSC_ALPHAS, AutoSCResult, autosc, autosc_labels
from .batched import build_trees_batched
from .device import device_affinity, device_namespace, device_ncut_trees
from .eigen import SOLVERS, fiedler_vector, spectral_lower_bound, stacked_fiedler_vectors
from .native import native_available, resolve_graph_backend
from .ncut import build_tree, ncut_tree, ncut_trees, recursive_ncut, recursive_ncut_affinity
from .scoring import (NUM_THRESHOLDS, best_threshold_split, binned_ncut_values, candidate_thresholds,
                      ncut_values)
from .tree import ACCEPT_RULES, SCHEDULES, Acceptance, NCutNode, NCutTree, grow, labels_from_masks
from .validation import COMPAT_MODES, GRAPH_BACKENDS, check_alpha, check_tau
from .xp import array_namespace, as_array, cupy_available, is_device, to_host

__all__ = [
    "affinity",
    "affinity_from_tokens",
    "l2_normalize",
    "namespace_affinity",
    "reference_affinity",
    "AUTOSC_ALPHAS",
    "AutoSCResult",
    "autosc",
    "autosc_labels",
    "SOLVERS",
    "fiedler_vector",
    "spectral_lower_bound",
    "stacked_fiedler_vectors",
    "NUM_THRESHOLDS",
    "NCutNode",
    "NCutTree",
    "Acceptance",
    "ACCEPT_RULES",
    "SCHEDULES",
    "grow",
    "best_threshold_split",
    "binned_ncut_values",
    "build_tree",
    "candidate_thresholds",
    "labels_from_masks",
    "ncut_tree",
    "ncut_trees",
    "ncut_values",
    "recursive_ncut",
    "recursive_ncut_affinity",
    "build_trees_batched",
    "device_affinity",
    "device_namespace",
    "device_ncut_trees",
    "COMPAT_MODES",
    "GRAPH_BACKENDS",
    "native_available",
    "resolve_graph_backend",
    "check_alpha",
    "check_tau",
    "array_namespace",
    "as_array",
    "cupy_available",
    "is_device",
    "to_host",
]
