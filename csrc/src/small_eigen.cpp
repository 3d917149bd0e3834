// The top eigenpairs of a small dense symmetric matrix (small_eigen.h).
#include "small_eigen.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "isa.h"

namespace diffcut {
namespace detail {

namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();
constexpr double kClusterGap = 1e-3;  // relative to ||T||: vectors of closer eigenvalues are made orthogonal
constexpr int kMaxIterations = 8;     // inverse iteration steps per vector before giving up

// y += a x (element-wise: the same floats for every instruction set)
DIFFCUT_CLONES void axpy(double a, const double* x, double* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// row -= vi q + qi v (the symmetric rank-2 update of one row's first n entries)
DIFFCUT_CLONES void rank2_row(double* row, double vi, const double* q, double qi, const double* v, int n) {
  for (int l = 0; l < n; ++l) row[l] -= vi * q[l] + qi * v[l];
}

// Eight partial sums in a fixed order (lane l sums the entries l, l + 8, ...), then added pairwise: the same floats
// for every instruction set.
DIFFCUT_CLONES double dot(const double* x, const double* y, int n) {
  double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) s[l] += x[i + l] * y[i + l];
  for (; i < n; ++i) s[i & 7] += x[i] * y[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// count[t] = the number of eigenvalues of the tridiagonal matrix (d, e; e2 = e^2) below x[t], for p shifts at once
// (Sturm sequence of the LDL^T pivots, each pivot of magnitude below pivmin replaced by -pivmin).
DIFFCUT_CLONES void sturm_counts(const double* d, const double* e2, int n, const double* x, int p, double pivmin,
                                 double* q, int* count) {
  for (int t = 0; t < p; ++t) {
    double v = d[0] - x[t];
    v = std::fabs(v) < pivmin ? -pivmin : v;
    q[t] = v;
    count[t] = v < 0.0 ? 1 : 0;
  }
  for (int i = 1; i < n; ++i) {
    const double di = d[i], ei = e2[i - 1];
    for (int t = 0; t < p; ++t) {
      double v = (di - x[t]) - ei / q[t];
      v = std::fabs(v) < pivmin ? -pivmin : v;
      q[t] = v;
      count[t] += v < 0.0 ? 1 : 0;
    }
  }
}

// One solve of (D - lambda I) x = b (tridiagonal D: d, e), LU with partial pivoting (row swaps), pivots below
// `tiny` in magnitude replaced by it; b overwritten by x. u0, u1, u2, mult, swap: workspace of n entries.
void shifted_solve(const double* d, const double* e, int n, double lambda, double tiny, double* b,
                   std::vector<double>& u0, std::vector<double>& u1, std::vector<double>& u2,
                   std::vector<double>& mult, std::vector<char>& swap) {
  // factorisation: row i of U is (u0[i], u1[i], u2[i]) on columns i, i+1, i+2
  double diag = d[0] - lambda, sup = n > 1 ? e[0] : 0.0, sup2 = 0.0;
  for (int i = 0; i + 1 < n; ++i) {
    const double below = e[i];                                  // (i+1, i)
    const double next_diag = d[i + 1] - lambda;                 // (i+1, i+1)
    const double next_sup = i + 2 < n ? e[i + 1] : 0.0;         // (i+1, i+2)
    if (std::fabs(diag) >= std::fabs(below)) {
      swap[i] = 0;
      if (std::fabs(diag) < tiny) diag = diag < 0 ? -tiny : tiny;
      const double m = below / diag;
      mult[i] = m;
      u0[i] = diag;
      u1[i] = sup;
      u2[i] = sup2;
      diag = next_diag - m * sup;
      sup = next_sup - m * sup2;
      sup2 = 0.0;
    } else {
      swap[i] = 1;
      const double m = diag / below;
      mult[i] = m;
      u0[i] = below;
      u1[i] = next_diag;
      u2[i] = next_sup;
      const double new_diag = sup - m * next_diag;
      const double new_sup = sup2 - m * next_sup;
      diag = new_diag;
      sup = new_sup;
      sup2 = 0.0;
    }
  }
  if (std::fabs(diag) < tiny) diag = diag < 0 ? -tiny : tiny;
  u0[n - 1] = diag;
  u1[n - 1] = 0.0;
  u2[n - 1] = 0.0;
  // forward: the row operations on b
  for (int i = 0; i + 1 < n; ++i) {
    if (swap[i]) std::swap(b[i], b[i + 1]);
    b[i + 1] -= mult[i] * b[i];
  }
  // back substitution
  for (int i = n - 1; i >= 0; --i) {
    double s = b[i];
    if (i + 1 < n) s -= u1[i] * b[i + 1];
    if (i + 2 < n) s -= u2[i] * b[i + 2];
    b[i] = s / u0[i];
  }
}

// ||D z - lambda z|| for the tridiagonal D (d, e).
double tridiagonal_residual(const double* d, const double* e, int n, double lambda, const double* z) {
  double s = 0.0;
  for (int i = 0; i < n; ++i) {
    double r = (d[i] - lambda) * z[i];
    if (i > 0) r += e[i - 1] * z[i - 1];
    if (i + 1 < n) r += e[i] * z[i + 1];
    s += r * r;
  }
  return std::sqrt(s);
}

// A deterministic start vector for inverse iteration (entries in [0.5, 1.5), varied by index and vector).
void start_vector(double* x, int n, int which, int attempt) {
  std::uint64_t s = 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(which + 1) +
                    0xBF58476D1CE4E5B9ull * static_cast<std::uint64_t>(attempt + 1);
  for (int i = 0; i < n; ++i) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    const std::uint64_t r = s * 0x2545F4914F6CDD1Dull;
    x[i] = 0.5 + static_cast<double>(r >> 11) * (1.0 / 9007199254740992.0);
  }
}

}  // namespace

bool top_eigenpairs(const double* a, int k, int p, std::vector<double>& w, std::vector<double>& z) {
  if (k < 1 || p < 1 || p > k) return false;
  const std::size_t kk = static_cast<std::size_t>(k);
  for (std::size_t i = 0; i < kk * kk; ++i)
    if (!std::isfinite(a[i])) return false;
  w.assign(p, 0.0);
  z.assign(static_cast<std::size_t>(p) * kk, 0.0);
  if (k == 1) {
    w[0] = a[0];
    z[0] = 1.0;
    return true;
  }

  // 1. Householder tridiagonalisation on the lower triangle of a copy: step j zeroes column j below j + 1 with the
  //    reflector H_j = I - tau_j v_j v_j^T acting on indices j+1 .. k-1 (v_j in V's row j, its first m = k-j-1
  //    entries); the trailing block A22 <- H_j A22 H_j = A22 - v q^T - q v^T, q = p - (tau_j/2 v^T p) v,
  //    p = tau_j A22 v.
  std::vector<double> A(a, a + kk * kk), d(k), e(k, 0.0), tau(k, 0.0), V(kk * kk, 0.0), pv(k), qv(k);
  for (int j = 0; j + 2 < k; ++j) {
    const int m = k - j - 1;
    d[j] = A[static_cast<std::size_t>(j) * kk + j];
    double* v = V.data() + static_cast<std::size_t>(j) * kk;
    for (int l = 0; l < m; ++l) v[l] = A[static_cast<std::size_t>(j + 1 + l) * kk + j];  // column j below
    const double norm = std::sqrt(dot(v, v, m));
    if (norm == 0.0) {
      e[j] = 0.0;
      continue;
    }
    const double alpha = v[0] >= 0.0 ? -norm : norm;
    const double x0 = v[0];
    v[0] -= alpha;
    const double vtv = dot(v, v, m);
    if (!(vtv > 0.0)) {
      e[j] = x0;
      continue;
    }
    const double t = 2.0 / vtv;
    tau[j] = t;
    e[j] = alpha;
    // p = t A22 v from A22's lower triangle: row i gives p[i] its columns 0 .. i and, by symmetry, p[0 .. i) row i
    double* A22 = A.data() + static_cast<std::size_t>(j + 1) * kk + j + 1;
    for (int i = 0; i < m; ++i) {
      const double* row = A22 + static_cast<std::size_t>(i) * kk;
      pv[i] = t * (dot(row, v, i) + row[i] * v[i]);
    }
    for (int i = 1; i < m; ++i) axpy(t * v[i], A22 + static_cast<std::size_t>(i) * kk, pv.data(), i);
    const double K = 0.5 * t * dot(v, pv.data(), m);
    for (int l = 0; l < m; ++l) qv[l] = pv[l] - K * v[l];
    for (int i = 0; i < m; ++i) rank2_row(A22 + static_cast<std::size_t>(i) * kk, v[i], qv.data(), qv[i], v, i + 1);
  }
  d[k - 2] = A[(kk - 2) * kk + (k - 2)];
  d[k - 1] = A[(kk - 1) * kk + (k - 1)];
  e[k - 2] = A[(kk - 1) * kk + (k - 2)];

  // 2. The top p eigenvalues by bisection (target t: the (k-1-t)-th smallest), all in lockstep.
  std::vector<double> e2(k, 0.0);
  double lo0 = std::numeric_limits<double>::infinity(), hi0 = -lo0, emax2 = 0.0;
  for (int i = 0; i < k; ++i) {
    const double r = (i > 0 ? std::fabs(e[i - 1]) : 0.0) + (i + 1 < k ? std::fabs(e[i]) : 0.0);
    lo0 = std::min(lo0, d[i] - r);
    hi0 = std::max(hi0, d[i] + r);
    if (i + 1 < k) {
      e2[i] = e[i] * e[i];
      emax2 = std::max(emax2, e2[i]);
    }
  }
  const double norm = std::max(std::fabs(lo0), std::fabs(hi0));
  if (!(norm > 0.0) || !std::isfinite(norm)) {  // the zero matrix: eigenvalues 0, the unit vectors
    if (norm == 0.0) {
      for (int t = 0; t < p; ++t) z[static_cast<std::size_t>(t) * kk + t] = 1.0;
      return true;
    }
    return false;
  }
  const double pivmin = std::numeric_limits<double>::min() * std::max(1.0, emax2);
  const double atol = 2.0 * kEps * norm;
  lo0 -= 2.0 * atol + pivmin;
  hi0 += 2.0 * atol + pivmin;
  std::vector<double> lo(p, lo0), hi(p, hi0), mid(p), q(p);
  std::vector<int> count(p);
  for (int iter = 0; iter < 200; ++iter) {
    bool done = true;
    for (int t = 0; t < p; ++t) {
      mid[t] = 0.5 * (lo[t] + hi[t]);
      if (hi[t] - lo[t] > atol && mid[t] > lo[t] && mid[t] < hi[t]) done = false;
    }
    if (done) break;
    sturm_counts(d.data(), e2.data(), k, mid.data(), p, pivmin, q.data(), count.data());
    for (int t = 0; t < p; ++t) {
      if (count[t] > k - 1 - t)
        hi[t] = mid[t];
      else
        lo[t] = mid[t];
    }
  }
  for (int t = 0; t < p; ++t) w[t] = 0.5 * (lo[t] + hi[t]);

  // 3. Inverse iteration, Gram-Schmidt within clusters; 4. back-transformation.
  const double tiny = kEps * norm;
  const double accept = 4.0 * k * kEps * norm;
  std::vector<double> u0(k), u1(k), u2(k), mult(k);
  std::vector<char> swap(k);
  std::vector<double> x(k);
  for (int t = 0; t < p; ++t) {
    double* zt = z.data() + static_cast<std::size_t>(t) * kk;
    int first = t;  // the first earlier vector of this vector's cluster
    while (first > 0 && w[first - 1] - w[t] <= kClusterGap * norm) --first;
    bool converged = false;
    int attempt = 0;
    start_vector(x.data(), k, t, attempt);
    for (int it = 0; it < kMaxIterations; ++it) {
      const double scale = 1.0 / std::sqrt(dot(x.data(), x.data(), k));
      for (double& v : x) v *= scale;
      shifted_solve(d.data(), e.data(), k, w[t], tiny, x.data(), u0, u1, u2, mult, swap);
      for (int pass = 0; pass < 2; ++pass)
        for (int s = first; s < t; ++s) {
          const double* zs = z.data() + static_cast<std::size_t>(s) * kk;
          axpy(-dot(zs, x.data(), k), zs, x.data(), k);
        }
      const double nx = std::sqrt(dot(x.data(), x.data(), k));
      if (!(nx > 0.0) || !std::isfinite(nx)) {  // lost to the earlier vectors, or overflowed: a fresh start
        if (++attempt > 3) break;
        start_vector(x.data(), k, t, attempt);
        continue;
      }
      for (double& v : x) v /= nx;
      if (tridiagonal_residual(d.data(), e.data(), k, w[t], x.data()) <= accept) {
        converged = true;
        break;
      }
    }
    if (!converged) return false;
    std::copy(x.begin(), x.end(), zt);
  }
  // z_t <- H_0 H_1 ... H_{k-3} z_t
  for (int j = k - 3; j >= 0; --j) {
    if (tau[j] == 0.0) continue;
    const int m = k - j - 1;
    const double* v = V.data() + static_cast<std::size_t>(j) * kk;
    for (int t = 0; t < p; ++t) {
      double* zt = z.data() + static_cast<std::size_t>(t) * kk + j + 1;
      axpy(-tau[j] * dot(v, zt, m), v, zt, m);
    }
  }
  return true;
}

}  // namespace detail
}  // namespace diffcut
