#include "isa.h"

#include <cstdlib>
#include <cstring>

namespace adaptir::cpu {

bool cpu_has_avx2_fma() {
#ifdef ADAPTIR_AVX2_BUILDS
  static const bool yes = [] {
    const char* env = std::getenv("ADAPTIR_CPU_AVX2");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#ifdef ADAPTIR_AVX2_BUILDS
  static const bool yes = [] {
    if (!cpu_has_avx2_fma()) return false;
    const char* env = std::getenv("ADAPTIR_CPU_AVX512");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  }();
  return yes;
#else
  return false;
#endif
}

const char* cpu_isa_name() {
  if (cpu_has_avx512()) return "avx512";
  return cpu_has_avx2_fma() ? "avx2" : "baseline";
}

}  // namespace adaptir::cpu
