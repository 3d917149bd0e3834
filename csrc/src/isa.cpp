// The run-time instruction-set choice of isa.h.
#include "isa.h"

#ifdef DIFFCUT_HAVE_X86_KERNELS
#include <cstdlib>
#include <string>

namespace diffcut {
namespace detail {

namespace {

bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && std::string(v) != "0";
}

}  // namespace

bool use_avx2() {
  static const bool yes = [] {
    if (env_set("DIFFCUT_NO_AVX2")) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}

bool use_avx512() {
  static const bool yes = [] {
    if (!use_avx2() || env_set("DIFFCUT_NO_AVX512")) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  }();
  return yes;
}

}  // namespace detail
}  // namespace diffcut
#endif
