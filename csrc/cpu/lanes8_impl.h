// 8-float vectors (GCC vector extensions) with their unaligned load, store and
// broadcast, and exp, shared by the kernel bodies skinny_gemm_impl.h,
// depthwise_tiles_impl.h, combine_rows_impl.h and row_planes_impl.h and by router.cpp.
// No include guard: each includes this file inside its own namespace (the bodies one per
// instruction set). The AVX2 build maps a vector to one ymm register (and contracts
// a * b + c to FMA), the baseline build to two SSE registers.

typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));

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

// exp(x) in 8 lanes: x clamped to [-87, 88] (NaN kept), x = n ln2 + r with |r| <= ln2 / 2
// (Cody-Waite, ln2 in two parts), e^r by its Taylor polynomial of degree 7 (truncation
// below 6e-9 relative), times 2^n built in the exponent bits. Within about two ulps
// of exp over the clamped range.
static inline __attribute__((always_inline)) vf vexp(vf x) {
  x = x < -87.0f ? bc(-87.0f) : x;
  x = x > 88.0f ? bc(88.0f) : x;
  const vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const vf r = (x - n * 0.693359375f) - n * -2.12194440054e-4f;
  vf p = bc(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * reinterpret_cast<vf>(e);
}
