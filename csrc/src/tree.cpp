// The recursive two-way Normalized Cut with diffcut_engine.graph's semantics (graph/tree.py, graph/host.py,
// graph/scoring.py, graph/eigen.py), depth first with the dense solver:
// - each subgraph is an index set; A = W[idx][:, idx], kept as W's float32 values (the root's is W itself) and
//   read in float64 arithmetic, as the numpy path's float64 copy; degrees recomputed inside it (at the root and
//   after nodes were left out: numpy's pairwise row sums; else the children's degrees from the split's bin sums);
// - y = D^-1/2 u2 (u2 from LAPACK dsyevr on D^-1/2 (D - A) D^-1/2, lower triangle, eigenpairs 1..2), its first
//   entry of (near-)largest magnitude made positive;
// - num_thresholds candidates numpy.linspace(0.99 min y, 0.99 max y), every candidate's exact NCut from the bin
//   sums, the first minimum; the split is kept while NCut < tau_max, the "1"-side (y > threshold) first;
// - compat "official": below the root, a node whose row of W holds an exact zero is left out of every later
//   subgraph (it keeps the label path it had at the root's split).
// The floating-point operations follow the numpy code's order, so that, given the same W, the partitions agree
// with the Python dense solver's up to the eigensolver's own rounding.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "core.h"
#include "isa.h"
#include "lapack.h"
#include "matvec.h"
#include "scratch.h"

namespace diffcut {
namespace detail {

namespace {

// numpy's pairwise summation in float64 of n values of type T, each widened to double as it is read: its blocks
// of 8 <= n <= 128 values (eight lanes, vectorised) and the recursion above them.
template <class T>
DIFFCUT_CLONES double pairwise_block(const T* a, std::int64_t n) {
  double r[8];
  for (int j = 0; j < 8; ++j) r[j] = static_cast<double>(a[j]);
  std::int64_t i = 8;
  for (; i < n - (n % 8); i += 8)
    for (int j = 0; j < 8; ++j) r[j] += static_cast<double>(a[i + j]);
  double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
  for (; i < n; ++i) res += static_cast<double>(a[i]);
  return res;
}

template <class T>
double pairwise_sum_of(const T* a, std::int64_t n) {
  if (n < 8) {
    double res = 0.0;
    for (std::int64_t i = 0; i < n; ++i) res += static_cast<double>(a[i]);
    return res;
  }
  if (n <= 128) return pairwise_block(a, n);
  std::int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum_of(a, n2) + pairwise_sum_of(a + n2, n - n2);
}

}  // namespace

double pairwise_sum(const double* a, std::int64_t n) { return pairwise_sum_of(a, n); }

double pairwise_sum_widened(const float* a, std::int64_t n) { return pairwise_sum_of(a, n); }

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// A subgraph is a leaf without solving when its spectral lower bound is at least tau_max plus this margin.
constexpr double kLeafBoundMargin = 1e-9;
// Dense solves from this many nodes on run dsyevr with the BLAS's threads.
constexpr std::int64_t kThreadedDenseMin = 512;

// sum_j row[j]^2 dinv[j] in float64, in eight lanes (vectorised; the order differs from numpy's, which only moves
// the bound by rounding: a bound within kLeafBoundMargin of tau_max is solved either way)
DIFFCUT_CLONES double weighted_square_sum(const float* row, const double* dinv, std::int64_t m) {
  double r[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  std::int64_t j = 0;
  for (; j + 8 <= m; j += 8)
    for (int l = 0; l < 8; ++l) {
      const double a = static_cast<double>(row[j + l]);
      r[l] += a * a * dinv[j + l];
    }
  double acc = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
  for (; j < m; ++j) {
    const double a = static_cast<double>(row[j]);
    acc += a * a * dinv[j];
  }
  return acc;
}

// A rigorous lower bound on the NCut of every bipartition (graph/eigen.py spectral_lower_bound, its O(n^2) form):
// NCut >= 1 - mu_2 and mu_2 <= sqrt(||M||_F^2 - 1), M = D^-1/2 A D^-1/2. Stops once it is certain to be below
// stop_below (the row terms are non-negative).
double spectral_lower_bound(const float* A, const std::vector<double>& d, std::int64_t m,
                            double stop_below) {
  if (stop_below > 1.0) return 1.0;
  const double give_up = 1.0 + std::pow(std::max(1.0 - stop_below, 0.0), 2);
  std::vector<double> dinv(m);
  for (std::int64_t i = 0; i < m; ++i) dinv[i] = 1.0 / d[i];
  double fro2 = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    fro2 += dinv[i] * weighted_square_sum(A + i * m, dinv.data(), m);
    if (fro2 > give_up) break;
  }
  return 1.0 - std::sqrt(std::max(fro2 - 1.0, 0.0));
}

// Whether v[0, len) holds an exact zero (vectorised: blocks of 256 values counted, stopping after the first block
// with one).
DIFFCUT_CLONES bool has_zero(const float* v, std::int64_t len) {
  std::int64_t i = 0;
  for (; i + 256 <= len; i += 256) {
    int zeros = 0;
    for (int j = 0; j < 256; ++j) zeros += v[i + j] == 0.0f;
    if (zeros) return true;
  }
  int zeros = 0;
  for (; i < len; ++i) zeros += v[i] == 0.0f;
  return zeros != 0;
}

// dst[i] += src[i] (widened) for i < m (vectorised; element by element, so the order of each sum is the caller's)
DIFFCUT_CLONES void add_widened(double* dst, const float* src, std::int64_t m) {
  for (std::int64_t i = 0; i < m; ++i) dst[i] += static_cast<double>(src[i]);
}

// body(begin, end) over [0, m) from kSplitRowsMin on where the core may use several threads (else one call): in
// kSplitParts ranges claimed one at a time by the calling thread and the shared helpers (run_shared), so that a
// helper that wakes late (its core busy or asleep) leaves its share to the caller. For passes over a whole
// subgraph matrix whose parts are independent (the same floats either way).
constexpr std::int64_t kSplitRowsMin = 1024;
constexpr int kSplitParts = 8;
template <class F>
void on_two_threads(std::int64_t m, F&& body) {
  if (m < kSplitRowsMin || kernel_threads() < 2) {
    body(std::int64_t{0}, m);
    return;
  }
  run_shared(kSplitParts, [&](int p) { body(m * p / kSplitParts, m * (p + 1) / kSplitParts); });
}

// dst[b] = src[idx[b]] for b < m (a subgraph's row gathered from W's)
DIFFCUT_CLONES void gather_row(float* dst, const float* src, const std::int32_t* idx, std::int64_t m) {
  for (std::int64_t b = 0; b < m; ++b) dst[b] = src[idx[b]];
}

}  // namespace

namespace {

// L = (D^-1/2 (D - A)) D^-1/2 row by row as numpy computes it (eigen.normalized_laplacian); LAPACK reads the lower
// triangle of the column-major matrix, i.e. element (i, j), i >= j, at lap[i + j * m]: the row-major upper storage.
void lower_laplacian(const float* A, const std::vector<double>& d, std::int64_t m, double* lap) {
  std::vector<double> dis(m);
  for (std::int64_t i = 0; i < m; ++i) dis[i] = 1.0 / std::sqrt(d[i]);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j <= i; ++j) {
      double v = -static_cast<double>(A[i * m + j]);
      if (i == j) v += d[i];
      lap[i + j * m] = (dis[i] * v) * dis[j];
    }
  }
}

std::string dsyevr_failure(std::int64_t m, int info) {
  return "dsyevr failed on a subgraph of " + std::to_string(m) + " nodes (info " + std::to_string(info) + ")";
}

}  // namespace

bool iterative_degrees(const double* d, std::int64_t m) {
  double lo = d[0], hi = d[0];
  for (std::int64_t i = 1; i < m; ++i) {
    lo = std::min(lo, d[i]);
    hi = std::max(hi, d[i]);
  }
  return lo >= kIterativeDegreeSpread * hi;
}

// u2 of the (m x m, row-major) affinity A with degrees d by dsyevr (eigenpairs 1..2 of the normalised Laplacian).
void dense_u2(const float* A, const std::vector<double>& d, std::int64_t m, std::vector<double>& u2) {
  std::vector<double> w, z;
  {
    // (back in the scratch cache before near_null_split builds the Laplacian again: one m x m block, not two)
    ScratchArray<double> lap(static_cast<std::size_t>(m * m));
    lower_laplacian(A, d, m, lap.data());
    int found = 0;
    const int info = syevr('I', static_cast<int>(m), lap.data(), 1, 2, w, z, found);
    if (info != 0 || found != 2) throw Failure(Code::Lapack, dsyevr_failure(m, info));
  }
  if (w[1] <= kDisconnectedEigenvalue &&
      (component_split(A, d, m, u2) || (w[1] <= kNearNullEigenvalue && near_null_split(A, d, m, u2))))
    return;
  u2.assign(z.begin() + m, z.begin() + 2 * m);  // second eigenvector (column 1)
}

bool near_null_split(const float* A, const std::vector<double>& d, std::int64_t m, std::vector<double>& u2) {
  ScratchArray<double> lap(static_cast<std::size_t>(m * m));
  lower_laplacian(A, d, m, lap.data());
  std::vector<double> w, V;
  int k = 0;
  const int info = syevr('V', static_cast<int>(m), lap.data(), 0, 0, w, V, k, kNearNullLower, kNearNullEigenvalue);
  if (info != 0) throw Failure(Code::Lapack, dsyevr_failure(m, info));
  if (k < 2) return false;
  // p = sum_j V[:, j] V[0, j], accumulated column by column; then p - s (sum(p s) / sum(s s)), s = sqrt(d),
  // the sums numpy's pairwise ones
  std::vector<double> p(m), s(m), ps(m), ss(m);
  double vmax = 0.0;
  for (std::int64_t i = 0; i < m; ++i) p[i] = V[i] * V[0];
  for (int j = 1; j < k; ++j) {
    const double* col = V.data() + static_cast<std::size_t>(j) * m;
    for (std::int64_t i = 0; i < m; ++i) p[i] = p[i] + col[i] * col[0];
  }
  for (std::int64_t i = 0; i < m * k; ++i) vmax = std::max(vmax, std::fabs(V[i]));
  for (std::int64_t i = 0; i < m; ++i) {
    s[i] = std::sqrt(d[i]);
    ps[i] = p[i] * s[i];
    ss[i] = s[i] * s[i];
  }
  const double c = pairwise_sum(ps.data(), m) / pairwise_sum(ss.data(), m);
  double pmax = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    p[i] = p[i] - s[i] * c;
    pmax = std::max(pmax, std::fabs(p[i]));
  }
  if (!(pmax > kNearNullFloor * vmax)) return false;
  u2.swap(p);
  return true;
}

// A disconnected subgraph (several components of A's non-zero entries) has the eigenvalue 1 of M once per
// component, so its eigensolve returns an arbitrary vector of that eigenspace: u2 = D^1/2 (1_C - vol(C) / vol(V)),
// C the component of node 0 (eigen.component_split), and true; false (u2 untouched) where A is connected.
bool component_split(const float* A, const std::vector<double>& d, std::int64_t m, std::vector<double>& u2) {
  std::vector<char> reached(static_cast<std::size_t>(m), 0);
  std::vector<std::int64_t> queue;
  queue.reserve(static_cast<std::size_t>(m));
  reached[0] = 1;
  queue.push_back(0);
  for (std::size_t head = 0; head < queue.size(); ++head) {
    const float* row = A + queue[head] * m;
    for (std::int64_t j = 0; j < m; ++j)
      if (!reached[j] && row[j] != 0.0f) {
        reached[j] = 1;
        queue.push_back(j);
      }
  }
  if (static_cast<std::int64_t>(queue.size()) == m) return false;
  double vol_c = 0.0, vol = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    vol += d[i];
    if (reached[i]) vol_c += d[i];
  }
  const double c = vol_c / vol;
  u2.resize(static_cast<std::size_t>(m));
  for (std::int64_t i = 0; i < m; ++i) u2[i] = std::sqrt(d[i]) * ((reached[i] ? 1.0 : 0.0) - c);
  return true;
}

namespace {

// y = D^-1/2 u, its first entry of (near-)largest magnitude made positive.
void fiedler_from_u(const std::vector<double>& u, const std::vector<double>& d, std::int64_t m,
                    std::vector<double>& y) {
  y.resize(m);
  double amax = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    y[i] = (1.0 / std::sqrt(d[i])) * u[i];
    amax = std::max(amax, std::fabs(y[i]));
  }
  const double ref_level = amax * (1.0 - kSignTieRtol);
  std::int64_t ref = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    if (std::fabs(y[i]) >= ref_level) {
      ref = i;
      break;
    }
  }
  if (y[ref] < 0)
    for (double& v : y) v = -v;
}

// numpy.linspace(start, stop, num) in float64, operation by operation.
std::vector<double> linspace(double start, double stop, int num) {
  std::vector<double> out(num);
  const int div = num - 1;
  const double delta = stop - start;
  const double step = delta / div;
  for (int i = 0; i < num; ++i) {
    double v = (step == 0) ? (static_cast<double>(i) / div) * delta : static_cast<double>(i) * step;
    out[i] = v + start;
  }
  out[num - 1] = stop;
  return out;
}

struct Split {
  double value = kInf;
  int best = -1;
  std::vector<int> bins;    // bin of each node: the number of thresholds strictly below its y
  ScratchArray<double> GA;  // (k+1) x m: GA[c * m + i] = sum of A[j, i] over the nodes j of bin c (cached)
};

// Every candidate's exact NCut from the bin sums (graph/scoring.py binned_scores and ncut_from_bins).
void score(const float* A, const std::vector<double>& d, const std::vector<double>& y,
           std::int64_t m, int num, Split& s) {
  double ymin = y[0], ymax = y[0];
  for (std::int64_t i = 1; i < m; ++i) {
    ymin = std::min(ymin, y[i]);
    ymax = std::max(ymax, y[i]);
  }
  const std::vector<double> thr = linspace(ymin * 0.99, ymax * 0.99, num);
  const int k = num, nb = num + 1;
  s.bins.assign(m, 0);
  for (std::int64_t i = 0; i < m; ++i)  // searchsorted(thr, y, "left")
    s.bins[i] = static_cast<int>(std::lower_bound(thr.begin(), thr.end(), y[i]) - thr.begin());
  s.GA.resize(static_cast<std::size_t>(nb) * m);
  std::fill(s.GA.data(), s.GA.data() + s.GA.size(), 0.0);
  on_two_threads(m, [&](std::int64_t c0, std::int64_t c1) {  // (column ranges: each sum's order is kept)
    for (std::int64_t j = 0; j < m; ++j) {  // rows of A added to their bin's row, nodes in increasing order
      double* dst = s.GA.data() + static_cast<std::size_t>(s.bins[j]) * m;
      add_widened(dst + c0, A + j * m + c0, c1 - c0);
    }
  });
  // B[b][c] = sum over nodes i of bin b (increasing) of GA[c][i]
  std::vector<double> B(static_cast<std::size_t>(nb) * nb, 0.0), vol(nb, 0.0);
  std::vector<std::int64_t> cnt(nb, 0);
  for (int c = 0; c < nb; ++c) {
    const double* row = s.GA.data() + static_cast<std::size_t>(c) * m;
    for (std::int64_t i = 0; i < m; ++i) B[static_cast<std::size_t>(s.bins[i]) * nb + c] += row[i];
  }
  for (std::int64_t i = 0; i < m; ++i) {
    vol[s.bins[i]] += d[i];
    cnt[s.bins[i]] += 1;
  }
  // right[b][t] = sum_{c <= t} B[b][c]; cut[t] = sum_{b = k down to t+1} right[b][t]
  std::vector<double> right(B.size());
  for (int b = 0; b < nb; ++b) {
    double acc = 0.0;
    for (int c = 0; c < nb; ++c) {
      acc += B[static_cast<std::size_t>(b) * nb + c];
      right[static_cast<std::size_t>(b) * nb + c] = acc;
    }
  }
  std::vector<double> values(k);
  // suffix sums over b of right[b][t], from b = k down
  std::vector<double> below(static_cast<std::size_t>(nb) * nb);
  for (int t = 0; t < nb; ++t) {
    double acc = 0.0;
    for (int b = nb - 1; b >= 0; --b) {
      acc += right[static_cast<std::size_t>(b) * nb + t];
      below[static_cast<std::size_t>(b) * nb + t] = acc;
    }
  }
  std::vector<double> vol_one(k), vol_zero(k);
  std::vector<std::int64_t> cnt_one(k), cnt_zero(k);
  {
    double acc = 0.0;
    std::int64_t ca = 0;
    for (int b = nb - 1; b >= 1; --b) {
      acc += vol[b];
      ca += cnt[b];
      vol_one[b - 1] = acc;
      cnt_one[b - 1] = ca;
    }
    acc = 0.0;
    ca = 0;
    for (int b = 0; b < k; ++b) {
      acc += vol[b];
      ca += cnt[b];
      vol_zero[b] = acc;
      cnt_zero[b] = ca;
    }
  }
  s.best = 0;
  s.value = kInf;
  bool first = true;
  for (int t = 0; t < k; ++t) {
    const double cut = below[static_cast<std::size_t>(t + 1) * nb + t];
    double v = cut / vol_one[t] + cut / vol_zero[t];
    if (cnt_one[t] == 0 || cnt_zero[t] == 0 || !std::isfinite(v)) v = kInf;
    values[t] = v;
    if (first || v < s.value) {  // the first minimum, as numpy.argmin
      s.value = v;
      s.best = t;
      first = false;
    }
  }
}

struct Pending {
  std::int32_t node;
  std::vector<double> degrees;  // from the parent's bin sums; empty: summed when solved
  std::vector<double> warm;     // the parent's vector on this node's solved nodes (iterative solver's start)
};

}  // namespace

namespace {

// Whether every entry of the m x m matrix A is the same positive value (graph/host.py uniform): decided by the
// first differing entry for any other graph.
bool uniform(const float* A, std::int64_t m) {
  const float a = A[0];
  if (!(a > 0.0f) || A[m - 1] != a || A[(m - 1) * m] != a) return false;
  for (std::int64_t i = 0; i < m * m; ++i)
    if (A[i] != a) return false;
  return true;
}

}  // namespace

Tree build_tree(const float* W, std::int64_t n, const Options& options, const std::uint8_t* zero_rows) {
  // the products run on the core's own threads (matvec.h); the BLAS calls left (dsyevr on small subgraphs, the
  // block Krylov's small products) single-threaded, so that its idle workers do not spin on the same cores; a
  // dense solve of a large subgraph (solver "dense", or where neither Krylov solver certifies) gets its threads
  std::optional<SingleThreadedBlas> one_blas_thread;
  one_blas_thread.emplace();
  Tree tree;
  tree.height = n;
  tree.width = 1;
  tree.tau_max = options.tau_max;
  tree.compat = options.compat;
  // the zero-row rule: nodes whose row of W holds an exact zero
  std::vector<char> zero_row;
  if (options.compat == Compat::Official) {
    zero_row.assign(n, 0);
    bool any = false;
    for (std::int64_t i = 0; i < n; ++i) {
      if (zero_rows ? zero_rows[i] != 0 : has_zero(W + i * n, n)) {
        zero_row[i] = 1;
        any = true;
      }
    }
    if (!any) zero_row.clear();
  }
  Node root;
  root.indices.resize(n);
  for (std::int64_t i = 0; i < n; ++i) root.indices[i] = static_cast<std::int32_t>(i);
  tree.nodes.push_back(std::move(root));

  std::vector<Pending> stack;
  stack.push_back({0, {}, {}});
  ScratchArray<float> sub;  // a subgraph's matrix: reused from node to node and, cached, from image to image
  std::vector<double> d, y, u;
  Split split;
  bool lanczos_failed = false;  // the per-tree memo of eigen.fiedler_vector
  while (!stack.empty()) {
    Pending item = std::move(stack.back());
    stack.pop_back();
    const std::int32_t id = item.node;
    std::vector<std::int32_t> idx = tree.nodes[id].indices;
    const int depth = tree.nodes[id].depth;
    if (!zero_row.empty() && depth > 0) {
      std::vector<std::int32_t> kept;
      kept.reserve(idx.size());
      for (std::int32_t i : idx)
        if (!zero_row[i]) kept.push_back(i);
      idx.swap(kept);
    }
    const std::int64_t m = static_cast<std::int64_t>(idx.size());
    if (m < 2) continue;
    const float* A = W;  // every node (the root): W itself
    if (m < n) {
      sub.resize(static_cast<std::size_t>(m * m));
      on_two_threads(m, [&](std::int64_t a0, std::int64_t a1) {
        for (std::int64_t a = a0; a < a1; ++a)
          gather_row(sub.data() + a * m, W + static_cast<std::int64_t>(idx[a]) * n, idx.data(), m);
      });
      A = sub.data();
    }
    if (!item.degrees.empty()) {
      d.swap(item.degrees);
    } else {
      d.resize(m);
      on_two_threads(m, [&](std::int64_t a0, std::int64_t a1) {
        for (std::int64_t a = a0; a < a1; ++a) d[a] = pairwise_sum_widened(A + a * m, m);
      });
    }
    bool isolated = false;
    for (std::int64_t a = 0; a < m; ++a) isolated |= !(d[a] > 0);
    if (isolated) continue;  // an all-zero row: no meaningful Laplacian (a leaf)
    if (depth == 0 && options.tau_max <= 1.0 && uniform(A, m)) {
      // every bipartition of a uniform complete graph has NCut exactly 1 (constant features: W = 1): a leaf at
      // every tau <= 1, with no eigensolve (its vector is arbitrary; the solvers took up to a second to fail to
      // certify one), as graph/host.py decides it
      tree.nodes[id].value = 1.0;
      continue;
    }
    if (depth > 0) {  // a subgraph proved a leaf at tau_max needs no eigensolve (the tree and its cuts are unchanged)
      const double stop = options.tau_max + kLeafBoundMargin;
      const double bound = spectral_lower_bound(A, d, m, stop);
      if (bound >= stop) {
        tree.nodes[id].value = bound;
        tree.nodes[id].exact = false;
        continue;
      }
    }
    // auto above kAutoDenseMax nodes: Lanczos (skipped once it failed in this tree: a clustered spectrum, whose
    // subgraphs are nearly disconnected too), block Krylov, then dense; every accepted vector is certified
    // (and only where every degree is at least kIterativeDegreeSpread of the largest: y = D^-1/2 u magnifies the
    // certified error of u at nearly isolated nodes; eigen.ITERATIVE_DEGREE_SPREAD)
    const bool iterative =
        options.solver == Solver::Auto && m > kAutoDenseMax && m >= 32 && iterative_degrees(d.data(), m);
    bool solved = false;
    if (iterative && !lanczos_failed) {
      solved = lanczos_fiedler(A, d, m, item.warm, u);
      lanczos_failed = !solved;
    }
    if (iterative && !solved) solved = block_krylov_fiedler(A, d, m, item.warm, u);
    if (!solved) {
      if (m >= kThreadedDenseMin) one_blas_thread.reset();
      dense_u2(A, d, m, u);
      if (!one_blas_thread) one_blas_thread.emplace();
    }
    fiedler_from_u(u, d, m, y);
    score(A, d, y, m, options.num_thresholds, split);
    tree.nodes[id].value = split.value;
    if (!(split.value < options.tau_max)) continue;
    const int best = split.best;
    // children: the "1"-side (bin > best) and the "0"-side, in increasing node order. Under the zero-row rule
    // the root's children keep the left-out nodes in their index sets (their label path) but solve without
    // them, with degrees summed then; otherwise the degrees come from the split's bin sums:
    // GA[best+1:].sum(0) on the "1"-side, GA[:best+1].sum(0) on the "0"-side.
    bool dropped = false;
    if (!zero_row.empty())
      for (std::int32_t i : idx) dropped |= zero_row[i] != 0;
    Node one, zero;
    one.depth = zero.depth = depth + 1;
    std::vector<double> d_one, d_zero, warm_one, warm_zero;
    for (std::int64_t a = 0; a < m; ++a) {
      const bool side = split.bins[a] > best;
      (side ? one : zero).indices.push_back(idx[a]);
      if (!dropped || !zero_row[idx[a]]) (side ? warm_one : warm_zero).push_back(y[a]);
      if (dropped) continue;
      double acc = 0.0;
      if (side) {
        for (int c = best + 1; c <= options.num_thresholds; ++c) acc += split.GA[static_cast<std::size_t>(c) * m + a];
        d_one.push_back(acc);
      } else {
        for (int c = 0; c <= best; ++c) acc += split.GA[static_cast<std::size_t>(c) * m + a];
        d_zero.push_back(acc);
      }
    }
    const std::int32_t one_id = static_cast<std::int32_t>(tree.nodes.size());
    tree.nodes.push_back(std::move(one));
    tree.nodes.push_back(std::move(zero));
    tree.nodes[id].one = one_id;
    tree.nodes[id].zero = one_id + 1;
    stack.push_back({one_id + 1, std::move(d_zero), std::move(warm_zero)});
    stack.push_back({one_id, std::move(d_one), std::move(warm_one)});
  }
  return tree;
}

Tree build_tree_from_tokens(const float* tokens, std::int64_t n, std::int64_t c, const Options& options,
                            bool normalize) {
  ScratchArray<float> normalised(normalize ? static_cast<std::size_t>(n) * static_cast<std::size_t>(c) : 0);
  if (normalize) {
    std::copy(tokens, tokens + n * c, normalised.data());
    l2_normalize(normalised.data(), n, c);
  }
  ScratchArray<float> W(static_cast<std::size_t>(n) * static_cast<std::size_t>(n));  // cached for the next image
  std::vector<std::uint8_t> zero_row(static_cast<std::size_t>(n));
  affinity_from_tokens(normalize ? normalised.data() : tokens, n, c, options.alpha, W.data(), zero_row.data());
  return build_tree(W.data(), n, options, zero_row.data());
}

}  // namespace detail
}  // namespace diffcut
