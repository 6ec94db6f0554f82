// Body of row_planes.h. No include guard: row_planes.cpp includes this file once per
// instruction set, inside a namespace.

#include "lanes8_impl.h"

#define RP_AI static inline __attribute__((always_inline))

// r[i][j] <-> r[j][i] for an 8 x 8 block held in eight vectors.
RP_AI void transpose8(vf r[8]) {
  vf t[8], s[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = __builtin_shufflevector(r[2 * k], r[2 * k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * k + 1] = __builtin_shufflevector(r[2 * k], r[2 * k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int k = 0; k < 2; ++k) {
    s[4 * k] = __builtin_shufflevector(t[4 * k], t[4 * k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    s[4 * k + 1] = __builtin_shufflevector(t[4 * k], t[4 * k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    s[4 * k + 2] = __builtin_shufflevector(t[4 * k + 1], t[4 * k + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    s[4 * k + 3] = __builtin_shufflevector(t[4 * k + 1], t[4 * k + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = __builtin_shufflevector(s[k], s[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[k + 4] = __builtin_shufflevector(s[k], s[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

static void to_rows_impl(const float* src, int64_t lp, int64_t h, int64_t n, float* dst,
                         int64_t rs, int64_t width) {
  const int64_t h8 = (h + 7) / 8 * 8;
  const bool wide = width >= h8;  // whole 8-column groups fit in a row
  int64_t i = 0;
  if (wide) {
    for (; i + 8 <= n; i += 8)
      for (int64_t j0 = 0; j0 < h; j0 += 8) {
        vf r[8];
        for (int k = 0; k < 8; ++k) r[k] = j0 + k < h ? ld(src + (j0 + k) * lp + i) : bc(0.0f);
        transpose8(r);
        for (int e = 0; e < 8; ++e) st(dst + (i + e) * rs + j0, r[e]);
      }
  }
  for (; i < n; ++i) {
    for (int64_t j = 0; j < h; ++j) dst[i * rs + j] = src[j * lp + i];
    if (wide)
      for (int64_t j = h; j < h8; ++j) dst[i * rs + j] = 0.0f;
  }
}

static void to_planes_impl(const float* src, int64_t rs, int64_t width, int64_t h, int64_t n,
                           float* dst, int64_t lp) {
  const int64_t h8 = (h + 7) / 8 * 8;
  int64_t i = 0;
  if (width >= h8) {
    for (; i + 8 <= n; i += 8)
      for (int64_t j0 = 0; j0 < h; j0 += 8) {
        vf r[8];
        for (int e = 0; e < 8; ++e) r[e] = ld(src + (i + e) * rs + j0);
        transpose8(r);
        for (int k = 0; k < 8 && j0 + k < h; ++k) st(dst + (j0 + k) * lp + i, r[k]);
      }
  }
  for (; i < n; ++i)
    for (int64_t j = 0; j < h; ++j) dst[j * lp + i] = src[i * rs + j];
}

#undef RP_AI
