// Products with float32-stored affinity matrices in float64 arithmetic (matvec.h).
#include "matvec.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#ifdef DIFFCUT_HAVE_X86_KERNELS
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's own _mm512_cvtps_pd (its undefined source)
#endif
#endif

namespace diffcut {
namespace detail {

namespace {

using i64 = std::int64_t;

// The hot loops (matvec_kernels.h) for the baseline ISA, AVX2 and AVX-512 (isa.h picks one by the CPU).
#define DIFFCUT_LANES 0
#define DIFFCUT_KERNEL
#define DIFFCUT_KERNEL_INLINE inline
namespace base {
#include "matvec_kernels.h"
}  // namespace base
#undef DIFFCUT_LANES
#undef DIFFCUT_KERNEL
#undef DIFFCUT_KERNEL_INLINE
#ifdef DIFFCUT_HAVE_X86_KERNELS
#define DIFFCUT_LANES 256
#define DIFFCUT_KERNEL DIFFCUT_AVX2_KERNEL
#define DIFFCUT_KERNEL_INLINE DIFFCUT_AVX2_KERNEL_INLINE
namespace avx2 {
#include "matvec_kernels.h"
}  // namespace avx2
#undef DIFFCUT_LANES
#undef DIFFCUT_KERNEL
#undef DIFFCUT_KERNEL_INLINE
#define DIFFCUT_LANES 512
#define DIFFCUT_KERNEL DIFFCUT_AVX512_KERNEL
#define DIFFCUT_KERNEL_INLINE DIFFCUT_AVX512_KERNEL_INLINE
namespace avx512 {
#include "matvec_kernels.h"
}  // namespace avx512
#undef DIFFCUT_LANES
#undef DIFFCUT_KERNEL
#undef DIFFCUT_KERNEL_INLINE
#endif

// From this size a product is split into kParts row ranges (of equal triangle area for A x), each summed into its
// own vector, the vectors then added in order: the split depends on m alone, the threads only run the parts.
constexpr i64 kSplitMinRows = 512;
constexpr int kParts = 4;
constexpr unsigned kMaxThreads = 4;
// Without a ProductTeam, A x starts threads from this size on (below, starting them costs about what they save, and
// its parts run one after the other on the calling thread); the block product (8 vectors) from kSplitMinRows on.
constexpr i64 kSpawnMinRows = 2048;

thread_local int kernel_threads_override = 0;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// body(part) for part in [0, parts): on the team's threads where given, else on up to kernel_threads() new
// threads where spawn, else on the calling thread.
template <class F>
void run_parts(int parts, bool spawn, ProductTeam* team, F&& body) {
  if (team != nullptr && team->threads() > 1 && parts > 1) {
    team->run(parts, body);
    return;
  }
  const int threads = spawn ? std::min(kernel_threads(), parts) : 1;
  if (threads <= 1) {
    for (int p = 0; p < parts; ++p) body(p);
    return;
  }
  std::atomic<int> next{0};  // parts claimed one at a time (a thread that starts late takes fewer)
  auto work = [&] {
    for (int p = next++; p < parts; p = next++) body(p);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
}

}  // namespace

int kernel_threads() {
  if (kernel_threads_override > 0) return kernel_threads_override;
  static const int hw = static_cast<int>(std::min(kMaxThreads, std::max(1u, std::thread::hardware_concurrency())));
  return hw;
}

OneKernelThread::OneKernelThread() : previous_(kernel_threads_override) { kernel_threads_override = 1; }
OneKernelThread::~OneKernelThread() { kernel_threads_override = previous_; }

ProductTeam::ProductTeam(std::int64_t m) : threads_(m >= kSplitMinRows ? std::min(kernel_threads(), kParts) : 1) {
  for (int t = 1; t < threads_; ++t) workers_.emplace_back([this] { work(); });
}

ProductTeam::~ProductTeam() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& w : workers_) w.join();
}

// Parts are claimed one at a time from ticket_ (generation << 32 | next part) by the caller and the workers alike:
// a worker the system has not woken or scheduled yet leaves its parts to the caller instead of holding it up, and a
// late worker cannot claim a part of a later product (the generation no longer matches).
bool ProductTeam::claim_and_run(unsigned generation) {
  std::uint64_t v = ticket_.load(std::memory_order_acquire);
  while (true) {
    if (static_cast<unsigned>(v >> 32) != generation ||
        static_cast<int>(v & 0xffffffffu) >= parts_.load(std::memory_order_relaxed))
      return false;
    if (ticket_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
  }
  (*job_)(static_cast<int>(v & 0xffffffffu));
  done_.fetch_add(1, std::memory_order_release);
  return true;
}

void ProductTeam::work() {
  unsigned seen = 0;
  while (true) {
    unsigned g;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });  // asleep between products: no spinning
      if (stop_) return;
      g = seen = generation_;
    }
    while (claim_and_run(g)) {
    }
  }
}

void ProductTeam::run(int parts, const std::function<void(int)>& body) {
  unsigned g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    g = ++generation_;
    job_ = &body;
    parts_.store(parts, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    ticket_.store(static_cast<std::uint64_t>(g) << 32, std::memory_order_release);
  }
  wake_.notify_all();
  while (claim_and_run(g)) {
  }
  while (done_.load(std::memory_order_acquire) < parts) cpu_relax();  // parts a worker is finishing
}

void symv_lower_f32(const float* A, std::int64_t m, const double* x, double* y, ProductTeam* team) {
  if (m < kSplitMinRows) {
    DIFFCUT_DISPATCH(symv_rows, A, m, 0, m, x, y);
    return;
  }
  i64 bounds[kParts + 1];
  bounds[0] = 0;
  bounds[kParts] = m;
  for (int p = 1; p < kParts; ++p) {
    const i64 b = static_cast<i64>(static_cast<double>(m) * std::sqrt(static_cast<double>(p) / kParts));
    bounds[p] = std::min(m, std::max(bounds[p - 1], b - b % 4));
  }
  std::vector<double> partial(static_cast<std::size_t>(kParts - 1) * m);
  auto part = [&](int p) {
    double* out = p == 0 ? y : partial.data() + static_cast<std::size_t>(p - 1) * m;
    DIFFCUT_DISPATCH(symv_rows, A, m, bounds[p], bounds[p + 1], x, out);
  };
  run_parts(kParts, m >= kSpawnMinRows, team, part);
  // y = ((part 0 + part 1) + part 2) + part 3, part p defined on [0, bounds[p + 1]) (0 + q is q exactly)
  std::fill(y + bounds[1], y + m, 0.0);
  for (int p = 1; p < kParts; ++p) {
    const double* q = partial.data() + static_cast<std::size_t>(p - 1) * m;
    for (i64 j = 0; j < bounds[p + 1]; ++j) y[j] += q[j];
  }
}

void rows_times_f32(const float* A, std::int64_t m, const double* X, int b, double* Y, ProductTeam* team) {
  const int parts = m >= kSplitMinRows ? kParts : 1;
  run_parts(parts, true, team, [&](int p) {
    DIFFCUT_DISPATCH(rows_times, A, m, X, b, m * p / parts, m * (p + 1) / parts, Y);
  });
}

}  // namespace detail
}  // namespace diffcut
