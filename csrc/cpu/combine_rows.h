// float32 row kernel of combine_out's backward (combine_out.cpp), with an AVX2+FMA
// build chosen at run time where the CPU has it. Single-threaded, fixed summation order.
#pragma once

#include <cstdint>

namespace adaptir::cpu::combine_rows {

// One channel of one sample over n consecutive positions, with gv = grad_v of the
// channel at those positions (contiguous), s = cs and c = cg of the channel:
//   gl[i] = gv[i] s c,  gg[i] = gv[i] s sg[i],  acc[i] += gv[i] s g[i]  (acc in double),
//   sums[0] = sum_i gv[i] s l[i],  sums[1] = sum_i gv[i] (c l[i] + sg[i] g[i])  (double).
void backward_channel(const float* gv, const float* l, const float* g, const float* sg, float s,
                      float c, int64_t n, float* gl, float* gg, double* acc, double* sums);

}  // namespace adaptir::cpu::combine_rows
