"""Slow, literal re-statements of the official DiffCut recursion, for tests only.

Two references, both written from DIFFCUT.md section 3 (a behavioural description of the official
``diffcut/recursive_normalized_cut.py``), one step per line, with Python loops and no vectorisation:

- ``literal_clean``: recursion on explicit index sets (what ``compat="clean"`` promises), float64.
- ``literal_official``: the official painting logic (the rule that ``compat="official"`` applies, and with
  ``dtype=np.float32`` the arithmetic that ``compat="official-float32"`` reproduces): a ``painting`` grid, the
  masked affinity ``W * (1 - p p^T)``, the "keep rows with no exact zero" subgraph rule below the root, a full
  eigendecomposition, the Python loop over 100 thresholds with the z-vector NCut formula, pre-order recursion,
  and the weighted-sum assembly.
"""

import numpy as np


def _normalize(x):
    n = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.maximum(n, 1e-12)


def official_affinity(features, alpha):
    h, w, c = features.shape
    x = _normalize(features.reshape(h * w, c).astype(np.float32)).astype(np.float32)
    s = (x @ x.T).astype(np.float32)
    s = (s - s.min()) / (s.max() - s.min())
    return (s ** np.float32(alpha)).astype(np.float32)


def _fiedler(A, dtype):
    A = A.astype(dtype)
    d = A.sum(axis=1)
    D = np.diag(d)
    Dis = np.diag(1.0 / d ** 0.5).astype(dtype)
    _, vecs = np.linalg.eigh(Dis @ (D - A) @ Dis)
    y = Dis @ vecs[:, 1]
    i = np.argmax(np.abs(y))
    y = y * np.sign(y[i])
    return y, A, D


def _bipartition(y, A, D):
    thresholds = np.linspace(y.min() * 0.99, y.max() * 0.99, 100).astype(y.dtype)
    partitions = [1.0 * (y > t) for t in thresholds]
    L = D - A
    sum_d = np.sum(D)
    diag_d = np.diag(D)
    values = []
    for x in partitions:
        x = (2 * x - 1).astype(A.dtype)
        k = np.sum(diag_d * (x > 0)) / sum_d
        b = k / (1 - k)
        z = (1 + x) - b * (1 - x)
        values.append(float((z @ L @ z) / (z @ D @ z)))
    best = int(np.argmin(values))
    return partitions[best].astype(bool), min(values)


def _assemble(masks, n):
    total = np.zeros(n, dtype=np.float64)
    weight = 1.0
    for m in masks:
        total += weight * m
        weight = total.max() + 1
    _, labels = np.unique(total, return_inverse=True)
    return labels.astype(np.int32)


def literal_clean(features, alpha=10.0, tau=0.5):
    h, w, _ = features.shape
    W = official_affinity(features, alpha).astype(np.float64)
    n = h * w
    masks = []

    def rec(idx):
        if len(idx) < 2:
            return
        y, A, D = _fiedler(W[np.ix_(idx, idx)], np.float64)
        side, value = _bipartition(y, A, D)
        if value < tau:
            m = np.zeros(n)
            m[idx[side]] = 1
            masks.append(m)
            rec(idx[side])
            rec(idx[~side])

    rec(np.arange(n))
    return _assemble(masks, n).reshape(h, w)


def literal_official(features, alpha=10.0, tau=0.5, W=None, dtype=np.float32):
    """The official painting recursion; ``dtype=np.float64`` solves in float64 (the rule without the float32
    rounding of the official eigensolves: what ``compat="official"`` promises)."""
    h, w, _ = features.shape
    n = h * w
    masks = []

    def rec(affinity, painting, mask, level):
        painting = painting + mask
        painting[painting > 0] = 1
        painting[painting <= 0] = 0
        affinity = affinity * (1 - np.outer(painting, painting)).astype(np.float32)
        if level == 0:
            keep = np.arange(n)
        else:
            keep = np.flatnonzero(~(affinity == 0).any(axis=1))  # rows of the masked W with no exact zero
        if len(keep) > 1:
            y, A, D = _fiedler(affinity[np.ix_(keep, keep)], dtype)
            side, value = _bipartition(y, A, D)
            bip = np.zeros(n, dtype=np.float32)
            bip[keep[side]] = 1
            if value < tau:
                masks.append(bip)
                rec(affinity, painting, 1 - bip, level + 1)
                rec(affinity, painting, bip, level + 1)

    if W is None:
        W = official_affinity(features, alpha)
    rec(W, np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32), 0)
    return _assemble(masks, n).reshape(h, w)
