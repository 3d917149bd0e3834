// Reusable scratch memory for the graph stage's large temporaries (the affinity W of a grid, the subgraphs'
// float32 matrices, the Krylov bases), as diffcut_engine/graph/memory.py keeps them for the numpy path.
//
// A 64 x 64 grid needs a 64 MB W and up to a 64 MB subgraph matrix per image. Fresh memory of that size comes from the kernel
// (glibc maps blocks above 32 MB anew on every allocation), which faults in and zeroes every 4 KB page on first
// touch: a third of the native graph stage's time at 64 x 64. Blocks freed here stay in the calling thread's cache
// for its next image instead, up to a limit (the environment variable DIFFCUT_GRAPH_CACHE_MB, default 1024, read
// once; 0 turns the cache off, as for the numpy path); a fresh block of 2 MB or more asks for transparent huge pages
// (Linux), so even a first touch faults once per 2 MB. The contents of a block are not initialised.
#pragma once

#include <cstddef>
#include <cstdint>

namespace diffcut {
namespace detail {

// A block of at least `bytes` bytes (64-byte aligned) from the calling thread's cache (the smallest block that
// fits) or fresh; *capacity receives its size. Throws std::bad_alloc when memory is exhausted.
void* scratch_acquire(std::size_t bytes, std::size_t* capacity);
// Gives a block of scratch_acquire back to the calling thread's cache (the largest blocks are kept, up to the limit).
void scratch_release(void* block, std::size_t capacity) noexcept;
// Frees the calling thread's cached blocks and those of the core's helper threads (which run batch images, and
// keep their caches between calls).
void scratch_trim() noexcept;
// Bytes of the cached (free) blocks of the calling thread and of the core's helper threads.
std::size_t scratch_cached_bytes() noexcept;
// Makes the calling thread's cache one that scratch_trim on any thread frees (the core's helper threads, at start).
void scratch_mark_shared_thread() noexcept;

// count values of T in a scratch block, returned to the cache when destroyed; move-only. resize() keeps the block
// when it is large enough (contents are not preserved when it grows).
template <class T>
class ScratchArray {
 public:
  ScratchArray() = default;
  explicit ScratchArray(std::size_t count) { resize(count); }
  ~ScratchArray() { reset(); }
  ScratchArray(const ScratchArray&) = delete;
  ScratchArray& operator=(const ScratchArray&) = delete;
  ScratchArray(ScratchArray&& o) noexcept : data_(o.data_), size_(o.size_), capacity_(o.capacity_) {
    o.data_ = nullptr;
    o.size_ = o.capacity_ = 0;
  }
  ScratchArray& operator=(ScratchArray&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = o.data_;
      size_ = o.size_;
      capacity_ = o.capacity_;
      o.data_ = nullptr;
      o.size_ = o.capacity_ = 0;
    }
    return *this;
  }
  void resize(std::size_t count) {
    if (count * sizeof(T) > capacity_) {
      reset();
      data_ = static_cast<T*>(scratch_acquire(count * sizeof(T), &capacity_));
    }
    size_ = count;
  }
  void reset() noexcept {
    if (data_ != nullptr) scratch_release(data_, capacity_);
    data_ = nullptr;
    size_ = capacity_ = 0;
  }
  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  T& operator[](std::size_t i) noexcept { return data_[i]; }
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0, capacity_ = 0;
};

}  // namespace detail
}  // namespace diffcut
