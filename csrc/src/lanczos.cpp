// Certified Lanczos for the Fiedler vector, ported from diffcut_engine.graph.eigen._lanczos (same constants, same
// certificate, same check schedule). Full reorthogonalisation against u1 = sqrt(d)/||sqrt(d)|| and every Lanczos
// vector; the two largest Ritz pairs of the tridiagonal matrix by dsyevr; accepted only when
//   r1 < 1e-6 * min(1 - theta1 - r1, theta1 - theta2 - r2)
// holds for the Ritz residuals and again for the explicit residual of the assembled vector. The start vector is
// seeded by the subgraph size (its own generator: the numpy path's random stream is not reproduced), mixed with
// the parent's vector when given. Either solver's vector is within 1e-6 (angle) of the exact u2, as the dense one is.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core.h"
#include "isa.h"
#include "krylov.h"
#include "lapack.h"
#include "matvec.h"
#include "scratch.h"

namespace diffcut {
namespace detail {

namespace {

using krylov::dot;
using krylov::kAngleTol;
using krylov::kNoise;

constexpr int kMinSteps = 6;
constexpr int kMaxSteps = 160;
constexpr int kCheckEvery = 3;
constexpr std::int64_t kEveryStepMinNodes = 384;
constexpr double kFastestRate = 4.0;
constexpr double kHopeless = 1e-13;
constexpr double kReorthKeep = 0.7071;

// h[r] = dot(row r of Q, w) for r < rows (rows of length m, one after the other): dot's four lanes and final sum per
// row, four rows at a time sharing w's loads (vectorised; the same floats as dot).
DIFFCUT_CLONES void dots_with_rows(const double* Q, int rows, std::int64_t m, const double* w, double* h) {
  int r = 0;
  const std::int64_t m4 = m - m % 4;
  for (; r + 4 <= rows; r += 4) {
    const double* q0 = Q + static_cast<std::size_t>(r) * m;
    const double* q1 = q0 + m;
    const double* q2 = q1 + m;
    const double* q3 = q2 + m;
    double a0[4] = {0, 0, 0, 0}, a1[4] = {0, 0, 0, 0}, a2[4] = {0, 0, 0, 0}, a3[4] = {0, 0, 0, 0};
    for (std::int64_t i = 0; i < m4; i += 4)
      for (int j = 0; j < 4; ++j) {
        const double x = w[i + j];
        a0[j] += q0[i + j] * x;
        a1[j] += q1[i + j] * x;
        a2[j] += q2[i + j] * x;
        a3[j] += q3[i + j] * x;
      }
    for (std::int64_t i = m4; i < m; ++i) {
      a0[0] += q0[i] * w[i];
      a1[0] += q1[i] * w[i];
      a2[0] += q2[i] * w[i];
      a3[0] += q3[i] * w[i];
    }
    h[r] = (a0[0] + a0[1]) + (a0[2] + a0[3]);
    h[r + 1] = (a1[0] + a1[1]) + (a1[2] + a1[3]);
    h[r + 2] = (a2[0] + a2[1]) + (a2[2] + a2[3]);
    h[r + 3] = (a3[0] + a3[1]) + (a3[2] + a3[3]);
  }
  for (; r < rows; ++r) h[r] = dot(Q + static_cast<std::size_t>(r) * m, w, m);
}

// w[i] -= h[r] * Q[r][i] for r = 0, 1, ..., rows - 1 in that order for every i (as one pass per row would do it),
// in blocks of w that stay in L1 (vectorised).
DIFFCUT_CLONES void subtract_rows(double* w, const double* Q, int rows, std::int64_t m, const double* h) {
  constexpr std::int64_t kBlock = 512;
  for (std::int64_t i0 = 0; i0 < m; i0 += kBlock) {
    const std::int64_t i1 = std::min(m, i0 + kBlock);
    for (int r = 0; r < rows; ++r) {
      const double c = h[r];
      const double* q = Q + static_cast<std::size_t>(r) * m;
      for (std::int64_t i = i0; i < i1; ++i) w[i] -= c * q[i];
    }
  }
}

double norm(const std::vector<double>& v) { return std::sqrt(dot(v.data(), v.data(), (std::int64_t)v.size())); }

// Deterministic standard normals seeded by the subgraph size (the Lanczos stream's salt).
std::vector<double> normals(std::int64_t n, std::uint64_t seed) {
  std::vector<double> out(n);
  krylov::Normals(seed, 0x632BE59BD9B4E019ull).fill(out.data(), n);
  return out;
}

}  // namespace

bool lanczos_fiedler(const float* A, const std::vector<double>& d, std::int64_t m,
                     const std::vector<double>& warm, std::vector<double>& u) {
  std::vector<double> sqrt_d(m), dis(m), u1(m);
  for (std::int64_t i = 0; i < m; ++i) {
    sqrt_d[i] = std::sqrt(d[i]);
    dis[i] = 1.0 / sqrt_d[i];
  }
  const double sn = norm(sqrt_d);
  for (std::int64_t i = 0; i < m; ++i) u1[i] = sqrt_d[i] / sn;
  std::vector<double> tmp(m);
  ProductTeam team(m);
  auto matvec = [&](const double* x, double* out) {  // M x = D^-1/2 A D^-1/2 x (A's lower triangle)
    for (std::int64_t i = 0; i < m; ++i) tmp[i] = dis[i] * x[i];
    symv_lower_f32(A, m, tmp.data(), out, &team);
    for (std::int64_t i = 0; i < m; ++i) out[i] *= dis[i];
  };
  auto deflate = [&](double* v) {
    const double c = dot(u1.data(), v, m);
    for (std::int64_t i = 0; i < m; ++i) v[i] -= u1[i] * c;
  };
  std::vector<double> v = normals(m, static_cast<std::uint64_t>(m));
  {
    const double nv = norm(v);
    for (double& x : v) x /= nv;
  }
  if (static_cast<std::int64_t>(warm.size()) == m) {
    bool finite = true;
    for (double x : warm) finite &= std::isfinite(x);
    if (finite) {
      std::vector<double> w(m);
      for (std::int64_t i = 0; i < m; ++i) w[i] = warm[i] * sqrt_d[i];
      deflate(w.data());
      const double nw = norm(w);
      if (nw > 0)
        for (std::int64_t i = 0; i < m; ++i) v[i] = w[i] / nw + kNoise * v[i];
    }
  }
  const int kmax = static_cast<int>(std::min<std::int64_t>(kMaxSteps, m - 1));
  // row 0: u1; rows 1..: the Lanczos vectors
  ScratchArray<double> Q(static_cast<std::size_t>(kmax + 2) * m);  // (cached: no fresh pages per solve)
  std::copy(u1.begin(), u1.end(), Q.data());
  std::vector<double> alpha(kmax), beta(kmax), w(m), h(kmax + 2), s1, s2;
  deflate(v.data());
  deflate(v.data());
  {
    const double nv = norm(v);
    for (std::int64_t i = 0; i < m; ++i) Q[m + i] = v[i] / nv;
  }
  const int every = m >= kEveryStepMinNodes ? 1 : kCheckEvery;
  int next_check = std::min(kMinSteps, kmax);
  for (int j = 0; j < kmax; ++j) {
    const double* q = Q.data() + static_cast<std::size_t>(j + 1) * m;
    matvec(q, w.data());
    alpha[j] = dot(q, w.data(), m);
    for (std::int64_t i = 0; i < m; ++i) w[i] -= alpha[j] * q[i];
    if (j > 0) {
      const double* qp = Q.data() + static_cast<std::size_t>(j) * m;
      for (std::int64_t i = 0; i < m; ++i) w[i] -= beta[j - 1] * qp[i];
    }
    double norm_before = norm(w);
    for (int pass = 0; pass < 2; ++pass) {  // classical Gram-Schmidt against rows 0..j+1, twice if needed
      dots_with_rows(Q.data(), j + 2, m, w.data(), h.data());
      subtract_rows(w.data(), Q.data(), j + 2, m, h.data());
      beta[j] = norm(w);
      if (beta[j] > kReorthKeep * norm_before) break;
      norm_before = beta[j];
    }
    const int k = j + 1;
    const bool breakdown = !(beta[j] > 1e-12 * std::max(1.0, std::fabs(alpha[j])));
    if (breakdown && k < m - 1) return false;
    if (!breakdown) {
      double* qn = Q.data() + static_cast<std::size_t>(k + 1) * m;
      const double inv = 1.0 / beta[j];
      for (std::int64_t i = 0; i < m; ++i) qn[i] = w[i] * inv;
    }
    if ((k < next_check && !breakdown) || k < 3) continue;
    double theta1 = 0, theta2 = 0;
    if (!tridiagonal_top2(alpha.data(), beta.data(), k, theta1, theta2, s1, s2)) return false;
    const double b = breakdown ? 0.0 : beta[j];
    const double r1 = std::fabs(b * s1[k - 1]), r2 = std::fabs(b * s2[k - 1]);
    double gap = std::min(1.0 - theta1 - r1, theta1 - theta2 - r2);
    if (!(std::min(1.0 - theta1, theta1 - theta2) * kAngleTol > kHopeless)) return false;
    if (gap > 0 && r1 < kAngleTol * gap) {
      u.assign(m, 0.0);
      for (int r = 0; r < k; ++r) {
        const double* qr = Q.data() + static_cast<std::size_t>(r + 1) * m;
        for (std::int64_t i = 0; i < m; ++i) u[i] += s1[r] * qr[i];
      }
      deflate(u.data());
      const double nu = norm(u);
      for (double& x : u) x /= nu;
      std::vector<double> Mu(m);
      matvec(u.data(), Mu.data());
      const double rho = dot(u.data(), Mu.data(), m);
      const double c = dot(u1.data(), Mu.data(), m);
      double res = 0.0;
      for (std::int64_t i = 0; i < m; ++i) {
        const double e = Mu[i] - rho * u[i] - u1[i] * c;
        res += e * e;
      }
      const double true_r1 = std::sqrt(res);
      gap = std::min(1.0 - rho - true_r1, rho - theta2 - r2);
      return std::isfinite(true_r1) && gap > 0 && true_r1 < kAngleTol * gap;
    }
    if (breakdown) break;
    int wait = every;
    if (gap > 0 && r1 > 0)
      wait = std::max(every, static_cast<int>(std::log(r1 / (kAngleTol * gap)) / std::log(kFastestRate)));
    next_check = std::min(k + wait, kmax);
  }
  return false;
}

}  // namespace detail
}  // namespace diffcut
