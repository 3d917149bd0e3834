// The per-thread scratch cache of scratch.h.
#include "scratch.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace diffcut {
namespace detail {

namespace {

constexpr std::size_t kAlign = 64;
constexpr std::size_t kHuge = std::size_t{2} << 20;  // a transparent huge page

std::size_t cache_limit() {
  static const std::size_t limit = [] {
    const char* v = std::getenv("DIFFCUT_GRAPH_CACHE_MB");
    double mb = 1024.0;
    if (v != nullptr && v[0] != '\0') {
      char* end = nullptr;
      const double parsed = std::strtod(v, &end);
      if (end != v && parsed >= 0.0) mb = parsed;
    }
    return static_cast<std::size_t>(mb * 1048576.0);
  }();
  return limit;
}

void* allocate(std::size_t bytes) {
  const std::size_t align = bytes >= kHuge ? kHuge : kAlign;
  const std::size_t size = (bytes + align - 1) / align * align;  // aligned_alloc wants a multiple of the alignment
#if defined(_MSC_VER)
  void* p = _aligned_malloc(size, align);
#else
  void* p = std::aligned_alloc(align, size);
#endif
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align == kHuge) madvise(p, size, MADV_HUGEPAGE);  // advice only: ignored where THP is off
#endif
  return p;
}

void deallocate(void* p) noexcept {
#if defined(_MSC_VER)
  _aligned_free(p);
#else
  std::free(p);
#endif
}

struct Block {
  void* p;
  std::size_t bytes;
};

struct Cache;

// The caches of the core's helper threads (scratch_mark_shared_thread), which any thread's scratch_trim frees; never
// destroyed (helper threads outlive static destructors).
struct Shared {
  std::mutex mu;
  std::vector<Cache*> caches;
};

Shared& shared() {
  static Shared* const s = new Shared;
  return *s;
}

struct Cache {
  std::mutex mu;  // taken where the cache is shared (another thread may trim it)
  bool shared = false;
  std::vector<Block> free;
  std::size_t bytes = 0;

  void trim() noexcept {
    for (const Block& b : free) deallocate(b.p);
    free.clear();
    bytes = 0;
  }
  ~Cache() {
    if (shared) {
      std::lock_guard<std::mutex> lock(diffcut::detail::shared().mu);
      auto& all = diffcut::detail::shared().caches;
      all.erase(std::remove(all.begin(), all.end(), this), all.end());
    }
    trim();
  }
};

Cache& cache() {
  thread_local Cache c;
  return c;
}

// The calling thread's cache, locked where it is shared.
class Locked {
 public:
  Locked() : c_(cache()) {
    if (c_.shared) c_.mu.lock();
  }
  ~Locked() {
    if (c_.shared) c_.mu.unlock();
  }
  Cache* operator->() { return &c_; }
  Cache& operator*() { return c_; }

 private:
  Cache& c_;
};

}  // namespace

void* scratch_acquire(std::size_t bytes, std::size_t* capacity) {
  bytes = std::max<std::size_t>(bytes, 1);
  {
    Locked locked;
    Cache& c = *locked;
    std::size_t best = c.free.size();
    for (std::size_t i = 0; i < c.free.size(); ++i)
      if (c.free[i].bytes >= bytes && (best == c.free.size() || c.free[i].bytes < c.free[best].bytes)) best = i;
    if (best < c.free.size()) {
      const Block b = c.free[best];
      c.free.erase(c.free.begin() + static_cast<std::ptrdiff_t>(best));
      c.bytes -= b.bytes;
      *capacity = b.bytes;
      return b.p;
    }
  }
  void* p = allocate(bytes);
  *capacity = bytes;
  return p;
}

void scratch_release(void* block, std::size_t capacity) noexcept {
  if (block == nullptr) return;
  const std::size_t limit = cache_limit();
  if (capacity > limit) {
    deallocate(block);
    return;
  }
  Locked locked;
  Cache& c = *locked;
  try {
    c.free.push_back({block, capacity});
  } catch (...) {
    deallocate(block);
    return;
  }
  c.bytes += capacity;
  // over the limit: free the smallest blocks first (the large ones are the expensive ones to fault in)
  while (c.bytes > limit) {
    auto smallest = std::min_element(c.free.begin(), c.free.end(),
                                     [](const Block& a, const Block& b) { return a.bytes < b.bytes; });
    c.bytes -= smallest->bytes;
    deallocate(smallest->p);
    c.free.erase(smallest);
  }
}

void scratch_trim() noexcept {
  {
    Locked locked;
    locked->trim();
  }
  Shared& all = shared();
  std::lock_guard<std::mutex> lock(all.mu);
  for (Cache* c : all.caches) {
    std::lock_guard<std::mutex> hold(c->mu);
    c->trim();
  }
}

std::size_t scratch_cached_bytes() noexcept {
  std::size_t total;
  {
    Locked locked;
    total = locked->shared ? 0 : locked->bytes;  // (a shared cache is counted below)
  }
  Shared& all = shared();
  std::lock_guard<std::mutex> lock(all.mu);
  for (Cache* c : all.caches) {
    std::lock_guard<std::mutex> hold(c->mu);
    total += c->bytes;
  }
  return total;
}

void scratch_mark_shared_thread() noexcept {
  Cache& c = cache();
  if (c.shared) return;
  Shared& all = shared();
  std::lock_guard<std::mutex> lock(all.mu);
  try {
    all.caches.push_back(&c);
    c.shared = true;
  } catch (...) {  // (out of memory: the cache stays this thread's own, freed when it ends)
  }
}

}  // namespace detail
}  // namespace diffcut
