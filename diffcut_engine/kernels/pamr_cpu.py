"""PAMR on the CPU with numba: fused affinities, a dense propagation and a sparse (top-C labels) propagation.

The torch reference is :mod:`diffcut_engine.refine` (``pamr_affinity`` and ``pamr_soft``); these kernels compute
the same quantities in the same order of summation (tap by tap, dilation-major), in float32:

- :func:`affinity`: PAMR's softmax-normalised affinities (P = 8 x dilations, H, W), one pass per pixel (local
  standard deviation, logits and softmax fused; no (P, 3, H, W) intermediate).
- :func:`dense_step`: one propagation step of K dense masks, all dilations in one pass.
- :func:`sparse_step`: one propagation step where every pixel keeps only its ``C`` largest labels (values at
  least ``delta``) and an **error bound**: ``err`` is an upper bound on the mass the truncation lost at the pixel.
  Because the affinities are non-negative and every row sums to 1, the kept values are lower bounds of the exact
  ones, and any label's exact value exceeds its kept value (0 if it was dropped) by at most ``err``. The cost per
  pixel depends on the labels present around it, not on K.
- :func:`joint_upsample`: edge-aware label upsampling (a joint bilateral vote over the 4x4 low-resolution
  neighbours, guided by the full-resolution colours).

numba is optional (extra ``[fast]``); :func:`available` says whether it imports. Kernels compile on first use
(cached on disk).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..utils.imports import is_available

__all__ = ["available", "affinity", "dense_step", "sparse_step", "box_argmax", "median3x3", "joint_upsample", "offsets"]

_NB = None
if is_available("numba"):
    import numba as _NB  # noqa: N812


def available() -> bool:
    """True when numba imports (the CPU fast path can run)."""
    return _NB is not None


def offsets(dilations) -> np.ndarray:
    """(P, 2) int64 tap offsets (dy, dx): dilation-major, then row-major over the 3x3 ring (the reference's order)."""
    ring = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
    return np.array([(dy * d, dx * d) for d in dilations for dy, dx in ring], dtype=np.int64)


if _NB is not None:
    _jit = _NB.njit(parallel=True, cache=True, nogil=True)
    _jit1 = _NB.njit(cache=True, nogil=True, inline="always")
    _prange = _NB.prange

    @_jit1
    def _shift_row(row, dx, buf):  # pragma: no cover - compiled
        """buf[x] = row[clamp(x + dx)] (replicate border), by three contiguous segments."""
        w = row.shape[0]
        lo = min(max(-dx, 0), w)
        hi = max(min(w - dx, w), lo)
        for x in range(lo):
            buf[x] = row[0]
        buf[lo:hi] = row[lo + dx:hi + dx]
        for x in range(hi, w):
            buf[x] = row[w - 1]
        return buf

    @_jit
    def _affinity(img, offs, nd):  # pragma: no cover - compiled
        _, h, w = img.shape
        p_total = offs.shape[0]
        out = np.empty((p_total, h, w), np.float32)
        ntaps = np.float32(9 * nd)
        ndf = np.float32(nd)
        for y in _prange(h):
            sh = np.empty(w, np.float32)
            mean = np.empty((3, w), np.float32)
            den = np.empty((3, w), np.float32)
            logit = np.zeros((p_total, w), np.float32)
            for c in range(3):
                row = img[c, y]
                tot = row * ndf
                for p in range(p_total):
                    y2 = min(max(y + offs[p, 0], 0), h - 1)
                    _shift_row(img[c, y2], offs[p, 1], sh)
                    for x in range(w):
                        tot[x] += sh[x]
                for x in range(w):
                    mean[c, x] = tot[x] / ntaps
                sq = np.empty(w, np.float32)
                for x in range(w):
                    d0 = row[x] - mean[c, x]
                    sq[x] = d0 * d0 * ndf
                for p in range(p_total):
                    y2 = min(max(y + offs[p, 0], 0), h - 1)
                    _shift_row(img[c, y2], offs[p, 1], sh)
                    for x in range(w):
                        d = sh[x] - mean[c, x]
                        sq[x] += d * d
                for x in range(w):
                    den[c, x] = np.float32(1e-8) + np.float32(0.1) * np.sqrt(sq[x] / (ntaps - np.float32(1.0)))
                for p in range(p_total):
                    y2 = min(max(y + offs[p, 0], 0), h - 1)
                    _shift_row(img[c, y2], offs[p, 1], sh)
                    for x in range(w):
                        logit[p, x] += abs(row[x] - sh[x]) / den[c, x]
            mx = np.full(w, np.float32(-np.inf), np.float32)
            for p in range(p_total):
                for x in range(w):
                    v = -(logit[p, x] / np.float32(3.0))
                    logit[p, x] = v
                    mx[x] = max(mx[x], v)
            tot = np.zeros(w, np.float32)
            for p in range(p_total):
                for x in range(w):
                    e = np.exp(logit[p, x] - mx[x])
                    logit[p, x] = e
                    tot[x] += e
            for p in range(p_total):
                for x in range(w):
                    out[p, y, x] = logit[p, x] / tot[x]
        return out

    @_jit
    def _dense_step(m, aff, offs, out):  # pragma: no cover - compiled
        k_total, h, w = m.shape
        p_total = offs.shape[0]
        for y in _prange(h):
            acc = np.zeros((k_total, w), np.float32)
            for p in range(p_total):
                y2 = min(max(y + offs[p, 0], 0), h - 1)
                dx = offs[p, 1]
                lo = min(max(-dx, 0), w)          # x < lo: clamped to column 0
                hi = max(min(w - dx, w), lo)      # x >= hi: clamped to column w-1
                arow = aff[p, y]
                for k in range(k_total):
                    mrow = m[k, y2]
                    ac = acc[k]
                    for x in range(lo):
                        ac[x] += mrow[0] * arow[x]
                    src = mrow[lo + dx:hi + dx]
                    a2 = arow[lo:hi]
                    d2 = ac[lo:hi]
                    for x in range(hi - lo):
                        d2[x] += src[x] * a2[x]
                    for x in range(hi, w):
                        ac[x] += mrow[w - 1] * arow[x]
            out[:, y, :] = acc
        return out

    @_jit
    def _sparse_step(lab, val, err, aff, offs, nlab, delta, lab_out, val_out, err_out):  # pragma: no cover
        h, w, c_total = lab.shape
        p_total = offs.shape[0]
        for y in _prange(h):
            acc = np.zeros(nlab, np.float32)
            stamp = np.full(nlab, -1, np.int64)
            touched = np.empty(p_total * c_total, np.int64)
            ys = np.empty(p_total, np.int64)
            for p in range(p_total):
                ys[p] = min(max(y + offs[p, 0], 0), h - 1)
            for x in range(w):
                n = 0
                e = np.float32(0.0)
                for p in range(p_total):
                    a = aff[p, y, x]
                    y2 = ys[p]
                    x2 = min(max(x + offs[p, 1], 0), w - 1)
                    e += err[y2, x2] * a
                    for c in range(c_total):
                        lb = lab[y2, x2, c]
                        if lb < 0:
                            break
                        v = val[y2, x2, c] * a
                        if stamp[lb] != x:
                            stamp[lb] = x
                            acc[lb] = v
                            touched[n] = lb
                            n += 1
                        else:
                            acc[lb] += v
                # keep the C largest values >= delta, in decreasing order (ties: smaller label first)
                kept = 0
                for slot in range(c_total):
                    best = -1
                    bq = -1
                    bv = np.float32(-1.0)
                    for q in range(n):
                        lb = touched[q]
                        if lb < 0:
                            continue
                        v = acc[lb]
                        if v > bv or (v == bv and lb < best):
                            bv = v
                            best = lb
                            bq = q
                    if best < 0 or bv < delta:
                        break
                    lab_out[y, x, slot] = best
                    val_out[y, x, slot] = bv
                    touched[bq] = -1
                    kept += 1
                for slot in range(kept, c_total):
                    lab_out[y, x, slot] = -1
                    val_out[y, x, slot] = 0.0
                for q in range(n):
                    lb = touched[q]
                    if lb >= 0:
                        e += acc[lb]
                err_out[y, x] = e

    @_jit1
    def _u(i):  # pragma: no cover - compiled
        """A non-negative int64 index as uint64: numba then skips the wraparound test and the loop vectorises."""
        return _NB.uint64(i)

    @_jit
    def _label_boxes(labels, k):  # pragma: no cover - compiled
        """(k, 4) int64 [row0, row1, col0, col1) bounding box of every label id (empty: row0 = row1 = 0)."""
        h, w = labels.shape
        lo = np.full((h, k), w, np.int64)
        hi = np.full((h, k), -1, np.int64)
        for y in _prange(h):
            for x in range(w):
                lb = labels[y, x]
                lo[y, lb] = min(lo[y, lb], x)
                hi[y, lb] = max(hi[y, lb], x)
        out = np.zeros((k, 4), np.int64)
        for lb in range(k):
            r0 = -1
            r1 = -1
            c0 = w
            c1 = -1
            for y in range(h):
                if hi[y, lb] >= 0:
                    if r0 < 0:
                        r0 = y
                    r1 = y
                    c0 = min(c0, lo[y, lb])
                    c1 = max(c1, hi[y, lb])
            if r0 >= 0:
                out[lb, 0] = r0
                out[lb, 1] = r1 + 1
                out[lb, 2] = c0
                out[lb, 3] = c1 + 1
        return out

    @_jit
    def _box_init(labels, ys0, ys1, wy0, wy1, xs0, xs1, wx0, wx1, resized, ids, sbox, off, out):  # pragma: no cover
        """Initial masks of the labels ``ids`` on their storage boxes (``refine.resize_masks_init``'s arithmetic)."""
        n = ids.shape[0]
        for j in _prange(n):
            lb = ids[j]
            r0, r1, c0, c1 = sbox[j, 0], sbox[j, 1], sbox[j, 2], sbox[j, 3]
            sw = c1 - c0
            for y in range(r0, r1):
                base = off[j] + (y - r0) * sw - c0
                for x in range(c0, c1):
                    if resized:
                        i0 = np.float32(1.0) if labels[ys0[y], xs0[x]] == lb else np.float32(0.0)
                        i1 = np.float32(1.0) if labels[ys0[y], xs1[x]] == lb else np.float32(0.0)
                        i2 = np.float32(1.0) if labels[ys1[y], xs0[x]] == lb else np.float32(0.0)
                        i3 = np.float32(1.0) if labels[ys1[y], xs1[x]] == lb else np.float32(0.0)
                        out[base + x] = wy0[y] * (wx0[x] * i0 + wx1[x] * i1) + wy1[y] * (wx0[x] * i2 + wx1[x] * i3)
                    else:
                        out[base + x] = np.float32(1.0) if labels[y, x] == lb else np.float32(0.0)
        return out

    @_jit1
    def _box_tap(src, acc, af, off, sbox, box, offs, j, aoff, p, y, h, w, hw):  # pragma: no cover - compiled
        """acc (label j's row y) += tap p of label j's mask; borders clamped as the reference's padding."""
        y2 = min(max(y + offs[p, 0], 0), h - 1)
        dx = offs[p, 1]
        abase = p * hw + y * w
        c0 = box[j, 2]
        c1 = box[j, 3]
        sw = sbox[j, 3] - sbox[j, 2]
        sb = off[j] + (y2 - sbox[j, 0]) * sw - sbox[j, 2]     # + image column -> index in src
        ab = aoff - c0                                         # + image column -> index in acc
        lo = min(max(-dx, c0), c1)        # x < lo reads column 0 (clamped)
        hi = max(min(w - dx, c1), lo)     # x >= hi reads column w - 1 (clamped)
        if lo > c0:
            v = src[sb]
            for x in range(c0, lo):
                acc[ab + x] += v * af[abase + x]
        s0 = _u(sb + lo + dx)
        a0 = _u(abase + lo)
        d0 = _u(ab + lo)
        for i in range(_u(hi - lo)):
            acc[d0 + i] += src[s0 + i] * af[a0 + i]
        if hi < c1:
            v = src[sb + w - 1]
            for x in range(hi, c1):
                acc[ab + x] += v * af[abase + x]

    @_jit
    def _box_step(src, dst, off, sbox, box, aff, offs, label_major):  # pragma: no cover - compiled
        """One step of the masks stored on boxes: ``dst`` on ``box`` (per label [r0, r1, c0, c1)) from ``src``.

        Label j's values live in ``src[off[j] + (y - sbox[j, 0]) * width_j + (x - sbox[j, 2])]`` for (y, x) in its
        storage box ``sbox[j]``; outside ``box[j]`` of the previous step they are zero. Per output pixel the taps
        are summed in the reference's order (dilation-major, then row-major), exactly as :func:`_dense_step`.
        """
        n = off.shape[0]
        p_total, h, w = aff.shape
        hw = h * w
        af = aff.reshape(p_total * hw)
        for y in _prange(h):
            act = np.empty(n, np.int64)
            aoff = np.empty(n, np.int64)
            na = 0
            tot = 0
            for j in range(n):
                if box[j, 0] <= y and y < box[j, 1] and box[j, 2] < box[j, 3]:
                    act[na] = j
                    aoff[na] = tot
                    tot += box[j, 3] - box[j, 2]
                    na += 1
            if na == 0:
                continue
            acc = np.zeros(tot, np.float32)
            if label_major:     # one label's acc row stays in L1 over all taps; the affinity rows in L2
                for q in range(na):
                    for p in range(p_total):
                        _box_tap(src, acc, af, off, sbox, box, offs, act[q], aoff[q], p, y, h, w, hw)
            else:               # one tap's affinity row is read once for all labels
                for p in range(p_total):
                    for q in range(na):
                        _box_tap(src, acc, af, off, sbox, box, offs, act[q], aoff[q], p, y, h, w, hw)
            for q in range(na):
                j = act[q]
                c0 = box[j, 2]
                c1 = box[j, 3]
                sw = sbox[j, 3] - sbox[j, 2]
                db = _u(off[j] + (y - sbox[j, 0]) * sw + c0 - sbox[j, 2])
                ab = _u(aoff[q])
                for i in range(_u(c1 - c0)):
                    dst[db + i] = acc[ab + i]
        return dst

    @_jit
    def _box_argmax(buf, off, sbox, ids, best_val, best_lab):  # pragma: no cover - compiled
        """Running argmax over labels in increasing id order (strict ``>``: the first maximum wins, as torch)."""
        n = off.shape[0]
        h, w = best_val.shape
        for y in _prange(h):
            for j in range(n):
                r0, r1, c0, c1 = sbox[j, 0], sbox[j, 1], sbox[j, 2], sbox[j, 3]
                if y < r0 or y >= r1:
                    continue
                base = off[j] + (y - r0) * (c1 - c0) - c0
                lb = ids[j]
                for x in range(c0, c1):
                    v = buf[base + x]
                    if v > best_val[y, x]:
                        best_val[y, x] = v
                        best_lab[y, x] = lb
        return best_lab

    @_jit
    def _median3x3(labels, out):  # pragma: no cover - compiled
        """3x3 median with clamped borders (``refine.median3x3``): the 5th smallest of the 9 window values."""
        h, w = labels.shape
        for y in _prange(h):
            v = np.empty(9, labels.dtype)
            for x in range(w):
                n = 0
                for dy in range(-1, 2):
                    yy = min(max(y + dy, 0), h - 1)
                    for dx in range(-1, 2):
                        xx = min(max(x + dx, 0), w - 1)
                        c = labels[yy, xx]
                        i = n                       # insertion sort of the window
                        while i > 0 and v[i - 1] > c:
                            v[i] = v[i - 1]
                            i -= 1
                        v[i] = c
                        n += 1
                out[y, x] = v[4]
        return out

    @_jit
    def _joint_upsample(labels, small_img, big_img, sigma_c, out):  # pragma: no cover - compiled
        hs, ws = labels.shape
        _, hb, wb = big_img.shape
        sy = hs / hb
        sx = ws / wb
        inv = np.float32(1.0) / (np.float32(2.0) * sigma_c * sigma_c)
        for y in _prange(hb):
            cy = (y + 0.5) * sy - 0.5
            y0 = int(np.floor(cy))
            labs = np.empty(16, np.int64)
            wts = np.empty(16, np.float32)
            for x in range(wb):
                cx = (x + 0.5) * sx - 0.5
                x0 = int(np.floor(cx))
                # fast path: the 2x2 nearest low-res labels agree
                ya = min(max(y0, 0), hs - 1)
                yb = min(max(y0 + 1, 0), hs - 1)
                xa = min(max(x0, 0), ws - 1)
                xb = min(max(x0 + 1, 0), ws - 1)
                l0 = labels[ya, xa]
                if labels[ya, xb] == l0 and labels[yb, xa] == l0 and labels[yb, xb] == l0:
                    out[y, x] = l0
                    continue
                n = 0
                for j in range(-1, 3):
                    yy = min(max(y0 + j, 0), hs - 1)
                    wy = max(np.float32(0.0), np.float32(2.0) - abs(np.float32(y0 + j) - np.float32(cy)))
                    for i in range(-1, 3):
                        xx = min(max(x0 + i, 0), ws - 1)
                        wx = max(np.float32(0.0), np.float32(2.0) - abs(np.float32(x0 + i) - np.float32(cx)))
                        d2 = np.float32(0.0)
                        for c in range(3):
                            d = big_img[c, y, x] - small_img[c, yy, xx]
                            d2 += d * d
                        wt = wy * wx * np.exp(-d2 * inv)
                        lb = labels[yy, xx]
                        found = False
                        for q in range(n):
                            if labs[q] == lb:
                                wts[q] += wt
                                found = True
                                break
                        if not found:
                            labs[n] = lb
                            wts[n] = wt
                            n += 1
                best = labs[0]
                bw = wts[0]
                for q in range(1, n):
                    if wts[q] > bw or (wts[q] == bw and labs[q] < best):
                        bw = wts[q]
                        best = labs[q]
                out[y, x] = best
        return out


def _need():
    if _NB is None:
        from ..errors import BackendUnavailableError
        raise BackendUnavailableError("the CPU fast path of PAMR needs numba, which is not installed; install it "
                                      "with: pip install 'diffcut-engine[fast]'")


def affinity(image: np.ndarray, dilations) -> np.ndarray:
    """(3, H, W) float32 image -> (8 * len(dilations), H, W) float32 affinities (``refine.pamr_affinity``)."""
    _need()
    dilations = tuple(dilations)  # (read twice below: an iterator would be empty the second time)
    return _affinity(np.ascontiguousarray(image, dtype=np.float32), offsets(dilations), len(dilations))


def dense_step(masks: np.ndarray, aff: np.ndarray, offs: np.ndarray, out: np.ndarray) -> np.ndarray:
    """One PAMR step of dense (K, H, W) float32 masks into ``out`` (same shape); returns ``out``."""
    _need()
    return _dense_step(masks, aff, offs, out)


def sparse_step(lab, val, err, aff, offs, num_labels: int, delta: float, lab_out, val_out, err_out) -> None:
    """One PAMR step of the top-C representation ``lab``/``val`` (H, W, C) and its error bound ``err`` (H, W)."""
    _need()
    _sparse_step(lab, val, err, aff, offs, num_labels, np.float32(delta), lab_out, val_out, err_out)


def joint_upsample(labels: np.ndarray, small_img: np.ndarray, big_img: np.ndarray,
                   sigma: float = 0.1) -> np.ndarray:
    """Labels (h, w) of ``small_img`` (3, h, w) -> labels (H, W) of ``big_img`` (3, H, W), edge-aware.

    Each output pixel takes the label with the largest joint bilateral weight over the 4x4 low-resolution
    neighbours around its position (bilinear-tent spatial weight times ``exp(-|I_big(p) - I_small(q)|^2 /
    (2 sigma^2))``); where the 2x2 nearest low-resolution labels agree, that label is taken directly.
    """
    _need()
    out = np.empty(big_img.shape[-2:], np.int64)
    return _joint_upsample(np.ascontiguousarray(labels, dtype=np.int64),
                           np.ascontiguousarray(small_img, dtype=np.float32),
                           np.ascontiguousarray(big_img, dtype=np.float32), np.float32(sigma), out)


#: Loop order of :func:`box_argmax`'s step: label-major (each label's row of accumulators stays in L1 over all
#: taps) once the active labels' accumulators of one row exceed this many floats, else tap-major (one affinity row
#: read once for all labels). ``None`` in a test or benchmark forces neither: see :func:`_label_major`.
LABEL_MAJOR_FLOATS = 4096
FORCE_LABEL_MAJOR = None


def _label_major(boxes: np.ndarray, h: int) -> bool:
    if FORCE_LABEL_MAJOR is not None:
        return bool(FORCE_LABEL_MAJOR)
    return bool(((boxes[:, 3] - boxes[:, 2]) * (boxes[:, 1] - boxes[:, 0])).sum() > LABEL_MAJOR_FLOATS * h)


def box_argmax(labels: np.ndarray, size, num_labels: int, aff, offs: np.ndarray, iters: int, corners=None,
               budget: int = 1 << 25) -> np.ndarray:
    """PAMR argmax labels (H, W) int64 of all ``num_labels`` masks, each propagated exactly on its support box.

    Label k's mask is zero outside the bounding box of its initial support dilated by ``t x D`` after step t
    (D: the largest offset; a tap reads within D of the pixel, replicate borders included), so every step
    computes each mask only on that box, with the arithmetic and the order of summation of :func:`dense_step`
    (the values are those of the dense propagation, bit for bit; a skipped term is ``0 x a``). Masks are stored
    on their last box dilated by D, labels in increasing id order in chunks of at most ``budget`` floats, and the
    argmax keeps the first maximum, as ``torch.argmax``. Work: the area of the boxes, not K x H x W, so for local
    dilations (``eval``/``full``) it follows the labels present around each pixel, not K.

    ``labels``: (h, w) int64 at the low resolution; ``corners``: None when (h, w) == size, else the bilinear
    ``align_corners=True`` corner indices and weights ``(ys0, ys1, wy0, wy1, xs0, xs1, wx0, wx1)``
    (``refine.resize_masks_init``'s).
    """
    _need()
    h, w = size
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        # (the compiled loops index by label without bounds checks)
        raise InputError(f"labels must lie in [0, num_labels={num_labels}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    lbox = _label_boxes(labels, num_labels)
    if corners is None:
        resized = False
        z = np.zeros(1, np.int64)
        zf = np.zeros(1, np.float32)
        corners = (z, z, zf, zf, z, z, zf, zf)
        box0 = lbox.copy()
    else:
        resized = True
        ys0, ys1, _, _, xs0, xs1, _, _ = corners
        box0 = np.zeros_like(lbox)
        for lb in range(num_labels):
            r0, r1, c0, c1 = lbox[lb]
            if r1 <= r0:
                continue
            rows = np.nonzero((ys0 <= r1 - 1) & (ys1 >= r0))[0]
            cols = np.nonzero((xs0 <= c1 - 1) & (xs1 >= c0))[0]
            if len(rows) and len(cols):
                box0[lb] = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
    dmax = int(np.abs(offs).max()) if len(offs) else 0

    def grow(b, r):
        g = b.copy()
        g[:, 0] = np.maximum(b[:, 0] - r, 0)
        g[:, 1] = np.minimum(b[:, 1] + r, h)
        g[:, 2] = np.maximum(b[:, 2] - r, 0)
        g[:, 3] = np.minimum(b[:, 3] + r, w)
        g[b[:, 1] <= b[:, 0]] = 0
        return g

    def step_box(b, t):
        """The box computed at step t: the support bound, columns widened to multiples of 32 (whole vectors; the
        extra columns hold exact zeros) within the image."""
        g = grow(b, t * dmax)
        g[:, 2] = g[:, 2] // 32 * 32
        g[:, 3] = np.minimum((g[:, 3] + 31) // 32 * 32, w)
        g[b[:, 1] <= b[:, 0]] = 0
        return g

    present = np.nonzero(box0[:, 1] > box0[:, 0])[0]
    sbox_all = grow(step_box(box0, iters), dmax) if iters else box0
    area = (sbox_all[:, 1] - sbox_all[:, 0]) * (sbox_all[:, 3] - sbox_all[:, 2])
    best_val = np.zeros((h, w), np.float32)     # = label 0's value where its box does not reach
    best_lab = np.zeros((h, w), np.int64)
    start = 0
    while start < len(present):
        stop, used = start, 0
        while stop < len(present) and (stop == start or used + area[present[stop]] <= budget):
            used += area[present[stop]]
            stop += 1
        ids = present[start:stop].astype(np.int64)
        sbox = np.ascontiguousarray(sbox_all[ids])
        off = np.zeros(len(ids), np.int64)
        off[1:] = np.cumsum(area[ids])[:-1]
        a = _box_init(labels, *corners, resized, ids, sbox, off, np.empty(used, np.float32))
        if iters:
            b = np.zeros(used, np.float32)
            for t in range(1, iters + 1):
                bt = step_box(box0[ids], t)
                _box_step(a, b, off, sbox, bt, aff, offs, _label_major(bt, h))
                a, b = b, a
        _box_argmax(a, off, sbox, ids, best_val, best_lab)
        start = stop
    return best_lab


def median3x3(labels: np.ndarray) -> np.ndarray:
    """3x3 median filter of an (H, W) integer label map, clamped borders: ``refine.median3x3``'s result."""
    _need()
    labels = np.ascontiguousarray(labels)
    return _median3x3(labels, np.empty_like(labels))
