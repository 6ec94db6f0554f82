// Run-time selection between the AVX2+FMA and the baseline builds of
// depthwise_tiles_impl.h.
#include "depthwise_tiles.h"

#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#pragma GCC diagnostic ignored "-Wpsabi"

#ifdef ADAPTIR_AVX2_BUILDS
ADAPTIR_AVX2_BEGIN
namespace adaptir::cpu::dw::avx2 {
#include "depthwise_tiles_impl.h"
}  // namespace adaptir::cpu::dw::avx2
ADAPTIR_AVX2_END
#endif

namespace adaptir::cpu::dw::base {
#include "depthwise_tiles_impl.h"
}  // namespace adaptir::cpu::dw::base

namespace adaptir::cpu::dw {

#ifdef ADAPTIR_AVX2_BUILDS
#define DW_DISPATCH(fn, ...) (cpu_has_avx2_fma() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))
#else
#define DW_DISPATCH(fn, ...) base::fn(__VA_ARGS__)
#endif

int64_t forward_work(int64_t h, int64_t H, int64_t W, int64_t y0, int64_t y1) {
  return base::forward_work_impl(h, H, W, y0, y1);
}

int64_t backward_work(int64_t h, int64_t H, int64_t W, int64_t y0, int64_t y1) {
  return base::backward_work_impl(h, H, W, y0, y1);
}

void forward_tile(const float* u, int64_t h, int64_t H, int64_t W, int64_t y0, int64_t y1,
                  const float* K, const float* bias, const float* siw, float sib, float* l,
                  float* sg, float* work) {
  DW_DISPATCH(forward_tile_impl, u, h, H, W, y0, y1, K, bias, siw, sib, l, sg, work);
}

void backward_tile(const float* u, const float* gl, const float* gsg, int64_t h, int64_t H,
                   int64_t W, int64_t y0, int64_t y1, const float* K, const float* bias,
                   const float* siw, float sib, const float* l_in, const float* sg_in,
                   float* gu, double* part, float* work) {
  DW_DISPATCH(backward_tile_impl, u, gl, gsg, h, H, W, y0, y1, K, bias, siw, sib, l_in, sg_in, gu,
              part, work);
}

}  // namespace adaptir::cpu::dw
