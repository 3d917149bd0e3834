// Shared pieces of the Krylov solvers (lanczos.cpp, block_krylov.cpp): the constants they take from
// diffcut_engine.graph.eigen, the dot product they both use, and their deterministic start vectors.
#pragma once

#include <cmath>
#include <cstdint>

namespace diffcut {
namespace detail {
namespace krylov {

constexpr double kAngleTol = 1e-6;  // LANCZOS_ANGLE_TOL: the certificate's bound on sin angle(x1, u2)
constexpr double kNoise = 1e-2;     // LANCZOS_NOISE: the random share of a warm-started start vector

// Four-lane dot product (the lanes summed pairwise at the end).
inline double dot(const double* a, const double* b, std::int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += a[i + j] * b[i + j];
  for (; i < n; ++i) acc[0] += a[i] * b[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Deterministic standard normals (splitmix64 + Box-Muller); each solver seeds its own stream (seed, salt).
class Normals {
 public:
  Normals(std::uint64_t seed, std::uint64_t salt) : state_(seed * 0x9E3779B97F4A7C15ull + salt) {}
  void fill(double* out, std::int64_t n) {
    for (std::int64_t i = 0; i < n; i += 2) {
      const double a = ((next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
      const double b = ((next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
      const double r = std::sqrt(-2.0 * std::log(a));
      out[i] = r * std::cos(6.283185307179586 * b);
      if (i + 1 < n) out[i + 1] = r * std::sin(6.283185307179586 * b);
    }
  }

 private:
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::uint64_t state_;
};

}  // namespace krylov
}  // namespace detail
}  // namespace diffcut
