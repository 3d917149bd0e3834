// Block Krylov's Rayleigh-Ritz eigensolver (csrc/src/small_eigen.h) against LAPACK's dsyevr on all k pairs, which
// the core called before: the top 33 eigenpairs of k x k symmetric matrices with the spectra block Krylov meets
// (a tight cluster at the top, as on a nearly disconnected graph; random), best of 5 x 10 calls each, the
// eigenvalue difference and residual relative to ||T||. Build and run against the scipy-openblas32 wheel:
//
//   OB=$(python -c "import scipy_openblas32, os; print(os.path.dirname(scipy_openblas32.__file__))")/lib
//   g++ -O3 -ffp-contract=off -std=c++17 -Icsrc/src -Icsrc/tests -o /tmp/bench_small_eigen benchmarks/bench_small_eigen.cpp \
//       csrc/src/small_eigen.cpp -L$OB -lscipy_openblas -Wl,-rpath,$OB && /tmp/bench_small_eigen
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "small_eigen.h"
#include "spectrum.h"

extern "C" {
void scipy_dsyevr_(char*, char*, char*, int*, double*, int*, double*, double*, int*, int*, double*, int*, double*,
                   double*, int*, int*, double*, int*, int*, int*, int*);
void scipy_openblas_set_num_threads(int);
}

namespace {

// The top p pairs by dsyevr on all k (descending; z rows), as block_krylov.cpp did.
void dsyevr_top(const std::vector<double>& a, int k, int p, std::vector<double>& w, std::vector<double>& z) {
  std::vector<double> A = a, W(k), Z(static_cast<std::size_t>(k) * k), wq(1);
  std::vector<int> sup(2 * k), iwq(1);
  char jobz = 'V', range = 'A', uplo = 'L';
  int il = 1, iu = k, m = 0, info = 0, lwork = -1, liwork = -1;
  double vl = 0, vu = 0, tol = 0;
  scipy_dsyevr_(&jobz, &range, &uplo, &k, A.data(), &k, &vl, &vu, &il, &iu, &tol, &m, W.data(), Z.data(), &k,
                sup.data(), wq.data(), &lwork, iwq.data(), &liwork, &info);
  lwork = static_cast<int>(wq[0]);
  liwork = iwq[0];
  std::vector<double> work(lwork);
  std::vector<int> iwork(liwork);
  scipy_dsyevr_(&jobz, &range, &uplo, &k, A.data(), &k, &vl, &vu, &il, &iu, &tol, &m, W.data(), Z.data(), &k,
                sup.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  w.resize(p);
  z.resize(static_cast<std::size_t>(p) * k);
  for (int i = 0; i < p; ++i) {
    w[i] = W[k - 1 - i];
    std::copy(Z.begin() + static_cast<std::size_t>(k - 1 - i) * k, Z.begin() + static_cast<std::size_t>(k - i) * k,
              z.begin() + static_cast<std::size_t>(i) * k);
  }
}

// Clustered: 12 eigenvalues within 1e-6 below 1, the rest in [0, 0.8]; else uniform in [-1, 1].
std::vector<double> matrix(int k, bool clustered, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uniform;
  std::vector<double> w(k);
  for (int i = 0; i < k; ++i)
    w[i] = clustered ? (i < 12 ? 1.0 - 1e-9 - 1e-6 * uniform(rng) : 0.8 * uniform(rng)) : 2.0 * uniform(rng) - 1.0;
  return with_spectrum(w, rng);
}

template <class F>
double best_ms(F&& f) {
  double best = 1e300;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 10);
  }
  return best * 1e3;
}

}  // namespace

int main() {
  scipy_openblas_set_num_threads(1);  // as inside build_tree
  std::mt19937_64 rng(1);
  std::printf("spectrum   k  p   dsyevr ms  top_eigenpairs ms  ratio  max |dw|/||T||  max residual/||T||\n");
  for (bool clustered : {true, false})
    for (int k : {64, 112, 160, 240, 320}) {
      const int p = std::min(k, 33);
      const std::vector<double> A = matrix(k, clustered, rng);
      std::vector<double> w0, z0, w, z;
      dsyevr_top(A, k, p, w0, z0);
      if (!diffcut::detail::top_eigenpairs(A.data(), k, p, w, z)) {
        std::printf("%-9s %4d: top_eigenpairs did not converge (the core falls back to dsyevr)\n",
                    clustered ? "clustered" : "random", k);
        continue;
      }
      double norm = 0, dw = 0, res = 0;
      for (double x : A) norm = std::max(norm, std::fabs(x));
      for (int t = 0; t < p; ++t) {
        dw = std::max(dw, std::fabs(w[t] - w0[t]) / norm);
        double s2 = 0;
        for (int a = 0; a < k; ++a) {
          double s = -w[t] * z[static_cast<std::size_t>(t) * k + a];
          for (int b = 0; b < k; ++b) s += A[static_cast<std::size_t>(a) * k + b] * z[static_cast<std::size_t>(t) * k + b];
          s2 += s * s;
        }
        res = std::max(res, std::sqrt(s2) / norm);
      }
      const double t_lapack = best_ms([&] { dsyevr_top(A, k, p, w0, z0); });
      const double t_own = best_ms([&] { diffcut::detail::top_eigenpairs(A.data(), k, p, w, z); });
      std::printf("%-9s %4d %2d  %10.3f  %17.3f  %4.1fx  %13.1e  %18.1e\n", clustered ? "clustered" : "random", k, p,
                  t_lapack, t_own, t_lapack / t_own, dw, res);
    }
  return 0;
}
