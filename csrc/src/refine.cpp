// Refinement: grid labels -> labels at the image's size, as diffcut_engine.refine computes them on the CPU.
//
//   concept_assign: the concepts (masked means of the grid features, refine.cluster_centroids), their K score maps
//     on the grid, bilinearly upsampled (align_corners=False, torch's index and weight arithmetic), argmax
//     (first maximum; ids without a grid cell never win) -- refine.concept_assign;
//   pamr_affinity / pamr_box_argmax: PAMR's affinities and propagation, the support-box path of
//     diffcut_engine.kernels.pamr_cpu (box_argmax), with the same float32 operations in the same order (tap by
//     tap, dilation-major), so the labels are the numba fast path's, which are the torch reference's;
//   median3x3: the 3x3 median with clamped borders (refine.median3x3).
//
// Compiled with -ffp-contract=off: no multiply-add is fused unless written as std::fma (only where torch's own
// CPU kernel fuses it, in the bilinear upsampling of the scores).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define DIFFCUT_HAVE_MXCSR 1
#endif

#include "core.h"
#include "isa.h"

namespace diffcut {
namespace detail {

namespace {

using i64 = std::int64_t;

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// body(lo, hi) over [0, n) in blocks of `block`, handed out dynamically to `threads` threads; the first
// exception is rethrown after all threads joined.
template <class F>
void parallel_blocks(i64 n, i64 block, int threads, F&& body) {
  if (n <= 0) return;
  const i64 blocks = (n + block - 1) / block;
  const int t_count = static_cast<int>(std::min<i64>(resolve_threads(threads), blocks));
  if (t_count <= 1) {
    body(i64{0}, n);
    return;
  }
  std::atomic<i64> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&] {
    try {
      for (i64 b = next++; b < blocks && !failed; b = next++) body(b * block, std::min(n, (b + 1) * block));
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(t_count - 1);
  for (int t = 1; t < t_count; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

inline i64 clamp(i64 v, i64 lo, i64 hi) { return v < lo ? lo : (v > hi ? hi : v); }

struct Box {
  i64 r0 = 0, r1 = 0, c0 = 0, c1 = 0;
  bool empty_rows() const { return r1 <= r0; }
  i64 area() const { return (r1 - r0) * (c1 - c0); }
};

// For its scope, the calling thread's subnormal float results are flushed to zero and subnormal inputs read as zero
// (MXCSR's FTZ and DAZ on x86-64; elsewhere a no-op, IEEE arithmetic). Used for PAMR's propagation steps only:
// there the masks decay to subnormal values (below 1.2e-38) around every label's front, each such result costing
// a ~100-cycle microcode assist on x86 CPUs (20-40 % of the demo preset's time; benchmarks/RESULTS.md). What it
// changes: a value the reference would hold as a subnormal is 0 here, so the masks are the reference's lower
// bounds within 1.2e-38 per operation; such a difference is absorbed exactly by any sum with a term above
// ~1e-31, while every pixel's largest mask is at least 1 / K (the masks of a pixel sum to 1), so the labels are
// the reference's unless two masks tie to the last bit and a flushed difference climbs ~90 binary orders to reach
// them -- a far smaller perturbation than the 1-ulp difference of the C library's expf against torch's in the
// affinities, which the labels already absorb (tests/test_native_refine.py compares every pixel with torch).
// The environment variable DIFFCUT_NO_FLUSH_SUBNORMALS=1 keeps IEEE arithmetic (read once; tests and
// benchmarks/bench_subnormals.py compare both).
class FlushSubnormals {
 public:
#ifdef DIFFCUT_HAVE_MXCSR
  FlushSubnormals() : saved_(_mm_getcsr()) {
    if (enabled()) _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
  }
  ~FlushSubnormals() { _mm_setcsr(saved_); }
#else
  FlushSubnormals() = default;
#endif
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

#ifdef DIFFCUT_HAVE_MXCSR
 private:
  static bool enabled() {
    static const bool yes = [] {
      const char* off = std::getenv("DIFFCUT_NO_FLUSH_SUBNORMALS");
      return off == nullptr || off[0] == '\0' || std::string(off) == "0";
    }();
    return yes;
  }
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  unsigned saved_;
#endif
};

// The hot loops (refine_kernels.h) for the baseline ISA, and for AVX2 + FMA and AVX-512 where the compiler has them
// (isa.h picks one by the CPU).
#define DIFFCUT_KERNEL
#define DIFFCUT_KERNEL_INLINE inline
namespace base {
#include "refine_kernels.h"
}  // namespace base
#undef DIFFCUT_KERNEL
#undef DIFFCUT_KERNEL_INLINE
#ifdef DIFFCUT_HAVE_X86_KERNELS
#define DIFFCUT_KERNEL DIFFCUT_AVX2_KERNEL
#define DIFFCUT_KERNEL_INLINE DIFFCUT_AVX2_KERNEL_INLINE
namespace avx2 {
#include "refine_kernels.h"
}  // namespace avx2
#undef DIFFCUT_KERNEL
#undef DIFFCUT_KERNEL_INLINE
#define DIFFCUT_KERNEL DIFFCUT_AVX512_KERNEL
#define DIFFCUT_KERNEL_INLINE DIFFCUT_AVX512_KERNEL_INLINE
namespace avx512 {
#include "refine_kernels.h"
}  // namespace avx512
#undef DIFFCUT_KERNEL
#undef DIFFCUT_KERNEL_INLINE
#endif

}  // namespace

void check_labels(const std::int32_t* labels, i64 count, std::int32_t k, const char* what) {
  std::int32_t lo = 0, hi = 0;
  for (i64 i = 0; i < count; ++i) {
    lo = std::min(lo, labels[i]);
    hi = std::max(hi, labels[i]);
  }
  if (lo < 0) throw Failure(Code::InvalidArgument, std::string(what) + " must be >= 0, got " + std::to_string(lo));
  if (hi >= k)
    throw Failure(Code::InvalidArgument, std::string(what) + " must be < num_segments=" + std::to_string(k) +
                                             ", got " + std::to_string(hi));
}

void check_pamr_options(const RefineOptions& o) {
  // the bounds of diffcut_engine.config (PAMR_MAX_ITERS, PAMR_MAX_DILATION)
  if (o.iters < 0 || o.iters > 10000)
    throw Failure(Code::InvalidArgument, "iters must be in [0, 10000], got " + std::to_string(o.iters));
  if (o.dilations.empty()) throw Failure(Code::InvalidArgument, "dilations must not be empty");
  for (int d : o.dilations)
    if (d < 1 || d > 32768)
      throw Failure(Code::InvalidArgument, "dilations must be in [1, 32768], got " + std::to_string(d));
  if (o.num_threads < 0) throw Failure(Code::InvalidArgument, "num_threads must be >= 0");
  if (o.budget < 1) throw Failure(Code::InvalidArgument, "budget must be >= 1");
  if ((o.work_height == 0) != (o.work_width == 0) || o.work_height < 0 || o.work_width < 0 ||
      o.work_height > 32768 || o.work_width > 32768)
    throw Failure(Code::InvalidArgument, "the working size must be 0 x 0 (the image's size) or two sizes in "
                                         "[1, 32768], got " + std::to_string(o.work_height) + " x " +
                                         std::to_string(o.work_width));
}

// ------------------------------------------------------------------------------------------------------------
// Concept assignment
// ------------------------------------------------------------------------------------------------------------

namespace {

// Two-tap linear interpolation along one axis: output i reads sources i0[i] and i1[i] with weights w0[i] and w1[i].
// Two rules fill it: linear_axis (align_corners=False, for images and score maps) and corner_axis
// (align_corners=True, the official PAMR's mask resize).
struct Axis {
  std::vector<i64> i0, i1;
  std::vector<float> w0, w1;
};

// One axis of F.interpolate(mode="bilinear", align_corners=False): torch's CPU index and weight arithmetic.
// torch's AVX2/AVX512 kernels (x86-64 builds) contract the source index scale * (i + 0.5) - 0.5 into a fused
// multiply-add; std::fma gives that rounding on every platform.
Axis linear_axis(i64 n_in, i64 n_out) {
  Axis a;
  a.i0.resize(n_out);
  a.i1.resize(n_out);
  a.w0.resize(n_out);
  a.w1.resize(n_out);
  const float scale = static_cast<float>(n_in) / static_cast<float>(n_out);
  for (i64 i = 0; i < n_out; ++i) {
    if (n_in == n_out) {
      a.i0[i] = a.i1[i] = i;
      a.w0[i] = 1.0f;
      a.w1[i] = 0.0f;
      continue;
    }
    float src = std::fma(scale, static_cast<float>(i) + 0.5f, -0.5f);
    if (src < 0.0f) src = 0.0f;
    const i64 i0 = std::min(static_cast<i64>(std::floor(src)), n_in - 1);
    const float l1 = std::min(std::max(src - static_cast<float>(i0), 0.0f), 1.0f);
    a.i0[i] = i0;
    a.i1[i] = i0 + (i0 < n_in - 1 ? 1 : 0);
    a.w1[i] = l1;
    a.w0[i] = 1.0f - l1;
  }
  return a;
}

// The x pass of torch's separable bilinear form: each of the `rows` source rows (width w) interpolated to out_w
// columns, t[x] = fma(s[x0], wx0, s[x1] * wx1).
void interpolate_rows(const float* src, i64 rows, i64 w, const Axis& ax, i64 out_w, float* dst, int threads) {
  parallel_blocks(rows, 8, threads, [&](i64 lo, i64 hi) {
    for (i64 r = lo; r < hi; ++r) {
      const float* s = src + r * w;
      float* t = dst + r * out_w;
      for (i64 x = 0; x < out_w; ++x) t[x] = std::fma(s[ax.i0[x]], ax.w0[x], s[ax.i1[x]] * ax.w1[x]);
    }
  });
}

}  // namespace

void concept_assign(const float* features, i64 h, i64 w, i64 c, const std::int32_t* grid, std::int32_t k,
                    i64 out_h, i64 out_w, std::int32_t* out, int threads) {
  const i64 n = h * w;
  // 1. Concepts: sum / (count + 1e-8) in float32 (the official MaskPooling); sums accumulated in float64 and
  //    rounded once (torch's GEMM has its own blocking order: the two agree to float32 rounding).
  std::vector<double> sums(static_cast<std::size_t>(k) * c, 0.0);
  std::vector<i64> counts(k, 0);
  for (i64 i = 0; i < n; ++i) {
    const std::int32_t lb = grid[i];
    ++counts[lb];
    double* s = sums.data() + static_cast<i64>(lb) * c;
    const float* f = features + i * c;
    for (i64 ch = 0; ch < c; ++ch) s[ch] += f[ch];
  }
  std::vector<float> centroids(static_cast<std::size_t>(k) * c);
  for (std::int32_t j = 0; j < k; ++j) {
    const float den = static_cast<float>(counts[j]) + 1e-8f;
    for (i64 ch = 0; ch < c; ++ch)
      centroids[j * c + ch] = static_cast<float>(sums[j * c + ch]) / den;
  }
  // 2. The K score maps on the grid, (K, h, w): dot products in float64, rounded once.
  std::vector<float> scores(static_cast<std::size_t>(k) * n);
  parallel_blocks(n, 256, threads, [&](i64 lo, i64 hi) {
    for (i64 i = lo; i < hi; ++i) {
      const float* f = features + i * c;
      for (std::int32_t j = 0; j < k; ++j) {
        const float* q = centroids.data() + j * c;
        double acc = 0.0;
        for (i64 ch = 0; ch < c; ++ch) acc += static_cast<double>(f[ch]) * static_cast<double>(q[ch]);
        scores[j * n + i] = static_cast<float>(acc);
      }
    }
  });
  // 3. Bilinear upsampling of the scores, separably as torch's kernel evaluates it:
  //    out = fma(t(y0), wy0, t(y1) * wy1) with t(y) = fma(s(y, x0), wx0, s(y, x1) * wx1) (the fused form of
  //    torch's AVX2/AVX512 CPU kernel at output widths of ~100 and more); then the argmax over K, the first
  //    maximum winning, ids without a grid cell left out.
  const Axis ay = linear_axis(h, out_h), ax = linear_axis(w, out_w);
  std::vector<float> rows(static_cast<std::size_t>(k) * h * out_w);  // (K, h, out_w): t for every grid row
  interpolate_rows(scores.data(), static_cast<i64>(k) * h, w, ax, out_w, rows.data(), threads);
  std::vector<std::int32_t> present;
  for (std::int32_t j = 0; j < k; ++j)
    if (counts[j] > 0) present.push_back(j);
  parallel_blocks(out_h, 8, threads, [&](i64 lo, i64 hi) {
    std::vector<float> best(out_w);
    for (i64 y = lo; y < hi; ++y)
      DIFFCUT_DISPATCH(assign_row, rows.data(), h, out_w, present, ay.i0[y], ay.i1[y], ay.w0[y], ay.w1[y],
                       best.data(), out + y * out_w);
  });
}

// ------------------------------------------------------------------------------------------------------------
// PAMR
// ------------------------------------------------------------------------------------------------------------

std::vector<Tap> pamr_offsets(const std::vector<int>& dilations) {
  static const int ring[8][2] = {{-1, -1}, {-1, 0}, {-1, 1}, {0, -1}, {0, 1}, {1, -1}, {1, 0}, {1, 1}};
  std::vector<Tap> out;
  for (int d : dilations)
    for (const auto& r : ring) out.push_back({static_cast<i64>(r[0]) * d, static_cast<i64>(r[1]) * d});
  return out;
}

void pamr_affinity(const float* img, i64 h, i64 w, const std::vector<int>& dilations, float* out, int threads) {
  const std::vector<Tap> offs = pamr_offsets(dilations);
  const i64 p_total = static_cast<i64>(offs.size());
  const i64 nd = static_cast<i64>(dilations.size());
  parallel_blocks(h, 4, threads, [&](i64 lo, i64 hi) {
    std::vector<float> sh(w), mean(3 * w), den(3 * w), logit(p_total * w), tot(w), sq(w), mx(w);
    for (i64 y = lo; y < hi; ++y)
      DIFFCUT_DISPATCH(affinity_row, img, y, h, w, offs, nd, out, sh, mean, den, logit, tot, sq, mx);
  });
}

namespace {

// One axis of F.interpolate(mode="bilinear", align_corners=True), as refine._bilinear_corners computes it:
// src = float32(i) * float32((n_in - 1) / (n_out - 1)).
Axis corner_axis(i64 n_in, i64 n_out) {
  Axis a;
  const float scale = n_out > 1 ? static_cast<float>(static_cast<double>(n_in - 1) / static_cast<double>(n_out - 1))
                                : 0.0f;
  for (i64 i = 0; i < n_out; ++i) {
    const float src = static_cast<float>(i) * scale;
    const i64 i0 = std::min(static_cast<i64>(src), n_in - 1);
    const i64 i1 = std::min(i0 + 1, n_in - 1);
    const float l1 = src - static_cast<float>(i0);
    a.i0.push_back(i0);
    a.i1.push_back(i1);
    a.w0.push_back(1.0f - l1);
    a.w1.push_back(l1);
  }
  return a;
}

}  // namespace

void pamr_box_argmax(const std::int32_t* labels, i64 lh, i64 lw, i64 h, i64 w, std::int32_t k, const float* aff,
                     const std::vector<int>& dilations, int iters, std::int32_t* out, int threads, i64 budget) {
  const std::vector<Tap> offs = pamr_offsets(dilations);
  const i64 hw = h * w;
  const bool resized = lh != h || lw != w;
  // bounding boxes of the labels at their own size
  std::vector<Box> lbox(k);
  {
    std::vector<i64> r0(k, -1), r1(k, -1), c0(k, lw), c1(k, -1);
    for (i64 y = 0; y < lh; ++y)
      for (i64 x = 0; x < lw; ++x) {
        const std::int32_t lb = labels[y * lw + x];
        if (r0[lb] < 0) r0[lb] = y;
        r1[lb] = y;
        c0[lb] = std::min(c0[lb], x);
        c1[lb] = std::max(c1[lb], x);
      }
    for (std::int32_t j = 0; j < k; ++j)
      if (r0[j] >= 0) lbox[j] = Box{r0[j], r1[j] + 1, c0[j], c1[j] + 1};
  }
  Axis cy, cx;
  std::vector<Box> box0 = lbox;
  if (resized) {
    cy = corner_axis(lh, h);
    cx = corner_axis(lw, w);
    for (std::int32_t j = 0; j < k; ++j) {
      box0[j] = Box{};
      const Box& b = lbox[j];
      if (b.empty_rows()) continue;
      i64 ra = -1, rb = -1, ca = -1, cb = -1;
      for (i64 y = 0; y < h; ++y)
        if (cy.i0[y] <= b.r1 - 1 && cy.i1[y] >= b.r0) {
          if (ra < 0) ra = y;
          rb = y;
        }
      for (i64 x = 0; x < w; ++x)
        if (cx.i0[x] <= b.c1 - 1 && cx.i1[x] >= b.c0) {
          if (ca < 0) ca = x;
          cb = x;
        }
      if (ra >= 0 && ca >= 0) box0[j] = Box{ra, rb + 1, ca, cb + 1};
    }
  }
  i64 dmax = 0;
  for (const Tap& t : offs) dmax = std::max({dmax, std::abs(t.dy), std::abs(t.dx)});
  auto grow = [&](const Box& b, i64 r) {
    if (b.empty_rows()) return Box{};
    return Box{std::max(b.r0 - r, i64{0}), std::min(b.r1 + r, h), std::max(b.c0 - r, i64{0}), std::min(b.c1 + r, w)};
  };
  // the box computed at step t: the support bound, columns widened to multiples of 32 within the image
  auto step_box = [&](const Box& b, i64 t) {
    if (b.empty_rows()) return Box{};
    Box g = grow(b, t * dmax);
    g.c0 = g.c0 / 32 * 32;
    g.c1 = std::min((g.c1 + 31) / 32 * 32, w);
    return g;
  };
  std::vector<std::int32_t> present;
  for (std::int32_t j = 0; j < k; ++j)
    if (box0[j].r1 > box0[j].r0) present.push_back(j);
  std::vector<Box> sbox_all(k);
  for (std::int32_t j = 0; j < k; ++j) sbox_all[j] = iters ? grow(step_box(box0[j], iters), dmax) : box0[j];

  std::vector<float> best_val(static_cast<std::size_t>(hw), 0.0f);  // label 0's value where its box does not reach
  std::fill(out, out + hw, 0);
  std::vector<float> a, b;
  std::size_t start = 0;
  while (start < present.size()) {
    std::size_t stop = start;
    i64 used = 0;
    while (stop < present.size() && (stop == start || used + sbox_all[present[stop]].area() <= budget)) {
      used += sbox_all[present[stop]].area();
      ++stop;
    }
    const i64 n = static_cast<i64>(stop - start);
    std::vector<std::int32_t> ids(present.begin() + start, present.begin() + stop);
    std::vector<Box> sbox(n);
    std::vector<i64> off(n);
    for (i64 j = 0, o = 0; j < n; ++j) {
      sbox[j] = sbox_all[ids[j]];
      off[j] = o;
      o += sbox[j].area();
    }
    a.assign(static_cast<std::size_t>(used), 0.0f);
    // initial masks on the storage boxes (refine.resize_masks_init's arithmetic)
    parallel_blocks(n, 1, threads, [&](i64 lo, i64 hi) {
      for (i64 j = lo; j < hi; ++j) {
        const std::int32_t lb = ids[j];
        const Box& s = sbox[j];
        const i64 sw = s.c1 - s.c0;
        for (i64 y = s.r0; y < s.r1; ++y) {
          float* dst = a.data() + off[j] + (y - s.r0) * sw;
          if (resized) {
            const std::int32_t* la = labels + cy.i0[y] * lw;
            const std::int32_t* lb1 = labels + cy.i1[y] * lw;
            const float wy0 = cy.w0[y], wy1 = cy.w1[y];
            for (i64 x = s.c0; x < s.c1; ++x) {
              const float i0 = la[cx.i0[x]] == lb ? 1.0f : 0.0f;
              const float i1 = la[cx.i1[x]] == lb ? 1.0f : 0.0f;
              const float i2 = lb1[cx.i0[x]] == lb ? 1.0f : 0.0f;
              const float i3 = lb1[cx.i1[x]] == lb ? 1.0f : 0.0f;
              dst[x - s.c0] = wy0 * (cx.w0[x] * i0 + cx.w1[x] * i1) + wy1 * (cx.w0[x] * i2 + cx.w1[x] * i3);
            }
          } else {
            const std::int32_t* row = labels + y * lw;
            for (i64 x = s.c0; x < s.c1; ++x) dst[x - s.c0] = row[x] == lb ? 1.0f : 0.0f;
          }
        }
      }
    });
    if (iters) {
      b.assign(static_cast<std::size_t>(used), 0.0f);
      std::vector<Box> bt(n);
      for (int t = 1; t <= iters; ++t) {
        i64 total = 0;
        for (i64 j = 0; j < n; ++j) {
          bt[j] = step_box(box0[ids[j]], t);
          total += bt[j].area();
        }
        // loop order (no effect on the floats): label-major once a row's accumulators outgrow L1
        const bool label_major = total > 4096 * h;
        const float* src = a.data();
        float* dst = b.data();
        parallel_blocks(h, 2, threads, [&](i64 lo, i64 hi) {
          const FlushSubnormals flush;
          std::vector<i64> act, aoff;
          for (i64 y = lo; y < hi; ++y)
            DIFFCUT_DISPATCH(box_step_row, y, src, dst, off, sbox, bt, aff, offs, h, w, label_major, act, aoff);
        });
        std::swap(a, b);
      }
    }
    // running argmax over labels in increasing id order (strict >: the first maximum wins, as torch.argmax)
    parallel_blocks(h, 8, threads, [&](i64 lo, i64 hi) {
      for (i64 y = lo; y < hi; ++y) {
        float* bv = best_val.data() + y * w;
        std::int32_t* bl = out + y * w;
        for (i64 j = 0; j < n; ++j) {
          const Box& s = sbox[j];
          if (y < s.r0 || y >= s.r1) continue;
          const float* v = a.data() + off[j] + (y - s.r0) * (s.c1 - s.c0);
          const std::int32_t lb = ids[j];
          for (i64 x = s.c0; x < s.c1; ++x)
            if (v[x - s.c0] > bv[x]) {
              bv[x] = v[x - s.c0];
              bl[x] = lb;
            }
        }
      }
    });
    start = stop;
  }
}

void median3x3(const std::int32_t* labels, i64 h, i64 w, std::int32_t* out, int threads) {
  parallel_blocks(h, 16, threads, [&](i64 lo, i64 hi) {
    for (i64 y = lo; y < hi; ++y) {
      const std::int32_t* rows[3] = {labels + clamp(y - 1, 0, h - 1) * w, labels + y * w,
                                     labels + clamp(y + 1, 0, h - 1) * w};
      for (i64 x = 0; x < w; ++x) {
        const i64 xs[3] = {clamp(x - 1, 0, w - 1), x, clamp(x + 1, 0, w - 1)};
        std::int32_t v[9];
        int m = 0;
        bool same = true;
        const std::int32_t centre = rows[1][x];
        for (int r = 0; r < 3; ++r)
          for (int q = 0; q < 3; ++q) {
            v[m] = rows[r][xs[q]];
            same &= v[m] == centre;
            ++m;
          }
        if (same) {
          out[y * w + x] = centre;
          continue;
        }
        std::nth_element(v, v + 4, v + 9);  // the 5th smallest of the 9 window values
        out[y * w + x] = v[4];
      }
    }
  });
}

// refine_at's joint_upsample sigma (pamr_cpu.joint_upsample's default).
constexpr float kJointSigma = 0.1f;

void resize_bilinear(const float* src, i64 channels, i64 h, i64 w, i64 out_h, i64 out_w, float* dst, int threads) {
  // images.resize: F.interpolate(mode="bilinear", align_corners=False, antialias=False) with torch's CPU
  // arithmetic (concept assignment's separable fused form): t(y) = fma(s(y, x0), wx0, s(y, x1) * wx1) along x for
  // the source rows, then out = fma(t(y0), wy0, t(y1) * wy1).
  if (h == out_h && w == out_w) {
    std::copy(src, src + channels * h * w, dst);
    return;
  }
  const Axis ay = linear_axis(h, out_h), ax = linear_axis(w, out_w);
  std::vector<float> rows(static_cast<std::size_t>(channels * h * out_w));
  interpolate_rows(src, channels * h, w, ax, out_w, rows.data(), threads);
  parallel_blocks(channels * out_h, 8, threads, [&](i64 lo, i64 hi) {
    for (i64 r = lo; r < hi; ++r) {
      const i64 c = r / out_h, y = r % out_h;
      const float* t0 = rows.data() + (c * h + ay.i0[y]) * out_w;
      const float* t1 = rows.data() + (c * h + ay.i1[y]) * out_w;
      const float wy0 = ay.w0[y], wy1 = ay.w1[y];
      float* o = dst + r * out_w;
      for (i64 x = 0; x < out_w; ++x) o[x] = std::fma(t0[x], wy0, t1[x] * wy1);
    }
  });
}

void joint_upsample(const std::int32_t* labels, i64 hs, i64 ws, const float* small_img, const float* big_img, i64 hb,
                    i64 wb, float sigma, std::int32_t* out, int threads) {
  // pamr_cpu.joint_upsample's arithmetic: positions in float64, spatial and colour weights in float32 (no
  // contraction), expf, the weights of a label summed in the order its 4 x 4 neighbours are visited; the largest
  // total wins, the smaller label on a tie; where the 2 x 2 nearest low-resolution labels agree, that label.
  const double sy = static_cast<double>(hs) / static_cast<double>(hb);
  const double sx = static_cast<double>(ws) / static_cast<double>(wb);
  const float inv = 1.0f / (2.0f * sigma * sigma);
  const i64 plane_s = hs * ws, plane_b = hb * wb;
  parallel_blocks(hb, 8, threads, [&](i64 lo, i64 hi) {
    std::int32_t labs[16];
    float wts[16];
    for (i64 y = lo; y < hi; ++y) {
      const double cy = (static_cast<double>(y) + 0.5) * sy - 0.5;
      const i64 y0 = static_cast<i64>(std::floor(cy));
      const float cyf = static_cast<float>(cy);
      for (i64 x = 0; x < wb; ++x) {
        const double cx = (static_cast<double>(x) + 0.5) * sx - 0.5;
        const i64 x0 = static_cast<i64>(std::floor(cx));
        const i64 ya = clamp(y0, 0, hs - 1), yb = clamp(y0 + 1, 0, hs - 1);
        const i64 xa = clamp(x0, 0, ws - 1), xb = clamp(x0 + 1, 0, ws - 1);
        const std::int32_t l0 = labels[ya * ws + xa];
        if (labels[ya * ws + xb] == l0 && labels[yb * ws + xa] == l0 && labels[yb * ws + xb] == l0) {
          out[y * wb + x] = l0;
          continue;
        }
        const float cxf = static_cast<float>(cx);
        int n = 0;
        for (int j = -1; j < 3; ++j) {
          const i64 yy = clamp(y0 + j, 0, hs - 1);
          const float wy = std::max(0.0f, 2.0f - std::fabs(static_cast<float>(y0 + j) - cyf));
          for (int i = -1; i < 3; ++i) {
            const i64 xx = clamp(x0 + i, 0, ws - 1);
            const float wx = std::max(0.0f, 2.0f - std::fabs(static_cast<float>(x0 + i) - cxf));
            float d2 = 0.0f;
            for (int c = 0; c < 3; ++c) {
              const float d = big_img[c * plane_b + y * wb + x] - small_img[c * plane_s + yy * ws + xx];
              const float dd = d * d;
              d2 = d2 + dd;
            }
            const float wxy = wy * wx;
            const float e = std::exp(-d2 * inv);
            const float wt = wxy * e;
            const std::int32_t lb = labels[yy * ws + xx];
            int q = 0;
            while (q < n && labs[q] != lb) ++q;
            if (q < n) {
              wts[q] = wts[q] + wt;
            } else {
              labs[n] = lb;
              wts[n] = wt;
              ++n;
            }
          }
        }
        std::int32_t best = labs[0];
        float bw = wts[0];
        for (int q = 1; q < n; ++q)
          if (wts[q] > bw || (wts[q] == bw && labs[q] < best)) {
            bw = wts[q];
            best = labs[q];
          }
        out[y * wb + x] = best;
      }
    }
  });
}

void refine_labels(const float* features, i64 h, i64 w, i64 c, const std::int32_t* grid, std::int32_t k,
                   const float* image, i64 out_h, i64 out_w, const RefineOptions& o, std::int32_t* out) {
  concept_assign(features, h, w, c, grid, k, out_h, out_w, out, o.num_threads);
  if (k <= 1) return;  // one segment: the engine returns the concept labels unrefined
  const i64 wh = o.work_height > 0 ? o.work_height : out_h, ww = o.work_width > 0 ? o.work_width : out_w;
  if (wh == out_h && ww == out_w) {
    pamr_labels(image, out_h, out_w, out, out_h, out_w, k, o, out);
    return;
  }
  // refine_at(view=image, labels, work_size): the image at the working size, PAMR there (the masks resized from
  // the labels' size as the official PAMR does), the median, then back to the image's size edge-aware
  std::vector<float> rgb(static_cast<std::size_t>(3 * wh * ww));
  resize_bilinear(image, 3, out_h, out_w, wh, ww, rgb.data(), o.num_threads);
  std::vector<std::int32_t> small(static_cast<std::size_t>(wh * ww));
  pamr_labels(rgb.data(), wh, ww, out, out_h, out_w, k, o, small.data());
  joint_upsample(small.data(), wh, ww, rgb.data(), image, out_h, out_w, kJointSigma, out, o.num_threads);
}

void pamr_labels(const float* image, i64 h, i64 w, const std::int32_t* labels, i64 lh, i64 lw, std::int32_t k,
                 const RefineOptions& o, std::int32_t* out) {
  const i64 hw = h * w;
  std::vector<std::int32_t> tmp(static_cast<std::size_t>(hw));
  if (o.iters > 0 || lh != h || lw != w) {
    std::vector<float> aff;
    if (o.iters > 0) {
      aff.resize(static_cast<std::size_t>(8 * o.dilations.size()) * hw);
      pamr_affinity(image, h, w, o.dilations, aff.data(), o.num_threads);
    }
    pamr_box_argmax(labels, lh, lw, h, w, k, aff.data(), o.dilations, o.iters, tmp.data(), o.num_threads,
                    o.budget);
  } else {
    std::copy(labels, labels + hw, tmp.begin());
  }
  if (o.median)
    median3x3(tmp.data(), h, w, out, o.num_threads);
  else
    std::copy(tmp.begin(), tmp.end(), out);
}

}  // namespace detail
}  // namespace diffcut
