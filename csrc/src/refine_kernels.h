// The hot loops of refine.cpp, included twice there: once for the baseline ISA and once (x86-64 with GCC or clang)
// with AVX2 + FMA enabled, chosen at run time by the CPU's features. The same IEEE operations either way (no
// contraction: -ffp-contract=off; std::fma only where written), so the same floats: wider vectors, and std::fma in
// one instruction instead of a library call. No include guard (by design); needs i64, clamp, Box, Tap, and the
// macros DIFFCUT_KERNEL (function attributes) and DIFFCUT_KERNEL_INLINE.

// buf[x] = row[clamp(x + dx, 0, w - 1)] (the replicate padding of the reference).
DIFFCUT_KERNEL_INLINE void shift_row(const float* row, i64 w, i64 dx, float* buf) {
  const i64 lo = std::min(std::max(-dx, i64{0}), w);
  const i64 hi = std::max(std::min(w - dx, w), lo);
  for (i64 x = 0; x < lo; ++x) buf[x] = row[0];
  if (hi > lo) std::memcpy(buf + lo, row + lo + dx, static_cast<std::size_t>(hi - lo) * sizeof(float));
  for (i64 x = hi; x < w; ++x) buf[x] = row[w - 1];
}

// Output row y of the concept assignment: the upsampled scores of the present ids (t: (K, h, out_w) grid rows
// interpolated along x) and their running argmax (strict >: the first maximum wins, as torch.argmax).
DIFFCUT_KERNEL
void assign_row(const float* rows, i64 h, i64 out_w, const std::vector<std::int32_t>& present, i64 y0, i64 y1,
                float wy0, float wy1, float* best, std::int32_t* o) {
  bool first = true;
  for (std::int32_t j : present) {
    const float* t0 = rows + (static_cast<i64>(j) * h + y0) * out_w;
    const float* t1 = rows + (static_cast<i64>(j) * h + y1) * out_w;
    if (first) {
      for (i64 x = 0; x < out_w; ++x) {
        best[x] = std::fma(t0[x], wy0, t1[x] * wy1);
        o[x] = j;
      }
      first = false;
      continue;
    }
    for (i64 x = 0; x < out_w; ++x) {
      const float v = std::fma(t0[x], wy0, t1[x] * wy1);
      if (v > best[x]) {
        best[x] = v;
        o[x] = j;
      }
    }
  }
}

// One row y of pamr_cpu._affinity: local standard deviation, logits and softmax fused (buffers: sh, tot, sq, mx
// of w floats; mean, den of 3w; logit of P w).
DIFFCUT_KERNEL
void affinity_row(const float* img, i64 y, i64 h, i64 w, const std::vector<Tap>& offs, i64 nd, float* out,
                  std::vector<float>& sh, std::vector<float>& mean, std::vector<float>& den,
                  std::vector<float>& logit, std::vector<float>& tot, std::vector<float>& sq, std::vector<float>& mx) {
  const i64 p_total = static_cast<i64>(offs.size());
  const float ntaps = static_cast<float>(9 * nd);
  const float ndf = static_cast<float>(nd);
  const i64 hw = h * w;
  std::fill(logit.begin(), logit.end(), 0.0f);
  for (int c = 0; c < 3; ++c) {
    const float* plane = img + c * hw;
    const float* row = plane + y * w;
    float* mc = mean.data() + c * w;
    float* dc = den.data() + c * w;
    for (i64 x = 0; x < w; ++x) tot[x] = row[x] * ndf;
    for (i64 p = 0; p < p_total; ++p) {
      shift_row(plane + clamp(y + offs[p].dy, 0, h - 1) * w, w, offs[p].dx, sh.data());
      for (i64 x = 0; x < w; ++x) tot[x] += sh[x];
    }
    for (i64 x = 0; x < w; ++x) mc[x] = tot[x] / ntaps;
    for (i64 x = 0; x < w; ++x) {
      const float d0 = row[x] - mc[x];
      sq[x] = d0 * d0 * ndf;
    }
    for (i64 p = 0; p < p_total; ++p) {
      shift_row(plane + clamp(y + offs[p].dy, 0, h - 1) * w, w, offs[p].dx, sh.data());
      for (i64 x = 0; x < w; ++x) {
        const float d = sh[x] - mc[x];
        sq[x] += d * d;
      }
    }
    for (i64 x = 0; x < w; ++x) dc[x] = 1e-8f + 0.1f * std::sqrt(sq[x] / (ntaps - 1.0f));
    for (i64 p = 0; p < p_total; ++p) {
      shift_row(plane + clamp(y + offs[p].dy, 0, h - 1) * w, w, offs[p].dx, sh.data());
      float* lg = logit.data() + p * w;
      for (i64 x = 0; x < w; ++x) lg[x] += std::fabs(row[x] - sh[x]) / dc[x];
    }
  }
  std::fill(mx.begin(), mx.end(), -std::numeric_limits<float>::infinity());
  for (i64 p = 0; p < p_total; ++p) {
    float* lg = logit.data() + p * w;
    for (i64 x = 0; x < w; ++x) {
      const float v = -(lg[x] / 3.0f);
      lg[x] = v;
      mx[x] = std::max(mx[x], v);
    }
  }
  std::fill(tot.begin(), tot.end(), 0.0f);
  for (i64 p = 0; p < p_total; ++p) {
    float* lg = logit.data() + p * w;
    for (i64 x = 0; x < w; ++x) {
      const float e = std::exp(lg[x] - mx[x]);
      lg[x] = e;
      tot[x] += e;
    }
  }
  for (i64 p = 0; p < p_total; ++p) {
    const float* lg = logit.data() + p * w;
    float* o = out + p * hw + y * w;
    for (i64 x = 0; x < w; ++x) o[x] = lg[x] / tot[x];
  }
}

// acc (label j's row y, columns box.c0 .. box.c1) += tap p of label j's mask (src: its storage box sb); af: the
// tap's affinity row y. Borders clamped as the reference's replicate padding.
DIFFCUT_KERNEL_INLINE void box_tap(const float* src, float* acc, const float* af, const Box& sb, const Box& box,
                                   const Tap& tap, i64 y, i64 h, i64 w) {
  const i64 y2 = clamp(y + tap.dy, 0, h - 1);
  const i64 dx = tap.dx;
  const i64 c0 = box.c0, c1 = box.c1;
  const i64 sbase = (y2 - sb.r0) * (sb.c1 - sb.c0) - sb.c0;  // + image column -> index in src
  const i64 lo = std::min(std::max(-dx, c0), c1);             // x < lo reads column 0 (clamped)
  const i64 hi = std::max(std::min(w - dx, c1), lo);          // x >= hi reads column w - 1 (clamped)
  if (lo > c0) {
    const float v = src[sbase];
    for (i64 x = c0; x < lo; ++x) acc[x - c0] += v * af[x];
  }
  {
    float* __restrict d = acc + (lo - c0);
    const float* __restrict q = src + (sbase + lo + dx);
    const float* __restrict f = af + lo;
    const i64 m = hi - lo;
    for (i64 i = 0; i < m; ++i) d[i] += q[i] * f[i];
  }
  if (hi < c1) {
    const float v = src[sbase + w - 1];
    for (i64 x = hi; x < c1; ++x) acc[x - c0] += v * af[x];
  }
}

// Taps fused per pass over a row: each pixel's sum is loaded and stored once per four taps instead of once per tap,
// its terms added in the same order (four source rows and four affinity rows per pass: with eight, the pointers no
// longer fit in registers; measured on the demo preset, 1024 x 1024, K = 7, AVX-512: 1.69 s per call tap by tap,
// 1.38 s in fours, 1.53 s in eights and twos).
constexpr int kTapGroup = 4;
// Fewer fused columns than this: the whole row tap by tap (the split into clamped edges and middle costs more there).
constexpr i64 kFusedMinColumns = 64;

// acc (label j's row y, columns box.c0 .. box.c1) += taps p0, p0 + 1, ..., p0 + g - 1 (g <= kTapGroup) in that
// order per pixel; af: tap p0's affinity row y (tap p0 + t's at af + t * hw). Where no tap of the group clamps,
// the g terms are added in registers in one pass; the other columns go tap by tap (box_tap, the same order).
DIFFCUT_KERNEL_INLINE void box_taps(const float* src, float* acc, const float* af, i64 hw, const Box& sb,
                                    const Box& box, const Tap* taps, int g, i64 y, i64 h, i64 w) {
  const i64 c0 = box.c0, c1 = box.c1;
  i64 mlo = c0, mhi = c1;
  const float* q[kTapGroup];
  const float* f[kTapGroup];
  for (int t = 0; t < g; ++t) {
    const i64 dx = taps[t].dx;
    const i64 y2 = clamp(y + taps[t].dy, 0, h - 1);
    q[t] = src + (y2 - sb.r0) * (sb.c1 - sb.c0) - sb.c0 + dx;  // + image column x: the tap's source of x
    f[t] = af + t * hw;
    mlo = std::max(mlo, std::min(std::max(-dx, c0), c1));
    mhi = std::min(mhi, std::max(std::min(w - dx, c1), c0));
  }
  if (g != kTapGroup || mhi - mlo < kFusedMinColumns) {  // narrow boxes: tap by tap (fewer calls)
    for (int t = 0; t < g; ++t) box_tap(src, acc, f[t], sb, box, taps[t], y, h, w);
    return;
  }
  for (int t = 0; t < g; ++t) {  // the clamping columns, tap by tap
    box_tap(src, acc, f[t], sb, Box{box.r0, box.r1, c0, mlo}, taps[t], y, h, w);
    box_tap(src, acc + (mhi - c0), f[t], sb, Box{box.r0, box.r1, mhi, c1}, taps[t], y, h, w);
  }
  float* __restrict d = acc - c0;
  const float* __restrict q0 = q[0];
  const float* __restrict q1 = q[1];
  const float* __restrict q2 = q[2];
  const float* __restrict q3 = q[3];
  const float* __restrict f0 = f[0];
  const float* __restrict f1 = f[1];
  const float* __restrict f2 = f[2];
  const float* __restrict f3 = f[3];
  // (without the no-alias promise GCC keeps this loop scalar: nine pointers are too many for its runtime checks)
#if defined(__clang__)
#pragma clang loop vectorize(assume_safety)
#elif defined(__GNUC__)
#pragma GCC ivdep
#endif
  for (i64 x = mlo; x < mhi; ++x) {
    float v = d[x];
    v += q0[x] * f0[x];
    v += q1[x] * f1[x];
    v += q2[x] * f2[x];
    v += q3[x] * f3[x];
    d[x] = v;
  }
}

// One row y of a propagation step of the masks stored on boxes: dst on bt[j] from src (label j's values on its
// storage box sbox[j] at off[j]). Per pixel the taps are summed in the reference's order (dilation-major, then
// row-major), exactly as pamr_cpu._box_step / _dense_step; the loop order over labels and taps does not change
// the floats.
DIFFCUT_KERNEL
void box_step_row(i64 y, const float* src, float* dst, const std::vector<i64>& off, const std::vector<Box>& sbox,
                  const std::vector<Box>& bt, const float* aff, const std::vector<Tap>& offs, i64 h, i64 w,
                  bool label_major, std::vector<i64>& act, std::vector<i64>& aoff) {
  const i64 n = static_cast<i64>(bt.size());
  const i64 p_total = static_cast<i64>(offs.size());
  const i64 hw = h * w;
  act.clear();
  aoff.clear();  // where label act[q]'s sums of row y start in dst (its columns bt.c0 .. bt.c1), summed in place
  for (i64 j = 0; j < n; ++j) {
    const Box& q = bt[j];
    if (q.r0 <= y && y < q.r1 && q.c0 < q.c1) {
      const Box& s = sbox[j];
      act.push_back(j);
      aoff.push_back(off[j] + (y - s.r0) * (s.c1 - s.c0) + q.c0 - s.c0);
      std::fill(dst + aoff.back(), dst + aoff.back() + (q.c1 - q.c0), 0.0f);
    }
  }
  const i64 na = static_cast<i64>(act.size());
  if (label_major) {  // one label's sums stay in L1 over all taps
    for (i64 q = 0; q < na; ++q) {
      const i64 j = act[q];
      for (i64 p = 0; p < p_total; p += kTapGroup)
        box_taps(src + off[j], dst + aoff[q], aff + p * hw + y * w, hw, sbox[j], bt[j], offs.data() + p,
                 static_cast<int>(std::min<i64>(kTapGroup, p_total - p)), y, h, w);
    }
  } else {  // one tap's affinity row is read once for all labels
    for (i64 p = 0; p < p_total; p += kTapGroup)
      for (i64 q = 0; q < na; ++q) {
        const i64 j = act[q];
        box_taps(src + off[j], dst + aoff[q], aff + p * hw + y * w, hw, sbox[j], bt[j], offs.data() + p,
                 static_cast<int>(std::min<i64>(kTapGroup, p_total - p)), y, h, w);
      }
  }
}
