#include "isa.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

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

namespace {

// AMD family 19h (Zen 3 and Zen 4): where it has AVX-512 (Zen 4), each 512-bit operation
// runs as two 256-bit halves, so 16-float vectors bring no more flops per cycle than
// 8-float ones. On such a CPU (a Zen 4 EPYC, benchmarks/RESULTS.md) the module with the
// AVX2 products took 0.96-1.0x the time it took with the AVX-512 ones (medians over 40
// alternating pairs of runs, per shape and column).
bool splits_512_bit_ops() {
#if defined(__x86_64__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  const bool amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "AuthenticAMD"
  if (!amd || !__get_cpuid(1, &a, &b, &c, &d)) return false;
  unsigned family = (a >> 8) & 0xfu;
  if (family == 0xfu) family += (a >> 20) & 0xffu;
  return family == 0x19u;
#else
  return false;
#endif
}

}  // namespace

bool cpu_can_avx512() {
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

bool cpu_has_avx512() {
  static const bool yes = [] {
    if (!cpu_can_avx512()) return false;
    const char* env = std::getenv("ADAPTIR_CPU_AVX512");
    if (env != nullptr && std::strcmp(env, "1") == 0) return true;
    return !splits_512_bit_ops();
  }();
  return yes;
}

const char* cpu_isa_name() {
  if (cpu_has_avx512()) return "avx512";
  return cpu_has_avx2_fma() ? "avx2" : "baseline";
}

}  // namespace adaptir::cpu
