// 8-float vectors (GCC vector extensions) with their unaligned load, store and
// broadcast, shared by the kernel bodies skinny_gemm_impl.h, depthwise_tiles_impl.h and
// combine_rows_impl.h. No include guard: each body includes this file inside its own
// per-instruction-set namespace. The AVX2 build maps a vector to one ymm register (and
// contracts a * b + c to FMA), the baseline build to two SSE registers.

typedef float vf __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) vf ld(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
static inline __attribute__((always_inline)) void st(float* p, vf v) {
  __builtin_memcpy(p, &v, sizeof v);
}
static inline __attribute__((always_inline)) vf bc(float x) {
  return vf{x, x, x, x, x, x, x, x};
}
