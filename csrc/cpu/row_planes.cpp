// Run-time selection between the AVX2 and the baseline builds of row_planes_impl.h.
#include "row_planes.h"

#include "isa.h"

#include <cstdint>

#pragma GCC diagnostic ignored "-Wpsabi"

#ifdef ADAPTIR_AVX2_BUILDS
ADAPTIR_AVX2_BEGIN
namespace adaptir::cpu::row_planes::avx2 {
#include "row_planes_impl.h"
}  // namespace adaptir::cpu::row_planes::avx2
ADAPTIR_AVX2_END
#endif

namespace adaptir::cpu::row_planes::base {
#include "row_planes_impl.h"
}  // namespace adaptir::cpu::row_planes::base

namespace adaptir::cpu::row_planes {

void to_rows(const float* src, int64_t lp, int64_t h, int64_t n, float* dst, int64_t rs,
             int64_t width) {
#ifdef ADAPTIR_AVX2_BUILDS
  if (cpu_has_avx2_fma()) return avx2::to_rows_impl(src, lp, h, n, dst, rs, width);
#endif
  base::to_rows_impl(src, lp, h, n, dst, rs, width);
}

void to_planes(const float* src, int64_t rs, int64_t width, int64_t h, int64_t n, float* dst,
               int64_t lp) {
#ifdef ADAPTIR_AVX2_BUILDS
  if (cpu_has_avx2_fma()) return avx2::to_planes_impl(src, rs, width, h, n, dst, lp);
#endif
  base::to_planes_impl(src, rs, width, h, n, dst, lp);
}

}  // namespace adaptir::cpu::row_planes
