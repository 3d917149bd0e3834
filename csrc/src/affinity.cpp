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

namespace {

// s ** k for a positive integer k by binary powering, in the order of diffcut_engine.graph.affinity.power_inplace
// (the same float32 products, so the same values).
inline float power_squaring(float s, int k) {
  bool have = false;
  float result = 0.0f;
  while (true) {
    if (k & 1) {
      if (!have) {
        result = s;
        have = true;
      } else {
        result *= s;
      }
    }
    k >>= 1;
    if (!k) return result;
    s *= s;
  }
}

}  // namespace

void affinity_from_tokens(const float* tokens, std::int64_t n, std::int64_t c, double alpha, float* W) {
  if (n > 46340 || c > 2147483647) throw Failure(Code::InvalidArgument, "too many tokens for a dense affinity");
  int ni = static_cast<int>(n), ci = static_cast<int>(c);
  float one = 1.0f, zero = 0.0f;
  char uplo = 'U', trans = 'T';
  // Column-major view: tokens (row-major n x c) are the c x n matrix X^T; C = (X^T)^T X^T = X X^T, its upper
  // triangle in column-major order is the lower triangle of the row-major W.
  lapack().ssyrk(&uplo, &trans, &ni, &ci, &one, const_cast<float*>(tokens), &ci, &zero, W, &ni);
  for (std::int64_t i = 0; i < n; ++i)  // mirror the lower triangle (row-major) onto the upper one
    for (std::int64_t j = i + 1; j < n; ++j) W[i * n + j] = W[j * n + i];
  const std::int64_t total = n * n;
  float lo = W[0], hi = W[0];
  for (std::int64_t i = 1; i < total; ++i) {
    lo = std::min(lo, W[i]);
    hi = std::max(hi, W[i]);
  }
  // numpy: (hi - lo) > float32(C * eps) * max(|hi|, |lo|), all in float32 (NEP 50: a Python float is weak)
  const float tol = static_cast<float>(static_cast<double>(c) * static_cast<double>(FLT_EPSILON));
  const float spread = hi - lo;
  if (!(spread > tol * std::max(std::fabs(hi), std::fabs(lo)))) {
    std::fill(W, W + total, 1.0f);
    return;
  }
  const bool squaring = alpha == std::floor(alpha) && alpha >= 1 && alpha <= kMaxSquaringExponent;
  const int k = static_cast<int>(alpha);
  const float alpha_f = static_cast<float>(alpha);
  for (std::int64_t i = 0; i < total; ++i) {
    float v = W[i] - lo;
    v = v / spread;
    W[i] = squaring ? power_squaring(v, k) : std::pow(v, alpha_f);
  }
}

}  // namespace detail
}  // namespace diffcut
