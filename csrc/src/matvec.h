// Products with a subgraph's affinity matrix, stored as W's float32 values (m x m, row-major, full storage),
// in float64 arithmetic: what the numpy path computes with BLAS on the same values widened to float64 (a float32
// value widens exactly), from half the bytes. The iterative solvers' products are memory-bound: at 64 x 64 tokens
// a Lanczos step reads 32 MB here against dsymv's 64 MB of float64 triangle.
#pragma once

#include <cstdint>
#include <functional>

namespace diffcut {
namespace detail {

// body(p) for p in [0, parts) on the calling thread and the process's helper threads (kernel_threads() - 1 of
// them at most 3, started on first use and kept, asleep between uses after a short spin). The parts are claimed one
// at a time, so a helper that wakes late (its core asleep or busy: on a VM a core idle for a while can take
// milliseconds to wake) leaves its share to the caller, and the call waits only for parts a helper has claimed: it
// never takes longer than the parts on the calling thread alone. Inside a OneKernelThread scope, with one part,
// while another call holds the helpers (concurrent or nested callers) or in a forked child, the parts run on the
// calling thread, in order.
void run_shared(int parts, const std::function<void(int)>& body);

// body(i) for i in [0, count) on min(threads, count) threads, the calling thread one of them, each i on one thread
// inside a OneKernelThread scope, handed out in order to the first free thread (the batch functions: one image per
// thread). The other threads are the shared helpers where enough of them are free (they outlive the call, and so
// do their thread-local scratch caches), else new threads. Every i runs; then the exception of the first failing i
// is rethrown.
void run_each(std::int64_t count, int threads, const std::function<void(std::int64_t)>& body);

// The threads of one solve's products: the shared helpers (run_shared) from 512 rows on, else the calling thread.
class ProductTeam {
 public:
  explicit ProductTeam(std::int64_t m);
  int threads() const { return threads_; }
  // body(p) for p in [0, parts) (run_shared where threads() > 1); back when all ran.
  void run(int parts, const std::function<void(int)>& body);

 private:
  const int threads_;
};

// y = A x, A symmetric: only its lower triangle is read. Every product and sum in float64, in an order fixed by
// m alone (eight lanes along a row, rows in groups of four; from 512 rows on, four row ranges summed apart and
// then in order), so the result does not depend on the CPU's vector width or the thread count. The row ranges run
// on the team's threads where given, else from 2048 rows on on up to four new threads (one inside a
// OneKernelThread scope).

void symv_lower_f32(const float* A, std::int64_t m, const double* x, double* y, ProductTeam* team = nullptr);

// Y (b x m, row-major) = X (b x m) A for the same A, b <= kMaxBlock (block Krylov's products): full rows of A
// read once for all b vectors, each Y[j][i] the dot product of row i with X's row j in eight lanes; row ranges on up
// to four threads (the result does not depend on them).
constexpr int kMaxBlock = 8;
void rows_times_f32(const float* A, std::int64_t m, const double* X, int b, double* Y,
                    ProductTeam* team = nullptr);

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


}  // namespace detail
}  // namespace diffcut
