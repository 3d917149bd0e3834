// Run-time choice of the hot loops' instruction set (refine.cpp, matvec.cpp compile theirs for several): AVX-512
// where the CPU has AVX-512 F/VL/BW/DQ, else AVX2 + FMA, else the baseline. Every variant does the same IEEE
// operations in the same order, so the same floats. The environment can lower the choice (read once; tests
// compare the variants): DIFFCUT_NO_AVX512=1 stops at AVX2, DIFFCUT_NO_AVX2=1 forces the baseline.
#pragma once

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(DIFFCUT_NO_AVX2)
#define DIFFCUT_HAVE_X86_KERNELS 1
#define DIFFCUT_TARGET_AVX2 "avx2,fma"
#define DIFFCUT_TARGET_AVX512 "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512"

namespace diffcut {
namespace detail {
bool use_avx2();
bool use_avx512();  // implies use_avx2()
}  // namespace detail
}  // namespace diffcut
#endif
