"""Reusable scratch memory for the host graph stage.

The recursive NCut of an N-node grid allocates a few N x N matrices per image (the Gram matrix, the float64
affinity, the subgraphs' matrices): 400 MB at a 64x64 grid. Fresh memory of that size comes from the kernel,
which must fault in and zero every page on first touch, a visible share of the graph stage at 64x64. This module
keeps freed scratch buffers for the next subgraph or the next image instead.

Only the graph stage's *internal* temporaries come from here; nothing returned to a caller (``affinity()``, the
tree's index arrays, labels) does. Pools are per thread (the video pipeline runs graph workers in threads), and
each keeps at most :data:`CACHE_LIMIT_BYTES` of free buffers (environment variable ``DIFFCUT_GRAPH_CACHE_MB``;
0 turns caching off). :func:`release` frees the calling thread's cached buffers.
"""

from __future__ import annotations

import os
import threading

import numpy as np

#: Free buffers kept per thread, in bytes (``DIFFCUT_GRAPH_CACHE_MB``, default 1024).
CACHE_LIMIT_BYTES = int(float(os.environ.get("DIFFCUT_GRAPH_CACHE_MB", "1024")) * (1 << 20))

_local = threading.local()


def _free_list() -> list:
    if not hasattr(_local, "free"):
        _local.free = []
    return _local.free


def empty(shape, dtype=np.float64, order: str = "C") -> np.ndarray:
    """An uninitialised array backed by a cached buffer when one is large enough (smallest that fits)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    free = _free_list()
    best = None
    for i, buf in enumerate(free):
        if buf.size >= nbytes and (best is None or buf.size < free[best].size):
            best = i
    buf = free.pop(best) if best is not None else np.empty(max(nbytes, 1), dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape, order=order)


def give_back(*arrays) -> None:
    """Return arrays obtained from :func:`empty` to the calling thread's pool (``None`` entries are skipped).

    The caller must hold no other reference into them. The pool keeps the largest buffers up to the limit.
    """
    free = _free_list()
    for a in arrays:
        if a is None:
            continue
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        if base.dtype != np.uint8 or base.ndim != 1:
            continue  # not one of ours
        if all(b is not base for b in free):
            free.append(base)
    free.sort(key=lambda b: b.size, reverse=True)
    total = 0
    for i, b in enumerate(free):
        total += b.size
        if total > CACHE_LIMIT_BYTES:
            del free[i:]
            break


def cached_bytes() -> int:
    """Bytes of free buffers the calling thread's pool holds."""
    return sum(b.size for b in _free_list())


def release() -> None:
    """Free every buffer cached by the calling thread."""
    _free_list().clear()
