// float32 tile kernels of the local branch (local_branch.cpp): the depthwise 3x3
// correlation of h channel planes, its bias and the spatial gate, forward and backward,
// over rows [y0, y1) of one sample. Rows are copied into zero-padded buffers in cache,
// so every inner loop is a branch-free 8-lane loop over columns; an AVX2+FMA version
// is chosen at run time where the CPU has it. Single-threaded (called per tile inside
// a parallel loop) with a fixed summation order, so results never depend on the
// thread count.
#pragma once

#include <cstdint>

namespace adaptir::cpu::dw {

// Per-tile partial sums written by backward_tile, per channel c at part[c * kPer + i]:
// i < 9 the kernel-tap gradients (row-major 3x3), 9 conv_bias, 10 si_weight; then
// si_bias at part[h * kPer].
constexpr int64_t kPer = 11;

// Floats of work space the tile functions need for h channels and rows [y0, y1).
int64_t forward_work(int64_t h, int64_t H, int64_t W, int64_t y0, int64_t y1);
int64_t backward_work(int64_t h, int64_t H, int64_t W, int64_t y0, int64_t y1);

// l = correlation(u, K) + bias and sg = sigmoid(sum_c siw[c] l[c] + sib) on rows
// [y0, y1) of one sample. u, l: the sample's h planes of H x W; sg: its H x W plane;
// K: (h, 9).
void forward_tile(const float* u, int64_t h, int64_t H, int64_t W, int64_t y0, int64_t y1,
                  const float* K, const float* bias, const float* siw, float sib, float* l,
                  float* sg, float* work);

// Rows [y0, y1) of grad_u (u's layout) and the tile's partial parameter gradients
// (kPer * h + 1 values into part), from grad_l (u's layout) and grad_sg (the sample's
// H x W plane). l and sg are recomputed, with one halo row each side, unless l_in (u's
// layout) and sg_in (the sample's plane) give forward_tile's results; the results are
// bitwise the same either way.
void backward_tile(const float* u, const float* gl, const float* gsg, int64_t h, int64_t H,
                   int64_t W, int64_t y0, int64_t y1, const float* K, const float* bias,
                   const float* siw, float sib, const float* l_in, const float* sg_in,
                   float* gu, double* part, float* work);

}  // namespace adaptir::cpu::dw
