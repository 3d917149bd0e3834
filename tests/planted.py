"""Planted partitions with known answers: blobs of distinct random feature centres plus noise."""

import numpy as np


def planted_regions(h, w, kind="quadrants"):
    """Integer region maps of a few shapes (0..K-1)."""
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "quadrants":
        return (yy >= h // 2).astype(int) * 2 + (xx >= (w * 3) // 5).astype(int)
    if kind == "disc":
        r = np.hypot(yy - h * 0.45, xx - w * 0.55)
        lab = (r < min(h, w) * 0.3).astype(int)
        lab[(yy > h * 0.8) & (lab == 0)] = 2
        return lab
    if kind == "stripes":
        return np.minimum(xx * 5 // w, 4)
    raise ValueError(kind)


def planted_features(regions, *, channels=64, noise=0.35, seed=0):
    """Features whose tokens in region k are centre_k + Gaussian noise (centres random, far apart)."""
    rng = np.random.default_rng(seed)
    k = int(regions.max()) + 1
    centres = rng.normal(size=(k, channels))
    return (centres[regions] + noise * rng.normal(size=regions.shape + (channels,))).astype(np.float32)


def same_partition(a, b):
    """True if two label maps induce the same partition (up to renumbering)."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))
