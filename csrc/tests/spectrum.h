// Test matrices with a chosen spectrum, for the eigensolver's ctest block (test_core.cpp) and its benchmark
// (benchmarks/bench_small_eigen.cpp).
#pragma once

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

// A symmetric k x k matrix Q diag(w) Q^T (row-major) with a random orthogonal Q.
inline std::vector<double> with_spectrum(const std::vector<double>& w, std::mt19937_64& rng) {
  const int k = static_cast<int>(w.size());
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> Q(static_cast<std::size_t>(k) * k), A(static_cast<std::size_t>(k) * k, 0.0);
  for (double& x : Q) x = normal(rng);
  for (int i = 0; i < k; ++i) {
    double* q = &Q[static_cast<std::size_t>(i) * k];
    for (int pass = 0; pass < 2; ++pass)
      for (int j = 0; j < i; ++j) {
        const double* r = &Q[static_cast<std::size_t>(j) * k];
        double s = 0.0;
        for (int t = 0; t < k; ++t) s += r[t] * q[t];
        for (int t = 0; t < k; ++t) q[t] -= s * r[t];
      }
    double s = 0.0;
    for (int t = 0; t < k; ++t) s += q[t] * q[t];
    for (int t = 0; t < k; ++t) q[t] /= std::sqrt(s);
  }
  for (int a = 0; a < k; ++a)
    for (int b = 0; b <= a; ++b) {
      double s = 0.0;
      for (int i = 0; i < k; ++i) s += Q[static_cast<std::size_t>(i) * k + a] * w[i] * Q[static_cast<std::size_t>(i) * k + b];
      A[static_cast<std::size_t>(a) * k + b] = A[static_cast<std::size_t>(b) * k + a] = s;
    }
  return A;
}
