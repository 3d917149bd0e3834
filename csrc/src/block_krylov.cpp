// Certified block Krylov for the Fiedler vector, ported from diffcut_engine.graph.eigen._block_krylov (same
// constants, same invariant-subspace certificate, eigen.subspace_certificate): for clustered spectra (nearly
// disconnected graphs: one eigenvalue near 1 per weakly linked part, tiny gaps inside the cluster, a wide gap below
// it), where a single Lanczos vector cannot be certified. Blocks of 8 vectors, at most 320 columns, fully
// reorthogonalised (two passes) against u1 = sqrt(d)/||sqrt(d)|| and the basis; Rayleigh-Ritz on T = Q^T M Q (its
// top pairs by small_eigen.h, where the numpy port takes all by SciPy's eigh; dsyevr as a fallback), explicit
// residuals from the stored products M Q; accepted when the bound on sin angle(x1, u2) of the best cluster of the
// top m <= 32 Ritz pairs is below 1e-6 and 1 - theta1 - r1 > 0. The start block is seeded by the subgraph size (its
// own generator), its first row the parent's vector when given. Unlike the numpy port, which forms the explicit
// residuals after every block, the residuals are first estimated from the next block's projection (b x b numbers)
// and formed explicitly only near certification: the same certificate on the same explicit residuals, for fewer
// p x n products.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core.h"
#include "krylov.h"
#include "lapack.h"
#include "matvec.h"
#include "scratch.h"
#include "small_eigen.h"

namespace diffcut {
namespace detail {

namespace {

using krylov::dot;
using krylov::kAngleTol;
using krylov::kNoise;

constexpr int kBlockSize = 8;       // BLOCK_SIZE
static_assert(kBlockSize <= kMaxBlock, "block products take at most kMaxBlock vectors");
constexpr int kMaxColumns = 320;    // BLOCK_MAX_COLUMNS
constexpr int kMaxCluster = 32;     // BLOCK_MAX_CLUSTER
constexpr double kRankTol = 1e-10;  // rank-deficient directions of a new block (replaced by random ones)
// The explicit residuals are computed once the residual estimate's certificate is below this many times the
// tolerance (the estimate and the explicit residuals are equal in exact arithmetic and differ by the basis'
// rounding).
constexpr double kCheckSlack = 100.0;

void axpy(double a, const double* x, double* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Row-major C (m x n, leading dimension ldc) = alpha op(A) op(B) + beta C, op = transposed where flagged: the
// bound dgemm on the column-major views (C^T = op(B)^T op(A)^T), else plain loops.
void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda, const double* B, int ldb,
          double beta, double* C, int ldc) {
  if (m == 0 || n == 0) return;
  const DgemmFn dgemm = lapack().dgemm;
  if (dgemm) {
    char opb = tb ? 'T' : 'N', opa = ta ? 'T' : 'N';
    dgemm(&opb, &opa, &n, &m, &k, &alpha, const_cast<double*>(B), &ldb, const_cast<double*>(A), &lda, &beta, C,
          &ldc);
    return;
  }
  std::vector<double> row(n);
  for (int i = 0; i < m; ++i) {
    std::fill(row.begin(), row.end(), 0.0);
    for (int l = 0; l < k; ++l) {
      const double a = ta ? A[static_cast<std::size_t>(l) * lda + i] : A[static_cast<std::size_t>(i) * lda + l];
      if (a == 0.0) continue;
      if (tb) {
        for (int j = 0; j < n; ++j) row[j] += a * B[static_cast<std::size_t>(j) * ldb + l];
      } else {
        axpy(a, B + static_cast<std::size_t>(l) * ldb, row.data(), n);
      }
    }
    double* c = C + static_cast<std::size_t>(i) * ldc;
    for (int j = 0; j < n; ++j) c[j] = alpha * row[j] + (beta == 0.0 ? 0.0 : beta * c[j]);
  }
}

// The block solver's stream of deterministic standard normals.
class Normals : public krylov::Normals {
 public:
  explicit Normals(std::uint64_t seed) : krylov::Normals(seed, 0x2545F4914F6CDD1Dull) {}
};

// The b rows of V (b x n) made orthonormal and orthogonal to the q orthonormal rows of Q (q x n): two block
// Gram-Schmidt passes, then a QR of V^T (here Gram-Schmidt with reorthogonalisation inside the block, which gives
// the same R diagonal up to rounding); rows whose R diagonal is <= 1e-10 of the largest are replaced by random
// ones and the whole is done again (at most three attempts), as eigen._orthonormal_rows does. False: failed.
// gram (if not null) receives the b x b Gram matrix of the rows after the first attempt's projection, before the
// block's own orthonormalisation.
bool orthonormal_rows(std::vector<double>& V, int b, const double* Q, int q, std::int64_t n, Normals& rng,
                      std::vector<double>* gram = nullptr) {
  std::vector<double> h(static_cast<std::size_t>(b) * q), diag(b);
  for (int attempt = 0; attempt < 3; ++attempt) {
    const int ni = static_cast<int>(n);
    for (int pass = 0; pass < 2; ++pass) {  // V -= (V Q^T) Q
      gemm(false, true, b, q, ni, 1.0, V.data(), ni, Q, ni, 0.0, h.data(), q);
      gemm(false, false, b, ni, q, -1.0, h.data(), q, Q, ni, 1.0, V.data(), ni);
    }
    if (gram != nullptr && attempt == 0) {
      gram->assign(static_cast<std::size_t>(b) * b, 0.0);
      gemm(false, true, b, b, ni, 1.0, V.data(), ni, V.data(), ni, 0.0, gram->data(), b);
    }
    for (int i = 0; i < b; ++i) {
      double* v = V.data() + static_cast<std::size_t>(i) * n;
      for (int pass = 0; pass < 2; ++pass)
        for (int r = 0; r < i; ++r) {
          const double* w = V.data() + static_cast<std::size_t>(r) * n;
          axpy(-dot(w, v, n), w, v, n);
        }
      diag[i] = std::sqrt(dot(v, v, n));
      if (diag[i] > 0) {
        const double inv = 1.0 / diag[i];
        for (std::int64_t j = 0; j < n; ++j) v[j] *= inv;
      }
    }
    double largest = 0.0;
    for (double x : diag) largest = std::max(largest, x);
    const double floor = kRankTol * std::max(largest, 1e-300);
    bool any_small = false;
    for (int i = 0; i < b; ++i) {
      if (diag[i] <= floor || !std::isfinite(diag[i])) {
        any_small = true;
        rng.fill(V.data() + static_cast<std::size_t>(i) * n, n);
      }
    }
    if (!any_small) return true;
  }
  return false;
}

}  // namespace

double subspace_certificate(const double* theta, const double* r, int p, int* cluster) {
  double best = std::numeric_limits<double>::infinity();
  int best_m = 0;
  const double inner = p > 1 ? theta[0] - theta[1] : std::numeric_limits<double>::infinity();
  double sq = 0.0;
  for (int m = 1; m < p; ++m) {
    sq += r[m - 1] * r[m - 1];
    const double outer = theta[m - 1] - theta[m] - r[m];
    if (!(outer > 0)) continue;
    const double res = std::sqrt(sq);
    double factor = 1.0;
    if (m > 1) {
      factor = std::numeric_limits<double>::infinity();
      if (inner > 0) {
        const double t = res / inner;
        factor = std::sqrt(1.0 + t * t);
      }
    }
    const double bound = factor * res / outer;
    if (bound < best) {
      best = bound;
      best_m = m;
    }
  }
  if (cluster) *cluster = best_m;
  return best;
}

bool block_krylov_fiedler(const float* A, const std::vector<double>& d, std::int64_t n,
                          const std::vector<double>& warm, std::vector<double>& u) {
  std::vector<double> sqrt_d(n), dis(n), u1(n);
  for (std::int64_t i = 0; i < n; ++i) {
    sqrt_d[i] = std::sqrt(d[i]);
    dis[i] = 1.0 / sqrt_d[i];
  }
  const double sn = std::sqrt(dot(sqrt_d.data(), sqrt_d.data(), n));
  for (std::int64_t i = 0; i < n; ++i) u1[i] = sqrt_d[i] / sn;
  int b = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(kBlockSize, (n - 1) / 4)));
  const int kmax = static_cast<int>(std::min<std::int64_t>(kMaxColumns, n - 1));
  Normals rng(static_cast<std::uint64_t>(n));
  std::vector<double> V(static_cast<std::size_t>(b) * n);
  rng.fill(V.data(), static_cast<std::int64_t>(V.size()));
  if (static_cast<std::int64_t>(warm.size()) == n) {
    bool finite = true;
    for (double x : warm) finite &= std::isfinite(x);
    if (finite) {
      std::vector<double> w(n);
      for (std::int64_t i = 0; i < n; ++i) w[i] = warm[i] * sqrt_d[i];
      const double nw = std::sqrt(dot(w.data(), w.data(), n));
      if (nw > 0) {
        const double scale = std::sqrt(static_cast<double>(n)) / nw;
        for (std::int64_t i = 0; i < n; ++i) V[i] = w[i] * scale + kNoise * V[i];
      }
    }
  }
  // Q row 0: u1; rows 1..k: the orthonormal Krylov basis. MQ row j: (M Q^T)^T's row j = M q_j (M symmetric).
  ScratchArray<double> Q(static_cast<std::size_t>(kmax + 1) * n), MQ(static_cast<std::size_t>(kmax) * n);  // cached
  std::copy(u1.begin(), u1.end(), Q.data());
  std::vector<double> T(static_cast<std::size_t>(kmax) * kmax, 0.0);  // row-major, leading dimension kmax
  std::vector<double> scaled(static_cast<std::size_t>(kBlockSize) * n), G;
  ProductTeam team(n);
  const int ni = static_cast<int>(n);
  if (!orthonormal_rows(V, b, Q.data(), 1, n, rng)) return false;
  int k = 0;
  while (k + b <= kmax) {
    std::copy(V.begin(), V.end(), Q.data() + static_cast<std::size_t>(1 + k) * n);
    // rows of V M: (v_j * dis) A, times dis; A row-major and full, read row by row (one pass per block)
    for (int j = 0; j < b; ++j)
      for (std::int64_t i = 0; i < n; ++i) scaled[static_cast<std::size_t>(j) * n + i] = V[static_cast<std::size_t>(j) * n + i] * dis[i];
    double* out = MQ.data() + static_cast<std::size_t>(k) * n;
    rows_times_f32(A, n, scaled.data(), b, out, &team);
    for (int j = 0; j < b; ++j)
      for (std::int64_t i = 0; i < n; ++i) out[static_cast<std::size_t>(j) * n + i] *= dis[i];
    k += b;
    // T = Q^T M Q: one new block column (and row, by symmetry)
    gemm(false, true, k, b, ni, 1.0, Q.data() + n, ni, MQ.data() + static_cast<std::size_t>(k - b) * n, ni, 0.0,
         T.data() + (k - b), kmax);
    for (int r = k - b; r < k; ++r)
      for (int c = 0; c < k - b; ++c) T[static_cast<std::size_t>(r) * kmax + c] = T[static_cast<std::size_t>(c) * kmax + r];
    // all eigenpairs of (T + T^T) / 2 (dsyevr, as scipy.linalg.eigh), then descending
    std::vector<double> Tk(static_cast<std::size_t>(k) * k);
    for (int r = 0; r < k; ++r)
      for (int c = 0; c < k; ++c)
        Tk[static_cast<std::size_t>(r) * k + c] =
            (T[static_cast<std::size_t>(r) * kmax + c] + T[static_cast<std::size_t>(c) * kmax + r]) / 2;
    // the top p Ritz pairs: theta descending, St's row i (k values) the eigenvector of theta[i] (small_eigen.h;
    // dsyevr on all k pairs where it does not converge)
    const int p = std::min(k, kMaxCluster + 1);
    std::vector<double> theta(p), r(p), St(static_cast<std::size_t>(p) * k);
    if (!top_eigenpairs(Tk.data(), k, p, theta, St)) {
      std::vector<double> w, z;
      int found = 0;
      if (syevr('A', k, Tk.data(), 1, k, w, z, found) != 0 || found != k) return false;
      // z is column-major k x k: its column col, eigenvalue w[col] ascending, is the row-major row col of z
      theta.assign(p, 0.0);
      St.assign(static_cast<std::size_t>(p) * k, 0.0);
      for (int i = 0; i < p; ++i) {
        const int col = k - 1 - i;
        theta[i] = w[col];
        std::copy(z.begin() + static_cast<std::size_t>(col) * k, z.begin() + static_cast<std::size_t>(col + 1) * k,
                  St.begin() + static_cast<std::size_t>(i) * k);
      }
    }
    // The next block first: the last block's products with their components in span(u1, Q) removed, whose Gram
    // matrix G gives every Ritz pair's residual without an n-vector: M Q^T = Q^T T + (last block's rest), so
    // ||r_i|| = sqrt(s_i^T G s_i) over s_i's last b coordinates (up to the basis' rounding). The explicit residuals
    // (X and R below, each p x n) and the certificate on them are computed only where this estimate comes within
    // kCheckSlack of certifying, or at the last block: every accepted vector still carries the explicit
    // certificate, as in eigen._block_krylov.
    const bool last = k + b > kmax;
    bool next_ok = false, check = true;
    if (!last) {
      std::copy(MQ.data() + static_cast<std::size_t>(k - b) * n, MQ.data() + static_cast<std::size_t>(k) * n,
                V.begin());
      next_ok = orthonormal_rows(V, b, Q.data(), 1 + k, n, rng, &G);
      if (next_ok) {
        for (int i = 0; i < p; ++i) {
          const double* s = St.data() + static_cast<std::size_t>(i) * k + (k - b);
          double q = 0.0;
          for (int a = 0; a < b; ++a) {
            double row = 0.0;
            for (int c = 0; c < b; ++c) row += G[static_cast<std::size_t>(a) * b + c] * s[c];
            q += s[a] * row;
          }
          r[i] = std::sqrt(std::max(q, 0.0));
        }
        const double estimate = subspace_certificate(theta.data(), r.data(), p, nullptr);
        check = std::isfinite(estimate) && estimate < kCheckSlack * kAngleTol;
      }
    }
    if (check) {  // the top p Ritz vectors X (p x n) and residuals R = S^T MQ - theta X
      std::vector<double> X(static_cast<std::size_t>(p) * n), R(static_cast<std::size_t>(p) * n);
      gemm(false, false, p, ni, k, 1.0, St.data(), k, Q.data() + n, ni, 0.0, X.data(), ni);
      gemm(false, false, p, ni, k, 1.0, St.data(), k, MQ.data(), ni, 0.0, R.data(), ni);
      for (int i = 0; i < p; ++i) {
        double* e = R.data() + static_cast<std::size_t>(i) * n;
        const double* x = X.data() + static_cast<std::size_t>(i) * n;
        for (std::int64_t j = 0; j < n; ++j) e[j] -= theta[i] * x[j];
        r[i] = std::sqrt(dot(e, e, n));
      }
      const double bound = subspace_certificate(theta.data(), r.data(), p, nullptr);
      if (std::isfinite(bound) && bound < kAngleTol && 1.0 - theta[0] - r[0] > 0) {
        // lambda_2 near rounding level: possibly disconnected, where the certified vector is an arbitrary one of
        // the eigenspace; the canonical split then, and not certified where A is connected with lambda_2 at
        // rounding level (the dense solve's near_null_split; eigen._block_krylov)
        if (1.0 - theta[0] <= kDisconnectedEigenvalue) {
          const bool split = component_split(A, d, n, u);
          if (split || 1.0 - theta[0] <= kNearNullEigenvalue) return split;
        }
        u.assign(X.begin(), X.begin() + n);
        const double c = dot(u1.data(), u.data(), n);
        for (std::int64_t j = 0; j < n; ++j) u[j] -= u1[j] * c;
        const double nu = std::sqrt(dot(u.data(), u.data(), n));
        for (double& x : u) x /= nu;
        return true;
      }
    }
    if (last || !next_ok) break;
  }
  return false;
}

}  // namespace detail
}  // namespace diffcut
