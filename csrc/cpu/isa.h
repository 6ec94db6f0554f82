// Run-time choice of the instruction set of the CPU kernels that have an AVX2+FMA
// build next to their baseline x86-64 one (skinny products, small FFTs, depthwise
// tiles, combine_out's backward rows).
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
#endif

namespace adaptir::cpu {

// True where the AVX2 builds exist (x86-64, GCC) and the CPU has AVX2 and FMA, unless
// the environment variable ADAPTIR_CPU_AVX2 is "0" at the first call, which selects the
// baseline builds (so that they can be tested on a machine with AVX2). Read once per
// process.
bool cpu_has_avx2_fma();

}  // namespace adaptir::cpu
