// Run-time selection between the AVX2+FMA and the baseline builds of
// combine_rows_impl.h.
#include "combine_rows.h"

#include "isa.h"

#include <cstdint>

#pragma GCC diagnostic ignored "-Wpsabi"

#ifdef ADAPTIR_AVX2_BUILDS
ADAPTIR_AVX2_BEGIN
namespace adaptir::cpu::combine_rows::avx2 {
#include "combine_rows_impl.h"
}  // namespace adaptir::cpu::combine_rows::avx2
ADAPTIR_AVX2_END
#endif

namespace adaptir::cpu::combine_rows::base {
#include "combine_rows_impl.h"
}  // namespace adaptir::cpu::combine_rows::base

namespace adaptir::cpu::combine_rows {

void backward_channel(const float* gv, const float* l, const float* g, const float* sg, float s,
                      float c, int64_t n, float* gl, float* gg, double* acc, double* sums) {
#ifdef ADAPTIR_AVX2_BUILDS
  if (cpu_has_avx2_fma()) return avx2::backward_channel_impl(gv, l, g, sg, s, c, n, gl, gg, acc, sums);
#endif
  base::backward_channel_impl(gv, l, g, sg, s, c, n, gl, gg, acc, sums);
}

}  // namespace adaptir::cpu::combine_rows
