// The DiffCut affinity, as diffcut_engine/graph/affinity.py defines it (the default float32 path):
//   Xn = X / max(||X_i||, 1e-12);  S = Xn Xn^T (BLAS ssyrk, one triangle, mirrored);  lo, hi = min S, max S;
//   W = ((S - lo) / (hi - lo)) ** alpha in float32 (integer alpha <= 64 by binary powering, as in Python);
//   W = 1 everywhere if hi - lo <= C * eps_float32 * max(|hi|, |lo|) (constant features).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

#include "core.h"
#include "lapack.h"

namespace diffcut {
namespace detail {

void check_finite(const float* values, std::int64_t count, const char* what) {
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < count; ++i) bad += !std::isfinite(values[i]);
  if (bad) {
    throw Failure(Code::NonFinite, std::string(what) + " contain NaN or infinite values (" + std::to_string(bad) +
                                       " of " + std::to_string(count) + " values)");
  }
}

void l2_normalize(float* tokens, std::int64_t n, std::int64_t c) {
  for (std::int64_t i = 0; i < n; ++i) {
    float* row = tokens + i * c;
    float acc = 0.0f;
    for (std::int64_t k = 0; k < c; ++k) acc += row[k] * row[k];
    const float norm = std::max(std::sqrt(acc), kNormEps);
    for (std::int64_t k = 0; k < c; ++k) row[k] = row[k] / norm;
  }
}


void affinity_from_tokens(const float* tokens, std::int64_t n, std::int64_t c, double alpha, float* W) {
  if (n > 46340 || c > 2147483647) throw Failure(Code::InvalidArgument, "too many tokens for a dense affinity");
  int ni = static_cast<int>(n), ci = static_cast<int>(c);
  float one = 1.0f, zero = 0.0f;
  char uplo = 'U', trans = 'T';
  // Column-major view: tokens (row-major n x c) are the c x n matrix X^T; C = (X^T)^T X^T = X X^T, its upper
  // triangle in column-major order is the lower triangle of the row-major W.
  lapack().ssyrk(&uplo, &trans, &ni, &ci, &one, const_cast<float*>(tokens), &ci, &zero, W, &ni);
  // mirror the lower triangle (row-major) onto the upper one in square tiles (the transposed reads stay in cache)
  constexpr std::int64_t tile = 64;
  for (std::int64_t i0 = 0; i0 < n; i0 += tile) {
    const std::int64_t i1 = std::min(i0 + tile, n);
    for (std::int64_t j0 = i0; j0 < n; j0 += tile) {
      const std::int64_t j1 = std::min(j0 + tile, n);
      for (std::int64_t i = i0; i < i1; ++i)
        for (std::int64_t j = std::max(j0, i + 1); j < j1; ++j) W[i * n + j] = W[j * n + i];
    }
  }
  const std::int64_t total = n * n;
  float los[8], his[8];  // eight running extrema (independent lanes; min and max are exact in any order)
  for (int j = 0; j < 8; ++j) los[j] = his[j] = W[0];
  std::int64_t i = 0;
  for (; i + 8 <= total; i += 8)
    for (int j = 0; j < 8; ++j) {
      los[j] = W[i + j] < los[j] ? W[i + j] : los[j];
      his[j] = W[i + j] > his[j] ? W[i + j] : his[j];
    }
  for (; i < total; ++i) {
    los[0] = W[i] < los[0] ? W[i] : los[0];
    his[0] = W[i] > his[0] ? W[i] : his[0];
  }
  float lo = los[0], hi = his[0];
  for (int j = 1; j < 8; ++j) {
    lo = std::min(lo, los[j]);
    hi = std::max(hi, his[j]);
  }
  // numpy: (hi - lo) > float32(C * eps) * max(|hi|, |lo|), all in float32 (NEP 50: a Python float is weak)
  const float tol = static_cast<float>(static_cast<double>(c) * static_cast<double>(FLT_EPSILON));
  const float spread = hi - lo;
  if (!(spread > tol * std::max(std::fabs(hi), std::fabs(lo)))) {
    std::fill(W, W + total, 1.0f);
    return;
  }
  const bool squaring = alpha == std::floor(alpha) && alpha >= 1 && alpha <= kMaxSquaringExponent;
  const float alpha_f = static_cast<float>(alpha);
  // chunk by chunk, whole-chunk passes (vectorisable), each element getting exactly the float32 operations of
  // affinity_from_tokens: (s - lo) / spread, then binary powering (power_squaring's order) or powf
  constexpr std::int64_t chunk = 4096;
  float base[chunk], result[chunk];
  for (std::int64_t a = 0; a < total; a += chunk) {
    const std::int64_t len = std::min(chunk, total - a);
    float* w = W + a;
    for (std::int64_t i = 0; i < len; ++i) base[i] = (w[i] - lo) / spread;
    if (!squaring) {
      for (std::int64_t i = 0; i < len; ++i) w[i] = std::pow(base[i], alpha_f);
      continue;
    }
    int k = static_cast<int>(alpha);
    bool have = false;
    while (true) {
      if (k & 1) {
        if (!have) {
          for (std::int64_t i = 0; i < len; ++i) result[i] = base[i];
          have = true;
        } else {
          for (std::int64_t i = 0; i < len; ++i) result[i] *= base[i];
        }
      }
      k >>= 1;
      if (!k) break;
      for (std::int64_t i = 0; i < len; ++i) base[i] *= base[i];
    }
    for (std::int64_t i = 0; i < len; ++i) w[i] = result[i];
  }
}

}  // namespace detail
}  // namespace diffcut
