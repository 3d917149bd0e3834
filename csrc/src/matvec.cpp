// Products with float32-stored affinity matrices in float64 arithmetic (matvec.h).
#include "matvec.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "isa.h"
#include "scratch.h"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

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
// Without a ProductTeam, A x takes the shared helpers from this size on (below, its parts run one after the other on
// the calling thread); the block product (8 vectors) from kSplitMinRows on.
constexpr i64 kSpawnMinRows = 2048;
// How long a helper thread spins for the next call before it sleeps (HelperPool).
constexpr int kSpinMicros = 500;

thread_local int kernel_threads_override = 0;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// body(part) for part in [0, parts): on the shared helpers too where a team with threads is given or `helpers`,
// else on the calling thread.
template <class F>
void run_parts(int parts, bool helpers, ProductTeam* team, F&& body) {
  if (helpers || (team != nullptr && team->threads() > 1)) {
    run_shared(parts, body);  // (the calling thread alone for one part)
    return;
  }
  for (int p = 0; p < parts; ++p) body(p);
}

// The helper threads of run_shared. Parts are claimed one at a time from ticket_ (generation << 32 | next part) by
// the caller and the helpers alike: a helper the system has not woken or scheduled yet leaves its parts to the
// caller instead of holding it up, and a late helper cannot claim a part of a later call (the generation no longer
// matches). After a call a helper spins for kSpinMicros (the products of one solve come 0.02-0.5 ms apart, and a
// sleeping thread takes tens of microseconds to wake, far more on an idle VM core), then sleeps on the condition
// variable. The pool lives as long as the process (never destroyed: no join at exit).
//
// On Linux the helpers are kept off the calling thread's CPU (steer): woken by a caller, a sleeping helper was
// often queued on the caller's own CPU (the wakeup's cache-affine placement) while the other CPU idled; it then
// waited behind the caller and, once running, preempted it for its share (seen with perf sched on a 2-core VM;
// paused calls were slower than one thread alone, benchmarks/RESULTS.md). Before waking them, a caller on another CPU than last time sets the helpers' affinity to the
// process's CPUs less its own (one syscall per helper; none while the caller stays put).
class HelperPool {
 public:
  explicit HelperPool(int helpers) {
#if defined(__unix__) || defined(__APPLE__)
    owner_ = getpid();
#endif
#if defined(__linux__)
    CPU_ZERO(&allowed_);
    steer_ = sched_getaffinity(0, sizeof allowed_, &allowed_) == 0 && CPU_COUNT(&allowed_) > 1;
#endif
    for (int t = 0; t < helpers; ++t) workers_.emplace_back([this, t] { work(t); });
  }

  int helpers() const { return static_cast<int>(workers_.size()); }

  // False where the helpers are held by another call (or this is a forked child): the caller runs the parts. Only
  // the first `max_helpers` helpers take parts of this call (the others go back to waiting).
  bool try_run(int parts, const std::function<void(int)>& body, int max_helpers) {
#if defined(__unix__) || defined(__APPLE__)
    if (getpid() != owner_) return false;  // a forked child: the helpers stayed in the parent
#endif
    if (busy_.exchange(true, std::memory_order_acquire)) return false;
    steer();
    unsigned g;
    {
      std::lock_guard<std::mutex> lock(mu_);
      g = ++generation_;
      job_ = &body;
      takers_.store(max_helpers, std::memory_order_relaxed);
      parts_.store(parts, std::memory_order_relaxed);
      done_.store(0, std::memory_order_relaxed);
      ticket_.store(static_cast<std::uint64_t>(g) << 32, std::memory_order_release);
    }
    wake_.notify_all();
    while (claim_and_run(g)) {
    }
    // parts a helper is finishing (done_ counts every claimed part; the caller's own are done)
    while (done_.load(std::memory_order_acquire) < parts) cpu_relax();
    busy_.store(false, std::memory_order_release);
    return true;
  }

 private:
  // The helpers' affinity: the process's CPUs less the caller's (while busy_ is held: one caller at a time).
  void steer() {
#if defined(__linux__)
    if (!steer_) return;
    const int cpu = sched_getcpu();
    if (cpu < 0 || cpu == steered_from_ || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed_)) return;
    cpu_set_t others = allowed_;
    CPU_CLR(cpu, &others);
    for (std::thread& t : workers_) pthread_setaffinity_np(t.native_handle(), sizeof others, &others);
    steered_from_ = cpu;
#endif
  }

  bool claim_and_run(unsigned generation) {
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

  void work(int index) {
    scratch_mark_shared_thread();  // (batch images run here: any thread's scratch_trim frees this cache)
    unsigned seen = 0;
    while (true) {
      unsigned g = seen;
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
      for (unsigned spins = 1;; ++spins) {
        g = static_cast<unsigned>(ticket_.load(std::memory_order_acquire) >> 32);
        if (g != seen) break;
        if (spins % 64 == 0 && std::chrono::steady_clock::now() >= until) break;
        cpu_relax();
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        g = generation_;
      }
      seen = g;
      if (index < takers_.load(std::memory_order_relaxed))  // (stored before the ticket this helper acquired)
        while (claim_and_run(g)) {
        }
    }
  }

  std::atomic<bool> busy_{false};
  std::mutex mu_;
  std::condition_variable wake_;
  unsigned generation_ = 0;  // (mu_)
  std::atomic<std::uint64_t> ticket_{0};
  std::atomic<int> done_{0};
  std::atomic<int> parts_{0};
  std::atomic<int> takers_{0};  // the helpers that take parts of the current call
  const std::function<void(int)>* job_ = nullptr;
  std::vector<std::thread> workers_;
#if defined(__unix__) || defined(__APPLE__)
  pid_t owner_ = 0;
#endif
#if defined(__linux__)
  cpu_set_t allowed_;     // the process's CPUs when the pool started
  bool steer_ = false;    // more than one of them
  int steered_from_ = -1;  // the CPU the helpers were last kept off (busy_)
#endif
};

HelperPool* helper_pool() {
  static HelperPool* const pool = [] {
    const int hw = static_cast<int>(std::min(kMaxThreads, std::max(1u, std::thread::hardware_concurrency())));
    return hw > 1 ? new HelperPool(hw - 1) : nullptr;  // (kept for the process's life)
  }();
  return pool;
}

}  // namespace

int kernel_threads() {
  if (kernel_threads_override > 0) return kernel_threads_override;
  static const int hw = static_cast<int>(std::min(kMaxThreads, std::max(1u, std::thread::hardware_concurrency())));
  return hw;
}

OneKernelThread::OneKernelThread() : previous_(kernel_threads_override) { kernel_threads_override = 1; }
OneKernelThread::~OneKernelThread() { kernel_threads_override = previous_; }

void run_shared(int parts, const std::function<void(int)>& body) {
  if (parts > 1 && kernel_threads() > 1) {
    HelperPool* pool = helper_pool();
    if (pool != nullptr && pool->try_run(parts, body, pool->helpers())) return;
  }
  for (int p = 0; p < parts; ++p) body(p);
}

void run_each(std::int64_t count, int threads, const std::function<void(std::int64_t)>& body) {
  if (count <= 0) return;
  const std::int64_t t_count = std::max<std::int64_t>(1, std::min<std::int64_t>(threads, count));
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(count));
  auto one = [&](std::int64_t i) {
    const OneKernelThread one_thread;
    try {
      body(i);
    } catch (...) {
      errors[static_cast<std::size_t>(i)] = std::current_exception();
    }
  };
  bool done = false;
  if (t_count > 1 && count <= std::numeric_limits<int>::max()) {
    // the shared helpers where enough of them are free: their threads (and thread-local scratch caches, scratch.h)
    // outlive the call, where new threads started with empty caches and faulted in every block again
    HelperPool* pool = helper_pool();
    if (pool != nullptr && pool->helpers() >= t_count - 1) {
      const std::function<void(int)> part = [&](int i) { one(i); };
      done = pool->try_run(static_cast<int>(count), part, static_cast<int>(t_count - 1));
    }
  }
  if (!done) {
    std::atomic<std::int64_t> next{0};
    auto work = [&] {
      for (std::int64_t i = next++; i < count; i = next++) one(i);
    };
    std::vector<std::thread> pool;
    for (std::int64_t t = 1; t < t_count; ++t) pool.emplace_back(work);
    work();
    for (std::thread& t : pool) t.join();
  }
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

ProductTeam::ProductTeam(std::int64_t m) : threads_(m >= kSplitMinRows ? std::min(kernel_threads(), kParts) : 1) {}

void ProductTeam::run(int parts, const std::function<void(int)>& body) {
  if (threads_ > 1)
    run_shared(parts, body);
  else
    for (int p = 0; p < parts; ++p) body(p);
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
