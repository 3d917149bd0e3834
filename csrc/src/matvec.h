// Products with a subgraph's affinity matrix, stored as W's float32 values (m x m, row-major, full storage),
// in float64 arithmetic: what the numpy path computes with BLAS on the same values widened to float64 (a float32
// value widens exactly), from half the bytes. The iterative solvers' products are memory-bound: at 64 x 64 tokens
// a Lanczos step reads 32 MB here against dsymv's 64 MB of float64 triangle.
#pragma once

#include <cstdint>

namespace diffcut {
namespace detail {

// y = A x, A symmetric: only its lower triangle is read. Every product and sum in float64, in an order fixed by
// m alone (eight lanes along a row, rows in groups of four; from 2048 rows on, four row ranges summed apart and
// then in order), so the result does not depend on the CPU's vector width or the thread count. Large products
// run their row ranges on up to four threads (one inside a OneKernelThread scope).

void symv_lower_f32(const float* A, std::int64_t m, const double* x, double* y);

// Y (b x m, row-major) = X (b x m) A for the same A, b <= kMaxBlock (block Krylov's products): full rows of A
// read once for all b vectors, each Y[j][i] the dot product of row i with X's row j in eight lanes; row ranges on up
// to four threads (the result does not depend on them).
constexpr int kMaxBlock = 8;
void rows_times_f32(const float* A, std::int64_t m, const double* X, int b, double* Y);

// The threads a product may use on the calling thread: the hardware's (at most 4), or 1 in a OneKernelThread scope.
int kernel_threads();

// While an instance lives, the products of the calling thread run on that thread alone (the batch functions'
// image threads: each image on its own core).
class OneKernelThread {
 public:
  OneKernelThread();
  ~OneKernelThread();
  OneKernelThread(const OneKernelThread&) = delete;
  OneKernelThread& operator=(const OneKernelThread&) = delete;

 private:
  int previous_;
};

// numpy's pairwise summation of a float32 row widened to float64 (pairwise_sum's order on the widened values).
double pairwise_sum_widened(const float* a, std::int64_t n);

}  // namespace detail
}  // namespace diffcut
