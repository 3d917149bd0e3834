// The DiffCut affinity, as diffcut_engine/graph/affinity.py defines it (the default float32 path):
//   Xn = X / max(||X_i||, 1e-12);  S = Xn Xn^T (BLAS ssyrk, one triangle, mirrored);  lo, hi = min S, max S;
//   W = ((S - lo) / (hi - lo)) ** alpha in float32 (integer alpha <= 64 by binary powering, as in Python);
//   W = 1 everywhere if hi - lo <= C * eps_float32 * max(|hi|, |lo|) (constant features).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core.h"
#include "isa.h"
#include "lapack.h"
#include "matvec.h"

namespace diffcut {
namespace detail {

void check_finite(const float* values, std::int64_t count, const char* what) {
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < count; ++i) bad += !std::isfinite(values[i]);
  if (bad) {
    const std::string name(what);
    const bool plural = !name.empty() && name.back() == 's';  // "features contain", "image contains"
    throw Failure(Code::NonFinite, name + (plural ? " contain" : " contains") + " NaN or infinite values (" +
                                       std::to_string(bad) + " of " + std::to_string(count) + " values)");
  }
}

namespace {

// The exactly rounded float64 sum of the squares of a float32 row (each square is exact in float64): Shewchuk's
// partials with the correct final rounding, the algorithm of Python's math.fsum (which graph/affinity.py's
// row_norms uses for the same rows), so both give the same double.
double exact_sum_of_squares(const float* row, std::int64_t c) {
  std::vector<double> partials;
  for (std::int64_t k = 0; k < c; ++k) {
    double x = static_cast<double>(row[k]) * static_cast<double>(row[k]);
    std::size_t used = 0;
    for (double y : partials) {
      if (std::fabs(x) < std::fabs(y)) std::swap(x, y);
      const double hi = x + y;
      const double lo = y - (hi - x);
      if (lo != 0.0) partials[used++] = lo;
      x = hi;
    }
    partials.resize(used);
    partials.push_back(x);
  }
  std::size_t n = partials.size();
  if (n == 0) return 0.0;
  double hi = partials[--n], lo = 0.0;
  while (n > 0) {
    const double x = hi, y = partials[--n];
    hi = x + y;
    const double yr = hi - x;
    lo = y - yr;
    if (lo != 0.0) break;
  }
  // round half-even when the rest of the partials pushes the exact sum past a tie
  if (n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0))) {
    const double y = lo * 2.0, x = hi + y, yr = x - hi;
    if (y == yr) hi = x;
  }
  return hi;
}

}  // namespace

// double -> float32, round to nearest even, infinity beyond float32's range (as numpy's astype; a plain cast of an
// out-of-range double is undefined behaviour in C++)
inline float to_float32(double v) { return v >= 0x1.ffffffp+127 ? INFINITY : static_cast<float>(v); }

float row_norm(const float* row, std::int64_t c) {
  // float32(sqrt(float64(exact sum of squares))): a float64 sum in any order is within gamma = 4 (c - 1) 2^-53 of
  // the exact one, and the function is monotone, so where both ends of that interval give the same float32 it is
  // the answer; otherwise (rare: the sum sits on a float32 rounding boundary) the exactly rounded sum decides
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // (eight independent sums: vectorised; any order is within the bound)
  std::int64_t k = 0;
  for (; k + 8 <= c; k += 8)
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(row[k + j]) * static_cast<double>(row[k + j]);
  for (; k < c; ++k) acc[k % 8] += static_cast<double>(row[k]) * static_cast<double>(row[k]);
  const double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  const double g = c > 1 ? 4.0 * static_cast<double>(c - 1) * 0x1p-53 : 0.0;
  const float lo = to_float32(std::sqrt(s - s * g)), hi = to_float32(std::sqrt(s + s * g));
  if (lo == hi) return lo;
  return to_float32(std::sqrt(exact_sum_of_squares(row, c)));
}

void l2_normalize(float* tokens, std::int64_t n, std::int64_t c) {
  for (std::int64_t i = 0; i < n; ++i) {
    float* row = tokens + i * c;
    const float norm = std::max(row_norm(row, c), kNormEps);
    for (std::int64_t k = 0; k < c; ++k) row[k] = row[k] / norm;
  }
}

namespace {

// From this many tokens on (and sgemm bound), the Gram matrix is computed in two bands, on two threads where the
// core may use two: a call of the BLAS on its own threads would leave them spinning (OpenBLAS's idle workers
// busy-wait for up to ~0.2 s) on the cores the core's threaded products use next (from 512 rows on). The bands do
// not depend on the thread count (diffcut_engine.graph._blas.GRAM_BAND_MIN_ROWS and gram_band_split, the same).
constexpr std::int64_t kBandMinRows = 256;
// From this many tokens on, the scaling pass runs on kernel_threads() threads (below, starting them costs more
// than they save).
constexpr std::int64_t kScaleThreadsMinRows = 1024;
constexpr int kScaleParts = 4;  // its parts (tile rows dealt round-robin) for the caller and the shared helpers

// Extrema of a float range (16 independent lanes as one GCC vector, which every clone compiles to its own
// registers; min and max are exact in any order).
#if defined(__GNUC__)
typedef float Lanes16 __attribute__((vector_size(64)));
DIFFCUT_CLONES void extrema(const float* v, std::int64_t len, float& lo, float& hi) {
  Lanes16 los, his;
  for (int j = 0; j < 16; ++j) {
    los[j] = lo;
    his[j] = hi;
  }
  std::int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    Lanes16 x;
    std::memcpy(&x, v + i, sizeof x);
    los = x < los ? x : los;
    his = x > his ? x : his;
  }
  for (int j = 0; j < 16; ++j) {
    lo = std::min(lo, los[j]);
    hi = std::max(hi, his[j]);
  }
  for (; i < len; ++i) {
    lo = v[i] < lo ? v[i] : lo;
    hi = v[i] > hi ? v[i] : hi;
  }
}
#else
void extrema(const float* v, std::int64_t len, float& lo, float& hi) {
  for (std::int64_t i = 0; i < len; ++i) {
    lo = v[i] < lo ? v[i] : lo;
    hi = v[i] > hi ? v[i] : hi;
  }
}
#endif

// The extrema (lo, hi) of the lower triangle of S's rows [r0, r1), r0 < r1.
void triangle_extrema(const float* S, std::int64_t n, std::int64_t r0, std::int64_t r1, float& lo, float& hi) {
  lo = hi = S[r0 * n];
  for (std::int64_t i = r0; i < r1; ++i) extrema(S + i * n, i + 1, lo, hi);
}

// The lower triangle (row-major, diagonal included) of S = X X^T in float32 and its extrema (lo, hi), by the
// calls of diffcut_engine.graph._blas.gram_lower, each running the BLAS single-threaded (SingleThreadedBlas): below
// kBandMinRows rows one ssyrk call; from there two bands of about equal area, rows [0, r) by ssyrk and rows
// [r, n) by sgemm against rows [0, r) and then ssyrk, with r = floor(n / sqrt 2) rounded down to a multiple of
// 64; the bands on two threads where the core may use two (each band's extrema taken while it is in cache).
// The floats of an OpenBLAS call depend on how it is split over threads and blocks (the micro-kernel's edge paths
// sum in another order), so the decomposition and the single-threaded calls are what make every entry the numpy
// path's bit for bit on every CPU (tests/test_native.py), whatever the thread counts.
void gram_lower(const float* tokens, std::int64_t n, std::int64_t c, float* S, float& lo, float& hi) {
  if (n > 46340 || c > 2147483647) throw Failure(Code::InvalidArgument, "too many tokens for a dense affinity");
  const Lapack& blas = lapack();
  // Column-major view: tokens (row-major n x c) are the c x n matrix X^T; C = (X^T)^T X^T = X X^T, its upper
  // triangle in column-major order is the lower triangle of the row-major S (leading dimension n).
  auto syrk = [&](std::int64_t r0, std::int64_t r1) {  // S's diagonal block [r0, r1)
    int rows = static_cast<int>(r1 - r0), ci = static_cast<int>(c), ld = static_cast<int>(n);
    float one = 1.0f, zero = 0.0f;
    char uplo = 'U', trans = 'T';
    blas.ssyrk(&uplo, &trans, &rows, &ci, &one, const_cast<float*>(tokens + r0 * c), &ci, &zero, S + r0 * n + r0,
               &ld);
  };
  if (n == 0) return;
  const SingleThreadedBlas one_blas_thread;  // (process-wide and counted: OpenBLAS has no per-thread count)
  if (blas.sgemm == nullptr || n < kBandMinRows) {
    syrk(0, n);
    triangle_extrema(S, n, 0, n, lo, hi);
    return;
  }
  std::int64_t r = static_cast<std::int64_t>(static_cast<double>(n) / std::sqrt(2.0));
  r -= r % 64;
  float top_lo = 0.0f, top_hi = 0.0f;
  auto part = [&](int which) {
    if (which == 0) {
      syrk(0, r);
      triangle_extrema(S, n, 0, r, top_lo, top_hi);
      return;
    }
    // S[i, j] for i >= r > j: column-major C (r x (n - r)) = X[:r] X[r:]^T at S + r * n
    int rows = static_cast<int>(r), cols = static_cast<int>(n - r), ci = static_cast<int>(c), ld = static_cast<int>(n);
    float one = 1.0f, zero = 0.0f;
    char ta = 'T', tb = 'N';
    blas.sgemm(&ta, &tb, &rows, &cols, &ci, &one, const_cast<float*>(tokens), &ci,
               const_cast<float*>(tokens + r * c), &ci, &zero, S + r * n, &ld);
    syrk(r, n);
    triangle_extrema(S, n, r, n, lo, hi);
  };
  if (kernel_threads() >= 2) {
    // two parts of equal work for the caller and a shared helper (a helper that wakes late leaves both to the
    // caller: run_shared)
    run_shared(2, part);
  } else {
    part(0);
    part(1);
  }
  lo = std::min(lo, top_lo);
  hi = std::max(hi, top_hi);
}

// The min-max scaling and power of affinity_from_tokens, as float32 operations in its order.
struct Scaling {
  float lo = 0.0f, spread = 1.0f, alpha_f = 1.0f;
  int k = 1;
  bool squaring = true;
  bool constant = false;

  Scaling(float lo_, float hi_, std::int64_t c, double alpha) : lo(lo_) {
    // numpy: (hi - lo) > float32(C * eps) * max(|hi|, |lo|), all in float32 (NEP 50: a Python float is weak)
    const float tol = static_cast<float>(static_cast<double>(c) * static_cast<double>(FLT_EPSILON));
    spread = hi_ - lo_;
    constant = !(spread > tol * std::max(std::fabs(hi_), std::fabs(lo_)));
    squaring = alpha == std::floor(alpha) && alpha >= 1 && alpha <= kMaxSquaringExponent;
    alpha_f = static_cast<float>(alpha);
    k = squaring ? static_cast<int>(alpha) : 0;
  }

  // out[i] = ((in[i] - lo) / spread) ** alpha for i < len (len <= kChunk); in and out may alias.
  static constexpr std::int64_t kChunk = 4096;
  void apply(const float* in, float* out, std::int64_t len) const { apply_chunk(*this, in, out, len); }
  DIFFCUT_CLONES static void apply_chunk(const Scaling& sc, const float* in, float* out, std::int64_t len) {
    const float lo = sc.lo, spread = sc.spread, alpha_f = sc.alpha_f;
    const int k = sc.k;
    const bool squaring = sc.squaring;
    float base[kChunk], result[kChunk];
    for (std::int64_t i = 0; i < len; ++i) base[i] = (in[i] - lo) / spread;
    if (!squaring) {
      for (std::int64_t i = 0; i < len; ++i) out[i] = std::pow(base[i], alpha_f);
      return;
    }
    int e = k;
    bool have = false;
    while (true) {
      if (e & 1) {
        if (!have) {
          for (std::int64_t i = 0; i < len; ++i) result[i] = base[i];
          have = true;
        } else {
          for (std::int64_t i = 0; i < len; ++i) result[i] *= base[i];
        }
      }
      e >>= 1;
      if (!e) break;
      for (std::int64_t i = 0; i < len; ++i) base[i] *= base[i];
    }
    for (std::int64_t i = 0; i < len; ++i) out[i] = result[i];
  }
};

// One scaled tile buf (rows x cols of the lower triangle at (i0, j0), row-major with stride kTile; on the
// diagonal only j <= i is valid) written (widened, for a float64 W) to W at (i, j) and, transposed, at (j, i);
// rows holding an exact zero are flagged in zr (if not null). Vectorisable loops (the transpose goes through a
// second L1 buffer).
constexpr std::int64_t kTile = 64;
template <class Out>
DIFFCUT_CLONES void write_tile(const float* buf, std::int64_t rows, std::int64_t cols, bool diagonal, Out* W,
                               std::int64_t n, std::int64_t i0, std::int64_t j0, std::uint8_t* zr) {
  alignas(64) float tr[kTile * kTile];
  for (std::int64_t a = 0; a < rows; ++a) {
    const std::int64_t len = diagonal ? a + 1 : cols;
    const float* src = buf + a * kTile;
    Out* dst = W + (i0 + a) * n + j0;
    for (std::int64_t b = 0; b < len; ++b) dst[b] = static_cast<Out>(src[b]);
    if (zr == nullptr) continue;
    int zeros = 0;
    for (std::int64_t b = 0; b < len; ++b) zeros += src[b] == 0.0f;
    if (zeros) {
      zr[i0 + a] = 1;
      for (std::int64_t b = 0; b < len; ++b)
        if (src[b] == 0.0f) zr[j0 + b] = 1;
    }
  }
  for (std::int64_t a = 0; a < rows; ++a)  // (on the diagonal only b < a is read back)
    for (std::int64_t b = 0, end = diagonal ? a : cols; b < end; ++b) tr[b * kTile + a] = buf[a * kTile + b];
  for (std::int64_t b = 0; b < cols; ++b) {  // W[j0 + b, i0 + a] for i > j
    const std::int64_t start = diagonal ? b + 1 : 0;
    const float* src = tr + b * kTile;
    Out* dst = W + (j0 + b) * n + i0;
    for (std::int64_t a = start; a < rows; ++a) dst[a] = static_cast<Out>(src[a]);
  }
}

}  // namespace

namespace {

// The scaled affinity from the lower triangle of S (the Gram matrix, its extrema lo and hi) into W (n x n, both
// triangles; W may be S itself: each tile is read into a buffer before it is written, and the upper triangle is
// never read), zero rows flagged in zero_row (if not null): tile by tile over the lower triangle, the tile's row
// segments scaled into an L1 buffer, then written to (i, j) and, transposed from the buffer, to (j, i): S is read
// once and W written once.
// Tile rows are dealt round-robin to a few threads for large n (each output value is written by exactly one
// thread; zero rows are collected per thread, then merged).
template <class Out>
void scaled_affinity(const float* S, std::int64_t n, std::int64_t c, double alpha, Out* W, std::uint8_t* zero_row,
                     float lo, float hi) {
  if (zero_row) std::fill(zero_row, zero_row + n, std::uint8_t{0});
  if (n == 0) return;
  const Scaling scaling(lo, hi, c, alpha);
  if (scaling.constant) {
    std::fill(W, W + n * n, Out{1});
    return;
  }
  constexpr std::int64_t tile = kTile;
  const std::int64_t tile_rows = (n + tile - 1) / tile;
  // parts: tile rows dealt round-robin, claimed by the caller and the shared helpers (run_shared)
  const int threads = n >= kScaleThreadsMinRows && kernel_threads() > 1 ? kScaleParts : 1;
  std::vector<std::vector<std::uint8_t>> zeros(
      zero_row ? static_cast<std::size_t>(threads) : 0, std::vector<std::uint8_t>(static_cast<std::size_t>(n), 0));
  auto work = [&](int part) {
    std::uint8_t* zr = zero_row ? zeros[static_cast<std::size_t>(part)].data() : nullptr;
    alignas(64) float buf[tile * tile];  // one scaled tile of the lower triangle, row-major
    for (std::int64_t r = part; r < tile_rows; r += threads) {
      const std::int64_t i0 = r * tile, i1 = std::min(i0 + tile, n), rows = i1 - i0;
      for (std::int64_t j0 = 0; j0 <= i0; j0 += tile) {
        const std::int64_t j1 = std::min(j0 + tile, n), cols = j1 - j0;
        const bool diagonal = j0 == i0;
        for (std::int64_t a = 0; a < rows; ++a) {  // scale the tile's row segments (j <= i only)
          const std::int64_t len = diagonal ? a + 1 : cols;
          scaling.apply(S + (i0 + a) * n + j0, buf + a * tile, len);
        }
        write_tile(buf, rows, cols, diagonal, W, n, i0, j0, zr);
      }
    }
  };
  run_shared(threads, work);
  if (zero_row)
    for (const auto& zr : zeros)
      for (std::int64_t i = 0; i < n; ++i) zero_row[i] |= zr[static_cast<std::size_t>(i)];
}

}  // namespace

void affinity_from_tokens(const float* tokens, std::int64_t n, std::int64_t c, double alpha, float* W,
                          std::uint8_t* zero_row) {
  float lo = 0.0f, hi = 0.0f;
  gram_lower(tokens, n, c, W, lo, hi);
  scaled_affinity(W, n, c, alpha, W, zero_row, lo, hi);  // in place
}

void affinity_widened(const float* tokens, std::int64_t n, std::int64_t c, double alpha, float* S, double* W,
                      std::uint8_t* zero_row) {
  float lo = 0.0f, hi = 0.0f;
  gram_lower(tokens, n, c, S, lo, hi);
  scaled_affinity(S, n, c, alpha, W, zero_row, lo, hi);
}

}  // namespace detail
}  // namespace diffcut
