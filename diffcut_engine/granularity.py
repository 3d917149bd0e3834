"""Granularity from one NCut tree: the tau giving a number of segments, and when each segment appears.

A split of the recursive NCut is accepted at ``tau`` when its NCut and every NCut on its path from the root are
below ``tau`` (a node is solved only once its parent's split is accepted). So the cut at ``tau`` has
``1 + #{split nodes whose path maximum is < tau}`` segments, a non-decreasing step function of ``tau`` that
changes only at the path maxima. :func:`tau_for_segments` reads it off a tree
(:class:`~diffcut_engine.graph.NCutTree`) without cutting it again; :func:`leaf_taus` gives, for each segment of a
cut, the tau above which it exists and the tau above which it splits further.
"""

from __future__ import annotations

import numbers
from typing import List, Tuple

import numpy as np

from .errors import InputError

__all__ = ["TAU_CEILING", "check_segments", "split_path_maxima", "segment_count_at_max", "tau_for_segments",
           "leaf_taus"]

#: The NCut of a two-way split is at most 2 (each of its two terms is at most 1): a tree built up to this
#: tau_max holds every split the recursion can make.
TAU_CEILING = 2.0


def check_segments(segments) -> int:
    """``segments`` as an int; :class:`InputError` unless it is a positive integer."""
    if isinstance(segments, bool) or not isinstance(segments, numbers.Integral) or segments < 1:
        raise InputError(f"segments must be a positive integer (the number of segments wanted), got {segments!r}")
    return int(segments)


def split_path_maxima(tree) -> np.ndarray:
    """Sorted path maxima of the tree's split nodes: the largest NCut on the path from the root to each split,
    itself included. The split is part of the cut at ``tau`` exactly when its path maximum is below ``tau``."""
    out, stack = [], [(tree.root, 0.0)]
    while stack:
        node, above = stack.pop()
        if node.is_split:
            m = max(above, float(node.value))
            out.append(m)
            stack.append((node.one, m))
            stack.append((node.zero, m))
    return np.sort(np.asarray(out, dtype=np.float64))


def segment_count_at_max(tree) -> int:
    """The number of segments of the cut at ``tree.tau_max`` (every stored split accepted)."""
    return 1 + len(split_path_maxima(tree))


def tau_for_segments(tree, segments: int) -> Tuple[float, int]:
    """The tau whose cut of ``tree`` has the number of segments closest to ``segments`` (ties to the coarser).

    Each count is reached on an interval of taus; the middle of that interval is returned (the first interval
    starts at 0, the last ends at ``tree.tau_max``), so the choice does not sit on a split's NCut value.

    Returns
    -------
    tau : float
    count : int
        The number of segments of ``tree.cut(tau)``.
    """
    segments = check_segments(segments)
    maxima = split_path_maxima(tree)
    values, counts = np.unique(maxima, return_counts=True)
    # count c_j on (values[j-1], values[j]]: 1 below the first path maximum, then cumulative
    bounds = np.concatenate([[0.0], values, [tree.tau_max]])
    levels = np.concatenate([[1], 1 + np.cumsum(counts)])
    best = None
    for lo, hi, n in zip(bounds[:-1], bounds[1:], levels):
        if not hi > lo:  # an empty interval (a split of NCut 0 is accepted at every tau)
            continue
        key = (abs(int(n) - segments), int(n))
        if best is None or key < best[0]:
            best = (key, 0.5 * (lo + hi), int(n))
    return float(best[1]), best[2]


def leaf_taus(tree, tau: float) -> List[Tuple[np.ndarray, float, float]]:
    """The segments of ``tree.cut(tau)`` with their tau range.

    Returns
    -------
    list of (indices, appears, splits)
        ``indices``: the segment's grid node ids (into the flattened grid). ``appears``: the segment exists in the
        cut at every tau above this value, up to ``splits`` inclusive (0.0 for the whole image). ``splits``: the
        tau above which it is split further (``inf`` when no split of it was found below ``tree.tau_max``).
    """
    out, stack = [], [(tree.root, 0.0)]
    while stack:
        node, above = stack.pop()
        m = max(above, float(node.value)) if node.is_split else float("inf")
        if node.is_split and m < tau:
            stack.append((node.zero, m))
            stack.append((node.one, m))
        else:
            out.append((np.asarray(node.indices), above, m))
    return out
