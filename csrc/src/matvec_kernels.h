// The hot loops of matvec.cpp, included there once per instruction set (as refine_kernels.h in refine.cpp): eight
// float64 lanes as one AVX-512 register (DIFFCUT_LANES 512), two AVX2 ones (256) or an array (0). Fused
// multiply-adds (exactly rounded: the FMA instructions, std::fma in the baseline), lane by lane in the same order,
// so every variant computes the same floats. No include guard (by design); needs i64 and the macros DIFFCUT_KERNEL, DIFFCUT_KERNEL_INLINE and
// DIFFCUT_LANES.

#if DIFFCUT_LANES == 512
using V8 = __m512d;
DIFFCUT_KERNEL_INLINE V8 load(const double* p) { return _mm512_loadu_pd(p); }
DIFFCUT_KERNEL_INLINE V8 widen(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
DIFFCUT_KERNEL_INLINE void store(double* p, V8 v) { _mm512_storeu_pd(p, v); }
DIFFCUT_KERNEL_INLINE V8 splat(double s) { return _mm512_set1_pd(s); }
DIFFCUT_KERNEL_INLINE V8 fmadd(V8 a, V8 b, V8 c) { return _mm512_fmadd_pd(a, b, c); }
DIFFCUT_KERNEL_INLINE void lanes(V8 v, double* t) { _mm512_storeu_pd(t, v); }
#elif DIFFCUT_LANES == 256
struct V8 {
  __m256d lo, hi;
};
DIFFCUT_KERNEL_INLINE V8 load(const double* p) { return {_mm256_loadu_pd(p), _mm256_loadu_pd(p + 4)}; }
DIFFCUT_KERNEL_INLINE V8 widen(const float* p) {
  return {_mm256_cvtps_pd(_mm_loadu_ps(p)), _mm256_cvtps_pd(_mm_loadu_ps(p + 4))};
}
DIFFCUT_KERNEL_INLINE void store(double* p, V8 v) {
  _mm256_storeu_pd(p, v.lo);
  _mm256_storeu_pd(p + 4, v.hi);
}
DIFFCUT_KERNEL_INLINE V8 splat(double s) { return {_mm256_set1_pd(s), _mm256_set1_pd(s)}; }
DIFFCUT_KERNEL_INLINE V8 fmadd(V8 a, V8 b, V8 c) {
  return {_mm256_fmadd_pd(a.lo, b.lo, c.lo), _mm256_fmadd_pd(a.hi, b.hi, c.hi)};
}
DIFFCUT_KERNEL_INLINE void lanes(V8 v, double* t) {
  _mm256_storeu_pd(t, v.lo);
  _mm256_storeu_pd(t + 4, v.hi);
}
#else
struct V8 {
  double v[8];
};
DIFFCUT_KERNEL_INLINE V8 load(const double* p) {
  V8 r;
  for (int i = 0; i < 8; ++i) r.v[i] = p[i];
  return r;
}
DIFFCUT_KERNEL_INLINE V8 widen(const float* p) {
  V8 r;
  for (int i = 0; i < 8; ++i) r.v[i] = static_cast<double>(p[i]);
  return r;
}
DIFFCUT_KERNEL_INLINE void store(double* p, V8 v) {
  for (int i = 0; i < 8; ++i) p[i] = v.v[i];
}
DIFFCUT_KERNEL_INLINE V8 splat(double s) {
  V8 r;
  for (int i = 0; i < 8; ++i) r.v[i] = s;
  return r;
}
DIFFCUT_KERNEL_INLINE V8 fmadd(V8 a, V8 b, V8 c) {
  for (int i = 0; i < 8; ++i) c.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
  return c;
}
DIFFCUT_KERNEL_INLINE void lanes(V8 v, double* t) {
  for (int i = 0; i < 8; ++i) t[i] = v.v[i];
}
#endif

DIFFCUT_KERNEL_INLINE double hsum(V8 v) {
  double t[8];
  lanes(v, t);
  return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

// Rows r0 .. r0 + R - 1 of A's lower triangle: each row's sum over its columns j <= row (eight lanes over the
// columns below r0, then the rest one by one) added to y[row]; each entry below the diagonal also added, times
// x[row], to y[j] (rows in order).
template <int R>
DIFFCUT_KERNEL_INLINE void rows_lower(const float* A, i64 m, i64 r0, const double* x, double* y) {
  const float* rows[R];
  V8 acc[R], xr[R];
  for (int r = 0; r < R; ++r) {
    rows[r] = A + (r0 + r) * m;
    acc[r] = splat(0.0);
    xr[r] = splat(x[r0 + r]);
  }
  i64 j = 0;
  for (; j + 8 <= r0; j += 8) {
    const V8 xj = load(x + j);
    V8 yj = load(y + j);
    for (int r = 0; r < R; ++r) {
      const V8 a = widen(rows[r] + j);
      acc[r] = fmadd(a, xj, acc[r]);
      yj = fmadd(a, xr[r], yj);
    }
    store(y + j, yj);
  }
  double s[R];
  for (int r = 0; r < R; ++r) s[r] = hsum(acc[r]);
  for (; j < r0 + R; ++j) {
    for (int r = 0; r < R; ++r) {
      if (j > r0 + r) continue;
      const double a = static_cast<double>(rows[r][j]);
      s[r] = std::fma(a, x[j], s[r]);
      if (j < r0 + r) y[j] = std::fma(a, x[r0 + r], y[j]);
    }
  }
  for (int r = 0; r < R; ++r) y[r0 + r] += s[r];
}

// The lower triangle's rows [begin, end) (begin a multiple of 4) times x into y[0 .. end), which is zeroed first.
DIFFCUT_KERNEL void symv_rows(const float* A, i64 m, i64 begin, i64 end, const double* x, double* y) {
  std::fill(y, y + end, 0.0);
  i64 i = begin;
  for (; i + 4 <= end; i += 4) rows_lower<4>(A, m, i, x, y);
  for (; i < end; ++i) rows_lower<1>(A, m, i, x, y);
}

// Rows i0 .. i0 + R - 1 of A times X: Y[j][i] the dot product of A's row i with X's row j, eight lanes along the
// row (fused multiply-adds), then the rest one by one. Two rows at a time share X's loads.
template <int R>
DIFFCUT_KERNEL_INLINE void rows_times_block(const float* A, i64 m, const double* X, int b, i64 i0, double* Y) {
  V8 acc[R][kMaxBlock];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < b; ++j) acc[r][j] = splat(0.0);
  i64 l = 0;
  for (; l + 8 <= m; l += 8) {
    V8 a[R];
    for (int r = 0; r < R; ++r) a[r] = widen(A + (i0 + r) * m + l);
    for (int j = 0; j < b; ++j) {
      const V8 x = load(X + j * m + l);
      for (int r = 0; r < R; ++r) acc[r][j] = fmadd(a[r], x, acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float* row = A + (i0 + r) * m;
    for (int j = 0; j < b; ++j) {
      double s = hsum(acc[r][j]);
      for (i64 t = l; t < m; ++t) s = std::fma(static_cast<double>(row[t]), X[j * m + t], s);
      Y[j * m + i0 + r] = s;
    }
  }
}

// Rows [begin, end) of Y (b x m, leading dimension m) = X (b x m) A, by symmetry each Y[j][i] the dot product of
// A's row i with X's row j. b <= kMaxBlock.
DIFFCUT_KERNEL void rows_times(const float* A, i64 m, const double* X, int b, i64 begin, i64 end, double* Y) {
  i64 i = begin;
  for (; i + 2 <= end; i += 2) rows_times_block<2>(A, m, X, b, i, Y);
  for (; i < end; ++i) rows_times_block<1>(A, m, X, b, i, Y);
}
