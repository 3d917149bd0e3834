// The hot loops of matvec.cpp, included there once per instruction set (as refine_kernels.h in refine.cpp): eight
// float64 lanes as one AVX-512 register (DIFFCUT_LANES 512), two AVX2 ones (256) or an array (0). Only
// multiplications and additions, never fused, lane by lane in the same order, so every variant computes the same
// floats. No include guard (by design); needs i64 and the macros DIFFCUT_KERNEL, DIFFCUT_KERNEL_INLINE and
// DIFFCUT_LANES.

#if DIFFCUT_LANES == 512
using V8 = __m512d;
DIFFCUT_KERNEL_INLINE V8 load(const double* p) { return _mm512_loadu_pd(p); }
DIFFCUT_KERNEL_INLINE V8 widen(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
DIFFCUT_KERNEL_INLINE void store(double* p, V8 v) { _mm512_storeu_pd(p, v); }
DIFFCUT_KERNEL_INLINE V8 splat(double s) { return _mm512_set1_pd(s); }
DIFFCUT_KERNEL_INLINE V8 mul(V8 a, V8 b) { return _mm512_mul_pd(a, b); }
DIFFCUT_KERNEL_INLINE V8 add(V8 a, V8 b) { return _mm512_add_pd(a, b); }
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
DIFFCUT_KERNEL_INLINE V8 mul(V8 a, V8 b) { return {_mm256_mul_pd(a.lo, b.lo), _mm256_mul_pd(a.hi, b.hi)}; }
DIFFCUT_KERNEL_INLINE V8 add(V8 a, V8 b) { return {_mm256_add_pd(a.lo, b.lo), _mm256_add_pd(a.hi, b.hi)}; }
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
DIFFCUT_KERNEL_INLINE V8 mul(V8 a, V8 b) {
  for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i];
  return a;
}
DIFFCUT_KERNEL_INLINE V8 add(V8 a, V8 b) {
  for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
  return a;
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
      acc[r] = add(acc[r], mul(a, xj));
      yj = add(yj, mul(a, xr[r]));
    }
    store(y + j, yj);
  }
  double s[R];
  for (int r = 0; r < R; ++r) s[r] = hsum(acc[r]);
  for (; j < r0 + R; ++j) {
    for (int r = 0; r < R; ++r) {
      if (j > r0 + r) continue;
      const double a = static_cast<double>(rows[r][j]);
      s[r] += a * x[j];
      if (j < r0 + r) y[j] += a * x[r0 + r];
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

// Rows [begin, end) of Y (b x m, leading dimension m) = X (b x m) A, by symmetry each Y[j][i] the dot product of A's
// row i with X's row j: eight lanes along the row, then the rest one by one. b <= kMaxBlock.
DIFFCUT_KERNEL void rows_times(const float* A, i64 m, const double* X, int b, i64 begin, i64 end, double* Y) {
  V8 acc[kMaxBlock];
  for (i64 i = begin; i < end; ++i) {
    const float* row = A + i * m;
    for (int j = 0; j < b; ++j) acc[j] = splat(0.0);
    i64 l = 0;
    for (; l + 8 <= m; l += 8) {
      const V8 a = widen(row + l);
      for (int j = 0; j < b; ++j) acc[j] = add(acc[j], mul(a, load(X + j * m + l)));
    }
    for (int j = 0; j < b; ++j) {
      double s = hsum(acc[j]);
      for (i64 t = l; t < m; ++t) s += static_cast<double>(row[t]) * X[j * m + t];
      Y[j * m + i] = s;
    }
  }
}
