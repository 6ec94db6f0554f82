// Transposition between a block's h-wide rows (combine_out's v and grad_v, project_in's
// grad_z: row-major, rows of stride rs) and its h channel planes (each a run of
// consecutive positions, stride ld), 8 x 8 floats at a time through registers, with an
// AVX2 build chosen at run time where the CPU has it. Pure data movement: the results are
// exact in every build.
#pragma once

#include <cstdint>

namespace adaptir::cpu::row_planes {

// dst[i * rs + j] = src[j * lp + i] for j < h, i < n; each row of dst has `width` >= h
// columns. Where width >= h rounded up to 8, the columns [h, that) are written with
// zeros.
void to_rows(const float* src, int64_t lp, int64_t h, int64_t n, float* dst, int64_t rs,
             int64_t width);

// dst[j * lp + i] = src[i * rs + j] for j < h, i < n; each row of src has `width` >= h
// readable columns.
void to_planes(const float* src, int64_t rs, int64_t width, int64_t h, int64_t n, float* dst,
               int64_t lp);

}  // namespace adaptir::cpu::row_planes
