// Run-time choice of the instruction set of the CPU kernels that have an AVX2+FMA
// build next to their baseline x86-64 one (skinny products, small FFTs, depthwise
// tiles, combine_out's backward rows), and of the AVX-512 builds of the skinny products
// and the small FFTs.
#pragma once

// Defined where the AVX2+FMA builds are compiled at all (GCC on x86-64: they rely on its
// target pragmas); elsewhere only the baseline builds exist. A file compiles its AVX2
// build of an impl header between ADAPTIR_AVX2_BEGIN and ADAPTIR_AVX2_END.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ADAPTIR_AVX2_BUILDS 1
#define ADAPTIR_AVX2_BEGIN                                                   \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")           \
      _Pragma("GCC optimize(\"fp-contract=fast\")")
#define ADAPTIR_AVX2_END _Pragma("GCC pop_options")
// The same for the AVX-512 builds (AVX-512F and VL, with AVX2 and FMA).
#define ADAPTIR_AVX512_BEGIN                                                           \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,avx512f,avx512vl\")") \
      _Pragma("GCC optimize(\"fp-contract=fast\")")
#define ADAPTIR_AVX512_END _Pragma("GCC pop_options")
#endif

namespace adaptir::cpu {

// True where the AVX2 builds exist (x86-64, GCC) and the CPU has AVX2 and FMA, unless
// the environment variable ADAPTIR_CPU_AVX2 is "0" at the first call, which selects the
// baseline builds (so that they can be tested on a machine with AVX2). Read once per
// process.
bool cpu_has_avx2_fma();

// True where the AVX2 builds are in use (above), the CPU has AVX-512F and AVX-512VL, and
// the environment variable ADAPTIR_CPU_AVX512 is not "0" at the first call ("0" keeps
// the AVX2 builds, so that both can be tested on one machine): the AVX-512 builds can
// run. Read once per process.
bool cpu_can_avx512();

// True where the AVX-512 builds can run (above) and are chosen: by default everywhere
// but on AMD family 19h (Zen 4), whose 512-bit operations run as two 256-bit halves and
// where the AVX2 builds were as fast or faster; ADAPTIR_CPU_AVX512=1 chooses them there
// too. Read once per process.
bool cpu_has_avx512();

// "avx512" (the skinny products and the small FFTs in AVX-512, the other vector kernels
// in AVX2), "avx2" or "baseline": what this process runs.
const char* cpu_isa_name();

}  // namespace adaptir::cpu
