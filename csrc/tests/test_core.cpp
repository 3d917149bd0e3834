// The C++ core and the C++ header: planted partitions are found, every cut of a tree equals the tree built at
// that tau, labels follow the official assemble_clusters numbering, constant features give one segment, the
// pairwise sum is a sum, the float32-stored products are float64 products (the same bits on one thread or
// several), block Krylov certifies the Fiedler vector of a clustered spectrum (where Lanczos cannot), its
// Rayleigh-Ritz eigensolver (small_eigen.h) gives dsyevr's top eigenpairs (random, clustered, repeated, zero),
// and errors surface as diffcut::Error with their code; the refinement: the support-box PAMR equals a plain dense
// propagation of all K masks bit for bit (borders, resized masks, a dilation wider than the image, one label per
// chunk, threads), the median is the 5th smallest of the clamped window, and the C++ header's refinement calls.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core.h"
#include "diffcut/diffcut.hpp"
#include "lapack.h"
#include "matvec.h"
#include "npy.h"
#include "scratch.h"
#include "small_eigen.h"
#include "spectrum.h"

static int failures = 0;
#define EXPECT(cond)                                                       \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

using diffcut::detail::Compat;

// regions: quadrants-like map of an h x w grid (4 regions); features: random centre per region plus noise.
static std::vector<float> planted(int h, int w, int c, std::vector<int>& regions, unsigned seed, double noise) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> centres(4 * c);
  for (double& v : centres) v = normal(rng);
  regions.assign(h * w, 0);
  std::vector<float> f(static_cast<std::size_t>(h) * w * c);
  for (int i = 0; i < h; ++i)
    for (int j = 0; j < w; ++j) {
      const int r = (i >= h / 2) * 2 + (j >= (w * 3) / 5);
      regions[i * w + j] = r;
      for (int k = 0; k < c; ++k) f[(i * w + j) * c + k] = static_cast<float>(centres[r * c + k] + noise * normal(rng));
    }
  return f;
}

static bool same_partition(const std::vector<int>& a, const std::vector<std::int32_t>& b) {
  std::set<std::pair<int, int>> pairs;
  std::set<int> sa(a.begin(), a.end()), sb(b.begin(), b.end());
  for (std::size_t i = 0; i < a.size(); ++i) pairs.insert({a[i], b[i]});
  return pairs.size() == sa.size() && sa.size() == sb.size();
}

// The official numbering: masks summed with weights w_k = max(current sum) + 1, labels = rank of the sums.
static std::vector<std::int32_t> official_numbering(const diffcut::detail::Tree& tree, double tau) {
  const std::int64_t n = tree.size();
  std::vector<double> sum(n, 0.0);
  std::vector<std::int32_t> stack{0};
  while (!stack.empty()) {
    const auto& node = tree.nodes[stack.back()];
    stack.pop_back();
    if (node.is_split() && node.value < tau) {
      const double wk = *std::max_element(sum.begin(), sum.end()) + 1.0;
      for (std::int32_t i : tree.nodes[node.one].indices) sum[i] += wk;
      stack.push_back(node.zero);
      stack.push_back(node.one);
    }
  }
  std::vector<double> uniq(sum);
  std::sort(uniq.begin(), uniq.end());
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  std::vector<std::int32_t> out(n);
  for (std::int64_t i = 0; i < n; ++i)
    out[i] = static_cast<std::int32_t>(std::lower_bound(uniq.begin(), uniq.end(), sum[i]) - uniq.begin());
  return out;
}

static diffcut::detail::Tree tree_of(const std::vector<float>& f, int h, int w, int c, double tau_max,
                                     Compat compat,
                                     diffcut::detail::Solver solver = diffcut::detail::Solver::Auto) {
  std::vector<float> x(f);
  const std::int64_t n = static_cast<std::int64_t>(h) * w;
  diffcut::detail::l2_normalize(x.data(), n, c);
  std::vector<float> W(static_cast<std::size_t>(n * n));
  diffcut::detail::affinity_from_tokens(x.data(), n, c, 10.0, W.data());
  diffcut::detail::Options o;
  o.tau_max = tau_max;
  o.compat = compat;
  o.solver = solver;
  auto t = diffcut::detail::build_tree(W.data(), n, o);
  t.height = h;
  t.width = w;
  return t;
}

// Nearly disconnected (tests/test_graph_block.py clustered_graph): parts dense blocks coupled by weights ~eps, so
// the top of the spectrum of M is a cluster of parts - 1 eigenvalues within ~eps of 1 (gaps ~eps inside, ~0.5
// below). A is (n x n) row-major, symmetric and float32 (as the solvers read W's values), d its row sums.
static void clustered_graph(int parts, int size, double eps, unsigned seed, std::vector<float>& A,
                            std::vector<double>& d) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> within(0.5, 1.0), coupling(0.2, 3.0), jitter(0.5, 1.5);
  const int n = parts * size;
  std::vector<double> cross(static_cast<std::size_t>(parts) * parts);
  for (double& c : cross) c = eps * coupling(rng);
  A.assign(static_cast<std::size_t>(n) * n, 0.0f);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      A[static_cast<std::size_t>(i) * n + j] = static_cast<float>(
          i / size == j / size ? within(rng) : cross[(i / size) * parts + j / size] * jitter(rng));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j) A[static_cast<std::size_t>(i) * n + j] = A[static_cast<std::size_t>(j) * n + i];
  d.assign(n, 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) d[i] += static_cast<double>(A[static_cast<std::size_t>(i) * n + j]);
}

static double sin_angle(const std::vector<double>& u, const std::vector<double>& v) {
  double uv = 0, uu = 0, vv = 0;
  for (std::size_t i = 0; i < u.size(); ++i) {
    uv += u[i] * v[i];
    uu += u[i] * u[i];
    vv += v[i] * v[i];
  }
  const double c = uv / std::sqrt(uu * vv);
  return std::sqrt(std::max(0.0, 1.0 - c * c));
}

// A plain PAMR: all k one-hot masks (labels of the image's size) propagated densely on the whole image, taps in the
// reference's order, then the argmax (first maximum).
static std::vector<std::int32_t> dense_pamr(const std::vector<float>& aff, const std::vector<std::int32_t>& labels,
                                            int h, int w, int k, const std::vector<int>& dil, int iters) {
  const auto offs = diffcut::detail::pamr_offsets(dil);
  const std::size_t hw = static_cast<std::size_t>(h) * w;
  std::vector<float> m(k * hw, 0.0f), next(k * hw);
  for (std::size_t i = 0; i < hw; ++i) m[labels[i] * hw + i] = 1.0f;
  for (int t = 0; t < iters; ++t) {
    for (int j = 0; j < k; ++j)
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          float acc = 0.0f;
          for (std::size_t p = 0; p < offs.size(); ++p) {
            const int y2 = std::min(std::max(y + static_cast<int>(offs[p].dy), 0), h - 1);
            const int x2 = std::min(std::max(x + static_cast<int>(offs[p].dx), 0), w - 1);
            acc += m[j * hw + y2 * w + x2] * aff[p * hw + y * w + x];
          }
          next[j * hw + y * w + x] = acc;
        }
    std::swap(m, next);
  }
  std::vector<std::int32_t> out(hw, 0);
  for (std::size_t i = 0; i < hw; ++i) {
    float best = m[i];
    for (int j = 1; j < k; ++j)
      if (m[j * hw + i] > best) {
        best = m[j * hw + i];
        out[i] = j;
      }
  }
  return out;
}

// The affinity pass's zero-row flags are exactly the rows of W holding an exact zero, and the tree built with them
// is the tree built by scanning W (official mode).
static void check_zero_row_flags(const std::vector<float>& f, int n, int c) {
  std::vector<float> x(f);
  diffcut::detail::l2_normalize(x.data(), n, c);
  std::vector<float> W(static_cast<std::size_t>(n) * n);
  std::vector<std::uint8_t> zero_row(static_cast<std::size_t>(n), 7);
  diffcut::detail::affinity_from_tokens(x.data(), n, c, 10.0, W.data(), zero_row.data());
  int flagged = 0;
  for (int i = 0; i < n; ++i) {
    const bool has = std::find(W.begin() + static_cast<std::ptrdiff_t>(i) * n,
                               W.begin() + static_cast<std::ptrdiff_t>(i + 1) * n, 0.0f) !=
                     W.begin() + static_cast<std::ptrdiff_t>(i + 1) * n;
    EXPECT(zero_row[i] == (has ? 1 : 0));
    flagged += has;
  }
  EXPECT(flagged >= 2);
  diffcut::detail::Options o;
  o.compat = Compat::Official;
  const auto given = diffcut::detail::build_tree(W.data(), n, o, zero_row.data());
  const auto scanned = diffcut::detail::build_tree(W.data(), n, o);
  std::vector<std::int32_t> a(n), b(n);
  EXPECT(given.nodes.size() == scanned.nodes.size());
  EXPECT(given.cut(0.5, a.data()) == scanned.cut(0.5, b.data()));
  EXPECT(a == b);
}

// top_eigenpairs against dsyevr: eigenvalues within 1e-13 ||A||, residuals ||A z - w z|| and orthogonality within
// 1e-11 ||A|| (a cluster's vectors are any orthonormal basis of it, so they are compared through residuals).
static void check_top_eigenpairs(const std::vector<double>& A, int k, int p) {
  std::vector<double> w, z, lw, lz, copy(A);
  int found = 0;
  EXPECT(diffcut::detail::top_eigenpairs(A.data(), k, p, w, z));
  EXPECT(diffcut::detail::syevr('A', k, copy.data(), 1, k, lw, lz, found) == 0 && found == k);
  if (w.size() != static_cast<std::size_t>(p) || z.size() != static_cast<std::size_t>(p) * k || found != k) return;
  double norm = 1e-300;
  for (double x : A) norm = std::max(norm, std::fabs(x));
  for (int t = 0; t < p; ++t) {
    EXPECT(std::fabs(w[t] - lw[k - 1 - t]) <= 1e-13 * norm);
    if (t > 0) EXPECT(w[t] <= w[t - 1]);
    const double* zt = &z[static_cast<std::size_t>(t) * k];
    double res = 0.0;
    for (int a = 0; a < k; ++a) {
      double s = -w[t] * zt[a];
      for (int b = 0; b < k; ++b) s += A[static_cast<std::size_t>(a) * k + b] * zt[b];
      res += s * s;
    }
    EXPECT(std::sqrt(res) <= 1e-11 * norm);
    for (int u = 0; u <= t; ++u) {
      double s = 0.0;
      for (int a = 0; a < k; ++a) s += zt[a] * z[static_cast<std::size_t>(u) * k + a];
      EXPECT(std::fabs(s - (u == t ? 1.0 : 0.0)) <= 1e-11);
    }
  }
}

int main() {
  // the example's float16 reader: every half bit pattern against sign * 2^(e - 15) * (1 + m / 1024) (normal),
  // sign * 2^-14 * m / 1024 (subnormal), inf and NaN
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const int e = static_cast<int>((bits >> 10) & 0x1f), m = static_cast<int>(bits & 0x3ff);
    const double sign = (bits & 0x8000) ? -1.0 : 1.0;
    const float got = npy::half_to_float(static_cast<std::uint16_t>(bits));
    if (e == 31) {
      EXPECT(m == 0 ? (std::isinf(got) && (got < 0) == (sign < 0)) : std::isnan(got));
    } else {
      const double want = e == 0 ? sign * std::ldexp(m / 1024.0, -14) : sign * std::ldexp(1.0 + m / 1024.0, e - 15);
      EXPECT(static_cast<double>(got) == want && std::signbit(got) == (sign < 0));
    }
  }
  // the scratch cache: a block comes back for the next request that fits (smallest first), trim frees all; and
  // the recursion's results do not depend on what its cached blocks held (here: NaN everywhere)
  {
    using namespace diffcut::detail;
    scratch_trim();
    EXPECT(scratch_cached_bytes() == 0);
    std::size_t cap_big = 0, cap_small = 0, cap = 0;
    void* big = scratch_acquire(std::size_t{3} << 20, &cap_big);
    void* small = scratch_acquire(4096, &cap_small);
    EXPECT(cap_big >= (std::size_t{3} << 20) && cap_small >= 4096);
    scratch_release(big, cap_big);
    scratch_release(small, cap_small);
    EXPECT(scratch_cached_bytes() == cap_big + cap_small);
    void* again = scratch_acquire(1000, &cap);
    EXPECT(again == small && cap == cap_small);
    scratch_release(again, cap);
    std::vector<int> regions;
    const int h = 14, w = 17, c = 48;
    const auto f = planted(h, w, c, regions, 5u, 0.35);
    diffcut::Options o;
    o.solver = diffcut::Solver::Dense;
    scratch_trim();
    const auto want = diffcut::segment(f.data(), h, w, c, 0.5, o);
    scratch_trim();
    for (std::size_t bytes : {std::size_t{1} << 16, std::size_t{1} << 20, std::size_t{8} << 20}) {
      ScratchArray<double> poison(bytes / sizeof(double));
      for (std::size_t i = 0; i < poison.size(); ++i) poison[i] = std::nan("");
    }
    EXPECT(scratch_cached_bytes() > 0);
    EXPECT(diffcut::segment(f.data(), h, w, c, 0.5, o) == want);
    scratch_trim();
    EXPECT(scratch_cached_bytes() == 0);
    // run_each: every item once, on the calling thread and helpers (or new threads), each inside a one-kernel-thread
    // scope; the first failing item's exception after all ran; the helpers' caches counted and trimmed from here
    std::vector<int> runs(64, 0), scopes(64, 0);
    run_each(64, 2, [&](std::int64_t i) {
      runs[i] += 1;
      scopes[i] = kernel_threads();
      ScratchArray<char> block(std::size_t{1} << 20);
      block[0] = 1;
    });
    EXPECT(std::count(runs.begin(), runs.end(), 1) == 64 && std::count(scopes.begin(), scopes.end(), 1) == 64);
    EXPECT(scratch_cached_bytes() >= (std::size_t{1} << 20));
    scratch_trim();
    EXPECT(scratch_cached_bytes() == 0);
    std::vector<int> after(8, 0);
    bool thrown = false;
    try {
      run_each(8, 3, [&](std::int64_t i) {
        after[i] = 1;
        if (i == 5 || i == 6) throw Failure(Code::InvalidArgument, "item " + std::to_string(i));
      });
    } catch (const Failure& e) {
      thrown = std::string(e.what()) == "item 5";
    }
    EXPECT(thrown && std::count(after.begin(), after.end(), 1) == 8);
  }
  // the batch's BLAS guard: OpenBLAS single-threaded while any guard lives (nested too), restored after
  if (diffcut::detail::SingleThreadedBlas::available()) {
    using diffcut::detail::SingleThreadedBlas;
    const int before = SingleThreadedBlas::threads();
    EXPECT(before >= 1);
    {
      SingleThreadedBlas outer;
      EXPECT(SingleThreadedBlas::threads() == 1);
      {
        SingleThreadedBlas inner;
        EXPECT(SingleThreadedBlas::threads() == 1);
      }
      EXPECT(SingleThreadedBlas::threads() == 1);
    }
    EXPECT(SingleThreadedBlas::threads() == before);
    std::printf("BLAS thread control found (OpenBLAS threads: %d)\n", before);
  } else {
    std::printf("BLAS thread control not found (not an OpenBLAS): the batch guard is a no-op\n");
  }
  // an exactly disconnected graph (one-hot classes: similarity 1 within, 0 across) has a degenerate Fiedler
  // eigenvalue; the core splits it along the first token's component (eigen.component_split): clean separates
  // every class, official (every row holds a zero) stops after that root split; both solvers alike
  {
    const int h = 9, w = 13, c = 5, classes = 3;
    std::mt19937 rng(11u);
    std::vector<int> cls(h * w);
    for (int i = 0; i < h * w; ++i) cls[i] = i < classes ? i : static_cast<int>(rng() % classes);
    std::shuffle(cls.begin(), cls.end(), rng);
    std::vector<float> f(static_cast<std::size_t>(h) * w * c, 0.0f);
    for (int i = 0; i < h * w; ++i) f[static_cast<std::size_t>(i) * c + cls[i]] = 1.0f;
    for (Compat compat : {Compat::Clean, Compat::Official})
      for (auto solver : {diffcut::detail::Solver::Dense, diffcut::detail::Solver::Auto}) {
        const auto t = tree_of(f, h, w, c, 0.5, compat, solver);
        std::vector<std::int32_t> labels(static_cast<std::size_t>(h) * w);
        t.cut(0.5, labels.data());
        if (compat == Compat::Clean) {
          EXPECT(same_partition(cls, labels));
        } else {
          std::vector<int> first(h * w);
          for (int i = 0; i < h * w; ++i) first[i] = cls[i] == cls[0];
          EXPECT(same_partition(first, labels));
        }
        EXPECT(t.nodes[0].is_split() && t.nodes[0].value == 0.0);
      }
  }
  // pairwise_sum is a sum (integers: exact in any order)
  {
    std::mt19937 rng(1);
    for (int n : {0, 1, 7, 8, 9, 127, 128, 129, 1000, 4099}) {
      std::vector<double> a(n);
      double exact = 0;
      for (double& v : a) {
        v = static_cast<double>(rng() % 1000);
        exact += v;
      }
      EXPECT(diffcut::detail::pairwise_sum(a.data(), n) == exact);
    }
  }
  // the products with float32-stored matrices (matvec.h): float64 products of the widened values (against long
  // double sums: within 1e-13 relative), the lower triangle read only (NaN above it), the same bits with one
  // kernel thread as with several or a ProductTeam (the split into row ranges depends on m alone); the widened
  // pairwise sum is
  // pairwise_sum of the widened copy, bit for bit
  {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (int m : {1, 2, 3, 4, 5, 7, 8, 9, 13, 31, 64, 100, 1023, 2048, 2051, 2999}) {
      std::vector<float> A(static_cast<std::size_t>(m) * m), full(A.size());
      for (int i = 0; i < m; ++i)
        for (int j = 0; j <= i; ++j) {
          const float v = u(rng);
          full[static_cast<std::size_t>(i) * m + j] = full[static_cast<std::size_t>(j) * m + i] = v;
          A[static_cast<std::size_t>(i) * m + j] = v;
          if (j < i) A[static_cast<std::size_t>(j) * m + i] = std::nanf("");
        }
      const int b = std::min(m, diffcut::detail::kMaxBlock);
      std::vector<double> X(static_cast<std::size_t>(b) * m);
      for (double& v : X) v = static_cast<double>(u(rng)) - 0.5;
      std::vector<double> y(m), y1(m), Y(X.size()), Y1(X.size());
      diffcut::detail::symv_lower_f32(A.data(), m, X.data(), y.data());
      diffcut::detail::rows_times_f32(full.data(), m, X.data(), b, Y.data());
      {
        const diffcut::detail::OneKernelThread one;
        EXPECT(diffcut::detail::kernel_threads() == 1);
        diffcut::detail::symv_lower_f32(A.data(), m, X.data(), y1.data());
        diffcut::detail::rows_times_f32(full.data(), m, X.data(), b, Y1.data());
      }
      EXPECT(y == y1 && Y == Y1);
      {  // a team kept for many products (a Krylov solve's): the same bits, product after product
        diffcut::detail::ProductTeam team(m);
        EXPECT(team.threads() >= 1 && (m < 512 || team.threads() == std::min(diffcut::detail::kernel_threads(), 4)));
        for (int round = 0; round < 3; ++round) {
          std::fill(y1.begin(), y1.end(), 0.0);
          std::fill(Y1.begin(), Y1.end(), 0.0);
          diffcut::detail::symv_lower_f32(A.data(), m, X.data(), y1.data(), &team);
          diffcut::detail::rows_times_f32(full.data(), m, X.data(), b, Y1.data(), &team);
          EXPECT(y == y1 && Y == Y1);
        }
      }
      double worst = 0.0;
      for (int k = 0; k < b; ++k)
        for (int i = 0; i < m; ++i) {
          long double exact = 0, scale = 0;
          for (int j = 0; j < m; ++j) {
            const long double t = static_cast<long double>(full[static_cast<std::size_t>(i) * m + j]) *
                                  X[static_cast<std::size_t>(k) * m + j];
            exact += t;
            scale += std::fabs(t);
          }
          worst = std::max(worst, static_cast<double>(
                                      std::fabs(Y[static_cast<std::size_t>(k) * m + i] - exact) / scale));
          if (k == 0) worst = std::max(worst, static_cast<double>(std::fabs(y[i] - exact) / scale));
        }
      EXPECT(worst < 1e-13);
      std::vector<double> wide(full.begin(), full.begin() + m);
      EXPECT(diffcut::detail::pairwise_sum_widened(full.data(), m) == diffcut::detail::pairwise_sum(wide.data(), m));
    }
  }
  // planted regions are found (clean); the official mode differs from it only at the zero-row nodes (the
  // least similar pair, left out below the root), at several grid shapes
  for (auto [h, w] : std::vector<std::pair<int, int>>{{12, 15}, {16, 16}, {9, 20}}) {
    std::vector<int> regions;
    const int c = 64, n = h * w;
    const auto f = planted(h, w, c, regions, 7u + h, 0.35);
    diffcut::Options o;
    o.compat = diffcut::Compat::Clean;
    const auto clean = diffcut::segment(f.data(), h, w, c, 0.5, o);
    EXPECT(same_partition(regions, clean));
    o.compat = diffcut::Compat::Official;
    const auto official = diffcut::segment(f.data(), h, w, c, 0.5, o);
    std::vector<float> W(static_cast<std::size_t>(n) * n);
    EXPECT(diffcut_affinity(f.data(), n, c, 10.0, W.data(), static_cast<std::int64_t>(W.size())) == DIFFCUT_OK);
    std::vector<int> kept_regions;
    std::vector<std::int32_t> kept_labels;
    int dropped = 0;
    for (int i = 0; i < n; ++i) {
      if (std::find(W.begin() + i * n, W.begin() + (i + 1) * n, 0.0f) != W.begin() + (i + 1) * n) {
        ++dropped;
        continue;
      }
      kept_regions.push_back(regions[i]);
      kept_labels.push_back(official[i]);
    }
    EXPECT(dropped >= 2);
    EXPECT(same_partition(kept_regions, kept_labels));
    check_zero_row_flags(f, n, c);
  }
  {  // from 1024 tokens the scaling pass runs on several threads, each flagging zero rows apart
    std::vector<int> regions;
    const int h = 33, w = 34, c = 32;
    check_zero_row_flags(planted(h, w, c, regions, 11u, 0.35), h * w, c);
  }
  // Lanczos's Ritz pairs: the bound dstemr and the dsyevr fallback (dstemr unbound) agree with each other and are
  // eigenpairs of the tridiagonal matrix (residual and the eigenvalue's place among a dense solve's)
  {
    using namespace diffcut::detail;
    std::mt19937 rng(42);
    std::uniform_real_distribution<double> uni(-1.0, 1.0);
    const DstemrFn linked = lapack().dstemr;
    EXPECT(linked != nullptr);
    for (int k : {2, 3, 17, 60}) {
      std::vector<double> alpha(k), beta(k);
      for (double& a : alpha) a = uni(rng);
      for (double& b : beta) b = 0.1 + std::fabs(uni(rng));
      double w1 = 0, w2 = 0, v1 = 0, v2 = 0;
      std::vector<double> z1, z2, y1, y2;
      EXPECT(tridiagonal_top2(alpha.data(), beta.data(), k, w1, w2, z1, z2));
      bind_dstemr(nullptr);
      EXPECT(tridiagonal_top2(alpha.data(), beta.data(), k, v1, v2, y1, y2));
      bind_dstemr(linked);
      EXPECT(w2 < w1 && std::fabs(w1 - v1) < 1e-12 && std::fabs(w2 - v2) < 1e-12);
      for (auto [w, z] : {std::pair<double, const std::vector<double>*>{w1, &z1}, {w2, &z2}}) {
        double res = 0.0, nz = 0.0;
        for (int i = 0; i < k; ++i) {
          double t = alpha[i] * (*z)[i] - w * (*z)[i];
          if (i > 0) t += beta[i - 1] * (*z)[i - 1];
          if (i + 1 < k) t += beta[i] * (*z)[i + 1];
          res += t * t;
          nz += (*z)[i] * (*z)[i];
        }
        EXPECT(std::sqrt(res) < 1e-12 && std::fabs(nz - 1.0) < 1e-12);
      }
      double dot1 = 0.0;
      for (int i = 0; i < k; ++i) dot1 += z1[i] * y1[i];
      EXPECT(std::fabs(std::fabs(dot1) - 1.0) < 1e-10);
      // the two largest of all k eigenvalues (dsyevr on the full matrix)
      std::vector<double> T(static_cast<std::size_t>(k) * k, 0.0), w, z;
      for (int i = 0; i < k; ++i) {
        T[static_cast<std::size_t>(i) * (k + 1)] = alpha[i];
        if (i + 1 < k) T[static_cast<std::size_t>(i) * k + i + 1] = beta[i];
      }
      int found = 0;
      EXPECT(syevr('A', k, T.data(), 1, k, w, z, found) == 0 && found == k);
      EXPECT(std::fabs(w[k - 1] - w1) < 1e-12 && std::fabs(w[k - 2] - w2) < 1e-12);
    }
  }
  // block Krylov's Rayleigh-Ritz eigensolver: random spectra, a tight cluster at the top (a nearly disconnected
  // graph's, gaps 1e-9 .. 1e-6), exactly repeated eigenvalues, a cluster at rounding level, a matrix with zeros in
  // its spectrum; sizes 1 .. 320, p = min(k, 33) and p = k; the zero matrix; a NaN entry is refused
  {
    std::mt19937_64 rng(11);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (int kind = 0; kind < 5; ++kind)
      for (int k : {1, 2, 3, 5, 9, 33, 40, 112, 320}) {
        std::vector<double> w(k);
        for (int i = 0; i < k; ++i) {
          const double u = uniform(rng);
          w[i] = kind == 0   ? 2.0 * u - 1.0
                 : kind == 1 ? (i < 12 ? 1.0 - 1e-9 - 1e-6 * u : 0.8 * u)
                 : kind == 2 ? (i < 6 ? 1.0 : i < 10 ? 0.5 : 0.3 * u)
                 : kind == 3 ? (i < 12 ? 1.0 - 1e-15 * i : 0.8 * u)
                             : (i % 3 == 0 ? 0.0 : 1e-3 * u);
        }
        const std::vector<double> A = with_spectrum(w, rng);
        check_top_eigenpairs(A, k, std::min(k, 33));
        if (k <= 40) check_top_eigenpairs(A, k, k);
      }
    std::vector<double> w, z, zero(16 * 16, 0.0);
    EXPECT(diffcut::detail::top_eigenpairs(zero.data(), 16, 4, w, z) && w[0] == 0.0 && w[3] == 0.0);
    for (int t = 0; t < 4; ++t) {
      double s = 0.0;
      for (int a = 0; a < 16; ++a) s += z[t * 16 + a] * z[t * 16 + a];
      EXPECT(s == 1.0);
    }
    std::vector<double> bad(9, 1.0);
    bad[4] = std::nan("");
    EXPECT(!diffcut::detail::top_eigenpairs(bad.data(), 3, 1, w, z));
    EXPECT(!diffcut::detail::top_eigenpairs(zero.data(), 16, 17, w, z));
  }
  // block Krylov on a clustered spectrum: Lanczos cannot certify (residual / inner gap ~1e-8), the subspace
  // certificate does, and the vector is the dense solve's within 1e-6 (angle); the same for several graphs
  for (auto [parts, seed] : std::vector<std::pair<int, unsigned>>{{4, 0u}, {4, 1u}, {6, 2u}, {3, 3u}}) {
    std::vector<float> A;
    std::vector<double> d, dense, lanczos, block;
    clustered_graph(parts, 240 / parts + 20, 1e-8, seed, A, d);
    const std::int64_t n = static_cast<std::int64_t>(d.size());
    diffcut::detail::dense_u2(A.data(), d, n, dense);
    EXPECT(!diffcut::detail::lanczos_fiedler(A.data(), d, n, {}, lanczos));
    EXPECT(diffcut::detail::block_krylov_fiedler(A.data(), d, n, {}, block));
    EXPECT(block.size() == dense.size() && sin_angle(block, dense) < 1e-6);
    // warm-started from the dense vector (as from a parent's): certified too
    std::vector<double> warm(n);
    for (std::int64_t i = 0; i < n; ++i) warm[i] = dense[i] / std::sqrt(d[i]);
    EXPECT(diffcut::detail::block_krylov_fiedler(A.data(), d, n, warm, block));
    EXPECT(block.size() == dense.size() && sin_angle(block, dense) < 1e-6);
  }
  // the certificate (eigen.subspace_certificate): a cluster of three within 1e-9 is certified as a whole (m = 3),
  // one vector is not; without an outer gap nothing is
  {
    const double theta[] = {0.999999, 0.999998999, 0.999998998, 0.4, 0.3};
    const double r[] = {1e-10, 1e-10, 1e-10, 1e-10, 1e-10};
    int m = 0;
    EXPECT(diffcut::detail::subspace_certificate(theta, r, 5, &m) < 1e-6 && m == 3);
    EXPECT(!(diffcut::detail::subspace_certificate(theta, r, 2, &m) < 1e-6));
    const double theta2[] = {0.9, 0.8999, 0.8998}, r2[] = {1e-9, 1e-9, 0.5};
    EXPECT(!(diffcut::detail::subspace_certificate(theta2, r2, 3, &m) < 1e-6));
  }
  // the certified Lanczos solver (auto, above 192 nodes) gives the dense solver's labels
  for (auto [h, w] : std::vector<std::pair<int, int>>{{16, 16}, {20, 24}}) {
    std::vector<int> regions;
    const auto f = planted(h, w, 32, regions, 11u + w, 0.8);
    diffcut::Options o;
    o.tau_max = 0.8;
    const diffcut::Tree lanczos(f.data(), h, w, 32, o);
    o.solver = diffcut::Solver::Dense;
    const diffcut::Tree dense(f.data(), h, w, 32, o);
    EXPECT(lanczos.split_values().size() >= 3);
    for (double tau : {0.2, 0.5, 0.8}) EXPECT(lanczos.cut(tau) == dense.cut(tau));
  }
  // every cut of a tree equals the tree built at that tau, and the numbering is the official one
  for (unsigned seed : {3u, 4u}) {
    const int h = 14, w = 11, c = 12;
    std::vector<int> regions;
    const auto f = planted(h, w, c, regions, seed, 0.9);  // noisy: many splits
    for (Compat compat : {Compat::Official, Compat::Clean}) {
      const auto full = tree_of(f, h, w, c, 1.0, compat);
      std::vector<std::int32_t> a(h * w), b(h * w);
      const auto values = full.split_values();
      EXPECT(values.size() >= 3);
      std::vector<double> taus{0.05, 0.2, 0.5, 0.8, 1.0};
      for (double v : values) taus.push_back(std::min(1.0, std::nextafter(v, 2.0)));  // just above each split
      for (double tau : taus) {
        const std::int32_t k = full.cut(tau, a.data());
        const auto part = tree_of(f, h, w, c, tau, compat);
        const std::int32_t k2 = part.cut(tau, b.data());
        EXPECT(k == k2 && a == b);
        const auto below = std::count_if(values.begin(), values.end(), [&](double x) { return x < tau; });
        // (the weighted sums are exact in float64 up to ~50 masks)
        if (k <= 40) EXPECT(a == official_numbering(full, tau));
        EXPECT(*std::max_element(a.begin(), a.end()) == k - 1);
        EXPECT(k <= 1 + below);
      }
    }
  }
  // constant features: W is all ones and there is one segment
  {
    const int h = 5, w = 7, c = 9;
    std::vector<float> f(h * w * c);
    for (int i = 0; i < h * w; ++i)
      for (int k = 0; k < c; ++k) f[i * c + k] = 0.1f * static_cast<float>(k + 1);
    std::vector<float> W(h * w * h * w);
    EXPECT(diffcut_affinity(f.data(), h * w, c, 10.0, W.data(), static_cast<std::int64_t>(W.size())) == DIFFCUT_OK);
    EXPECT(std::all_of(W.begin(), W.end(), [](float v) { return v == 1.0f; }));
    std::int32_t k = 0;
    diffcut::Tree t(f.data(), h, w, c);
    const auto labels = t.cut(0.5, &k);
    EXPECT(k == 1 && std::all_of(labels.begin(), labels.end(), [](std::int32_t v) { return v == 0; }));
  }
  // several grids on a thread pool: the trees built one by one
  {
    std::vector<int> regions;
    const auto a = planted(10, 12, 16, regions, 5u, 0.6), b = planted(14, 9, 16, regions, 6u, 0.6);
    const auto trees = diffcut::build_trees({a.data(), b.data(), a.data()}, {10, 14, 10}, {12, 9, 12}, 16,
                                            diffcut::Options(), 2);
    EXPECT(trees.size() == 3);
    EXPECT(trees[0].cut(0.5) == diffcut::Tree(a.data(), 10, 12, 16).cut(0.5));
    EXPECT(trees[1].cut(0.5) == diffcut::Tree(b.data(), 14, 9, 16).cut(0.5));
    EXPECT(trees[2].cut(0.5) == trees[0].cut(0.5));
  }
  // the C++ header: errors as diffcut::Error with the C code
  {
    std::vector<float> f(4 * 4 * 3, std::nanf(""));
    int code = 0;
    try {
      diffcut::Tree t(f.data(), 4, 4, 3);
    } catch (const diffcut::Error& e) {
      code = e.code();
    }
    EXPECT(code == DIFFCUT_ERROR_NON_FINITE);
    std::vector<int> regions;
    const auto g = planted(6, 6, 4, regions, 1u, 0.2);
    diffcut::Options o;
    o.tau_max = 0.3;
    diffcut::Tree t(g.data(), 6, 6, 4, o);
    code = 0;
    try {
      t.cut(0.9);
    } catch (const diffcut::Error& e) {
      code = e.code();
    }
    EXPECT(code == DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT(diffcut::version() == "0.1.0");
    EXPECT(t.shape() == std::make_pair(std::int64_t(6), std::int64_t(6)));
  }
  // refinement: the support-box PAMR against the dense propagation
  {
    const int h = 19, w = 41, k = 9;  // ids 7 and 8 absent
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> img(3 * h * w);
    for (int ch = 0; ch < 3; ++ch)
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) img[(ch * h + y) * w + x] = 0.3f * u(rng) + (x * 3 + y * 5 < 90 ? 0.6f : 0.1f * ch);
    std::vector<std::int32_t> labels(h * w);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) labels[y * w + x] = ((y / 5) * 3 + (x / 12)) % 7;
    for (const std::vector<int>& dil : {std::vector<int>{1, 2, 4, 8}, std::vector<int>{1, 3, 50}}) {
      std::vector<float> aff(8 * dil.size() * h * w);
      diffcut::detail::pamr_affinity(img.data(), h, w, dil, aff.data(), 2);
      for (std::size_t p = 0; p < 8 * dil.size(); p += 5) {  // softmax rows: non-negative, summing to ~1
        EXPECT(aff[p * h * w] >= 0.0f);
      }
      for (int iters : {0, 1, 4}) {
        const std::vector<std::int32_t> ref = dense_pamr(aff, labels, h, w, k, dil, iters);
        for (std::int64_t budget : {std::int64_t{1}, std::int64_t{1} << 25})
          for (int threads : {1, 3}) {
            std::vector<std::int32_t> got(h * w, -1);
            diffcut::detail::pamr_box_argmax(labels.data(), h, w, h, w, k, aff.data(), dil, iters, got.data(),
                                             threads, budget);
            EXPECT(got == ref);
          }
      }
      // resized masks: labels at (7, 13) -> every pixel takes a label present around its bilinear corners
      std::vector<std::int32_t> small(7 * 13), got(h * w);
      for (int i = 0; i < 7 * 13; ++i) small[i] = (i / 13 + i % 13 / 5) % 4;
      diffcut::detail::pamr_box_argmax(small.data(), 7, 13, h, w, 4, aff.data(), dil, 0, got.data(), 2, 1);
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          const int gy = y * 6 / (h - 1), gx = x * 12 / (w - 1);  // the nearest lower corner
          bool near = false;
          for (int a = 0; a <= 1; ++a)
            for (int b = 0; b <= 1; ++b)
              near |= small[std::min(gy + a, 6) * 13 + std::min(gx + b, 12)] == got[y * w + x];
          EXPECT(near);
        }
    }
    // the median: the 5th smallest of the clamped 3x3 window
    std::vector<std::int32_t> med(h * w);
    diffcut::detail::median3x3(labels.data(), h, w, med.data(), 2);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        std::vector<std::int32_t> win;
        for (int a = -1; a <= 1; ++a)
          for (int b = -1; b <= 1; ++b)
            win.push_back(labels[std::min(std::max(y + a, 0), h - 1) * w + std::min(std::max(x + b, 0), w - 1)]);
        std::sort(win.begin(), win.end());
        EXPECT(med[y * w + x] == win[4]);
      }
    // the C++ header: PAMR without iterations nor median is the identity; a bad option is a diffcut::Error
    diffcut::Options o;
    o.pamr_iters = 0;
    o.median = false;
    EXPECT(diffcut::pamr(img.data(), h, w, labels.data(), h, w, k, o) == labels);
    o.pamr_dilations = {};
    int code = 0;
    try {
      diffcut::pamr(img.data(), h, w, labels.data(), h, w, k, o);
    } catch (const diffcut::Error& e) {
      code = e.code();
    }
    EXPECT(code == DIFFCUT_ERROR_INVALID_ARGUMENT);
    // features + image: segment_image equals the tree's cut refined by diffcut::refine
    std::vector<int> regions;
    const std::vector<float> f = planted(8, 10, 6, regions, 11u, 0.3);
    std::vector<float> image(3 * 32 * 40);
    for (int ch = 0; ch < 3; ++ch)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 40; ++x) image[(ch * 32 + y) * 40 + x] = 0.2f * regions[(y / 4) * 10 + x / 4] + 0.05f * ch;
    diffcut::Options so;
    std::int32_t ks = 0, kt = 0;
    const std::vector<std::int32_t> seg =
        diffcut::segment_image(f.data(), 8, 10, 6, image.data(), 32, 40, 0.5, so, &ks);
    so.tau_max = 0.5;
    const std::vector<std::int32_t> grid = diffcut::Tree(f.data(), 8, 10, 6, so).cut(0.5, &kt);
    EXPECT(ks == kt && ks >= 2 && seg.size() == 32u * 40u);
    EXPECT(diffcut::refine(f.data(), 8, 10, 6, grid.data(), kt, image.data(), 32, 40, so) == seg);
    EXPECT(*std::max_element(seg.begin(), seg.end()) < ks);
  }
  if (failures) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("test_core: ok\n");
  return 0;
}
