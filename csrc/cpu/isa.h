// Run-time choice of the instruction set of the CPU kernels that have an AVX2+FMA
// build next to their baseline x86-64 one (skinny products, small FFTs, depthwise
// tiles, combine_out's backward rows).
#pragma once

namespace adaptir::cpu {

// True where the AVX2 builds exist (x86-64, GCC) and the CPU has AVX2 and FMA, unless
// the environment variable ADAPTIR_CPU_AVX2 is "0" at the first call, which selects the
// baseline builds (so that they can be tested on a machine with AVX2). Read once per
// process.
bool cpu_has_avx2_fma();

}  // namespace adaptir::cpu
