"""Realistic feature grids from scikit-image photos, for the graph stage's semantics tests and benchmark.

Two families (issue 22): ``lab_position`` (CIE Lab colour plus the token's position plus Gaussian noise) and
``filter_bank`` (a small bank of Gaussian, derivative-of-Gaussian and Laplacian-of-Gaussian responses of the
grey image, plus the colour, plus noise), both on the grid itself (the photo resized to h x w, anti-aliased).
"""

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _photo(name, h, w):
    import skimage.data
    from skimage.transform import resize

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return resize(image[..., :3], (h, w), anti_aliasing=True, preserve_range=False).astype(np.float64)


def lab_position(name, h, w, *, noise=0.05, seed=0):
    """(h, w, 5 + 3) float32: Lab / 100, position (y, x) in [0, 1], 3 small noise channels; all plus noise."""
    from skimage.color import rgb2lab

    rng = np.random.default_rng(seed)
    lab = rgb2lab(_photo(name, h, w)) / 100.0
    yy, xx = np.mgrid[0:h, 0:w]
    pos = np.stack([yy / max(h - 1, 1), xx / max(w - 1, 1)], axis=-1) * 0.5
    feats = np.concatenate([lab, pos, np.zeros((h, w, 3))], axis=-1)
    return (feats + noise * rng.standard_normal(feats.shape)).astype(np.float32)


def filter_bank(name, h, w, *, noise=0.05, seed=0):
    """(h, w, 13) float32: colour, Gaussian smoothings, Gaussian derivatives and LoG of the grey image, noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    rgb = _photo(name, h, w)
    grey = rgb.mean(axis=-1)
    chans = [rgb[..., c] for c in range(3)]
    for sigma in (1.0, 2.0):
        chans.append(ndimage.gaussian_filter(grey, sigma))
        chans.append(2 * ndimage.gaussian_filter(grey, sigma, order=(0, 1)))
        chans.append(2 * ndimage.gaussian_filter(grey, sigma, order=(1, 0)))
        chans.append(4 * ndimage.gaussian_laplace(grey, sigma))
    chans += [np.full((h, w), 0.5), np.full((h, w), 0.25)]  # a common offset: similarities not all near 0
    feats = np.stack(chans, axis=-1)
    return (feats + noise * rng.standard_normal(feats.shape)).astype(np.float32)


FAMILIES = {"lab": lab_position, "filters": filter_bank}
