// Run-time choice of the hot loops' instruction set (refine.cpp, matvec.cpp compile theirs for several): AVX-512
// where the CPU has AVX-512 F/VL/BW/DQ, else AVX2 + FMA, else the baseline. Every variant does the same IEEE
// operations in the same order, so the same floats. The environment can lower the choice (read once; tests
// compare the variants): DIFFCUT_NO_AVX512=1 stops at AVX2, DIFFCUT_NO_AVX2=1 forces the baseline.
#pragma once

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(DIFFCUT_NO_AVX2)
#define DIFFCUT_HAVE_X86_KERNELS 1
#define DIFFCUT_TARGET_AVX2 "avx2,fma"
#define DIFFCUT_TARGET_AVX512 "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512"
// The attributes of a kernels header's functions in its avx2 / avx512 inclusion (DIFFCUT_KERNEL and
// DIFFCUT_KERNEL_INLINE there; empty and `inline` in the baseline one).
#define DIFFCUT_AVX2_KERNEL __attribute__((target(DIFFCUT_TARGET_AVX2)))
#define DIFFCUT_AVX2_KERNEL_INLINE inline __attribute__((target(DIFFCUT_TARGET_AVX2), always_inline))
#define DIFFCUT_AVX512_KERNEL __attribute__((target(DIFFCUT_TARGET_AVX512)))
#define DIFFCUT_AVX512_KERNEL_INLINE inline __attribute__((target(DIFFCUT_TARGET_AVX512), always_inline))
// fn of the kernels header included in the namespaces base, avx2 and avx512 of the calling file, by the CPU.
#define DIFFCUT_DISPATCH(fn, ...) \
  (use_avx512() ? avx512::fn(__VA_ARGS__) : use_avx2() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))

namespace diffcut {
namespace detail {
bool use_avx2();
bool use_avx512();  // implies use_avx2()
}  // namespace detail
}  // namespace diffcut
#else
#define DIFFCUT_DISPATCH(fn, ...) base::fn(__VA_ARGS__)
#endif

// Element-wise loops compiled for several instruction sets by the compiler, picked at load time (GCC's
// target_clones; the same IEEE operations in each: no contraction, no reassociation, so only the vector width
// differs and the floats are the same).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define DIFFCUT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DIFFCUT_CLONES
#endif
