"""Refinement in the C++ core (``csrc/src/refine.cpp``, in ``diffcut_engine._native``): refine backend ``native``.

The same computations as the CPU fast path (:mod:`.pamr_cpu`) with the same float32 operations in the same order:

- :func:`pamr`: PAMR's affinities (one fused pass per row; the C library's ``exp``, as numba's), the support-box
  propagation of :func:`.pamr_cpu.box_argmax` (each mask on the bounding box of its support, taps summed in the
  reference's order), the argmax (first maximum) and the 3x3 median: the fast path's labels, bit for bit, which are
  the torch reference's (``tests/test_native_refine.py``);
- :func:`concept_assign`: :func:`diffcut_engine.refine.concept_assign` (concepts, score maps upsampled with torch's
  bilinear arithmetic, argmax); its two small matrix products (the concepts and the grid scores) are summed in
  float64 and rounded once, where torch's GEMM has its own blocking order, so the scores agree to float32 rounding
  and a pixel whose two best concepts tie within that rounding may take the other one (tests: >= 99.9 % of the
  pixels, measured identical on every tested case);
- :func:`refine`: concept assignment at the image's size, then PAMR and the median (the engine's ``full`` preset) in
  one call without Python in between, as a C++ service calls it (``diffcut_refine`` of the C API).

Threads: ``num_threads`` (0: all cores) split each image's rows.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError, InputError
from ..graph import native as graph_native

__all__ = ["available", "require", "pamr", "pamr_affinity", "concept_assign", "refine", "median3x3",
           "joint_upsample"]


def available() -> bool:
    """Whether the C++ extension ``diffcut_engine._native`` is built."""
    return graph_native.native_available()


def require():
    """The extension module; :class:`BackendUnavailableError` with a one-line reason if it is not built."""
    if not available():
        raise BackendUnavailableError(
            "refine backend 'native' needs the C++ extension diffcut_engine._native, which is not built: reinstall "
            "with a C++17 compiler available (pip install -e . or pip install diffcut-engine from the sdist)")
    return graph_native.require_native()


def _image(image) -> np.ndarray:
    return np.ascontiguousarray(image, dtype=np.float32)


def _labels(labels) -> np.ndarray:
    a = np.asarray(labels)
    if a.dtype.kind in "iu" and a.size and a.dtype.itemsize >= 4 and \
            (int(a.max()) > np.iinfo(np.int32).max or int(a.min()) < np.iinfo(np.int32).min):
        # (a cast would wrap them silently)
        raise InputError(f"label ids must fit int32 for the C++ core, got values in [{int(a.min())}, {int(a.max())}]")
    return np.ascontiguousarray(a, dtype=np.int32)


def pamr(image, labels, num_segments: int, *, iters: int = 10, dilations=(1, 2, 4, 8), median: bool = True,
         num_threads: int = 0, budget: int = 1 << 25) -> np.ndarray:
    """PAMR argmax (+ the 3x3 median) of ``labels`` (h, w) on ``image`` (3, H, W) float32 in [0, 1]: (H, W) int32.

    The masks are resized to (H, W) as the official PAMR resizes them (bilinear, ``align_corners=True``) when
    (h, w) differs. Validated arguments (``refine.refine_at`` checks them); ``budget``: floats of masks propagated
    at once.
    """
    return require().pamr(_image(image), _labels(labels), int(num_segments), int(iters), [int(d) for d in dilations],
                          bool(median), int(num_threads), int(budget))


def pamr_affinity(image, dilations=(1, 2, 4, 8), *, num_threads: int = 0) -> np.ndarray:
    """PAMR's affinities (8 * len(dilations), H, W) float32 of a (3, H, W) image (:func:`.pamr_cpu.affinity`)."""
    return require().pamr_affinity(_image(image), [int(d) for d in dilations], int(num_threads))


def concept_assign(features, grid_labels, num_segments: int, out_size, *, num_threads: int = 0) -> np.ndarray:
    """:func:`diffcut_engine.refine.concept_assign` of (h, w, C) L2-normalised features: (H, W) int32."""
    h, w = (int(v) for v in out_size)
    return require().concept_assign(_image(features), _labels(grid_labels), int(num_segments), h, w,
                                    int(num_threads))


def refine(features, grid_labels, num_segments: int, image, *, iters: int = 10, dilations=(1, 2, 4, 8),
           median: bool = True, num_threads: int = 0, work_size=None) -> np.ndarray:
    """The engine's refinement in one call: concept assignment of the grid labels at the size of ``image``
    (3, H, W), then (K > 1) PAMR and the median, at the image's size (``work_size=None``: the ``full`` preset) or
    at ``work_size`` (height, width) with the edge-aware return (``refine.refine_at``'s ``work_size``: ``demo``,
    ``eval``): (H, W) int32."""
    wh, ww = (0, 0) if work_size is None else (int(v) for v in work_size)
    return require().refine(_image(features), _labels(grid_labels), int(num_segments), _image(image), int(iters),
                            [int(d) for d in dilations], bool(median), int(num_threads), wh, ww)


def median3x3(labels, *, num_threads: int = 0) -> np.ndarray:
    """:func:`diffcut_engine.refine.median3x3` of (H, W) labels, as int32."""
    return require().median3x3(_labels(labels), int(num_threads))


def joint_upsample(labels, small_img, big_img, sigma: float = 0.1, *, num_threads: int = 0) -> np.ndarray:
    """:func:`.pamr_cpu.joint_upsample` in the C++ core (the same labels, bit for bit): (h, w) labels of the
    (3, h, w) image ``small_img`` -> (H, W) int32 labels of the (3, H, W) image ``big_img``."""
    return require().joint_upsample(_labels(labels), _image(small_img), _image(big_img), float(sigma),
                                    int(num_threads))
