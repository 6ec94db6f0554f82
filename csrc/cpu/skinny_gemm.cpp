// Run-time selection between the AVX-512 build (skinny_gemm_avx512_impl.h), the AVX2+FMA
// and the baseline builds of skinny_gemm_impl.h.
#include "skinny_gemm.h"

#include "isa.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#pragma GCC diagnostic ignored "-Wpsabi"

#ifdef ADAPTIR_AVX2_BUILDS
ADAPTIR_AVX2_BEGIN
namespace adaptir::cpu::gemm::avx2 {
// dst[0, n) = src[0, n) with 32-byte streaming stores where dst is aligned.
static inline void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  const int64_t head = ((32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31) / 4;
  if ((reinterpret_cast<uintptr_t>(dst) & 3) != 0 || n < 16) {
    std::memcpy(dst, src, sizeof(float) * n);
    return;
  }
  for (; i < head; ++i) dst[i] = src[i];
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}
#define SG_ACC 12
#define SG_PAIRS 1
#include "skinny_gemm_impl.h"
#undef SG_PAIRS
#undef SG_ACC
}  // namespace adaptir::cpu::gemm::avx2
ADAPTIR_AVX2_END

ADAPTIR_AVX512_BEGIN
namespace adaptir::cpu::gemm::avx512 {
#include "skinny_gemm_avx512_impl.h"
}  // namespace adaptir::cpu::gemm::avx512
ADAPTIR_AVX512_END
#endif

namespace adaptir::cpu::gemm::base {
#if defined(__x86_64__)
static inline void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  const int64_t head = ((16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15) / 4;
  if ((reinterpret_cast<uintptr_t>(dst) & 3) != 0 || n < 8) {
    std::memcpy(dst, src, sizeof(float) * n);
    return;
  }
  for (; i < head; ++i) dst[i] = src[i];
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}
#else
static inline void stream_copy(float* dst, const float* src, int64_t n) {
  std::memcpy(dst, src, sizeof(float) * n);
}
#endif
#define SG_ACC 6
#include "skinny_gemm_impl.h"
#undef SG_ACC
}  // namespace adaptir::cpu::gemm::base

namespace adaptir::cpu::gemm {

bool uses_avx2() {
#ifdef ADAPTIR_AVX2_BUILDS
  return cpu_has_avx2_fma();
#else
  return false;
#endif
}

bool uses_avx512() {
#ifdef ADAPTIR_AVX2_BUILDS
  return cpu_has_avx512();
#else
  return false;
#endif
}

#ifdef ADAPTIR_AVX2_BUILDS
#define SG_DISPATCH(fn, ...)                 \
  (uses_avx512() ? avx512::fn(__VA_ARGS__)   \
   : uses_avx2() ? avx2::fn(__VA_ARGS__)     \
                 : base::fn(__VA_ARGS__))
#else
#define SG_DISPATCH(fn, ...) base::fn(__VA_ARGS__)
#endif

void rows_dot(const float* x, int64_t R, int64_t C, const float* wt, int64_t h, int64_t hp,
              const float* bias, float* z, int64_t ldz) {
  SG_DISPATCH(rows_dot_impl, x, R, C, wt, h, hp, bias, z, ldz);
}

void expand(const float* g, int64_t ldg, int64_t R, int64_t h, const float* w, int64_t C,
            float* y, bool stream) {
  SG_DISPATCH(expand_impl, g, ldg, R, h, w, C, y, stream);
#if defined(__x86_64__)
  if (stream) _mm_sfence();
#endif
}

void outer(const float* g, int64_t ldg, int64_t R, int64_t h, const float* x, int64_t C,
           float* p) {
  SG_DISPATCH(outer_impl, g, ldg, R, h, x, C, p);
}

std::vector<Build> builds() {
  std::vector<Build> out{{"baseline", &base::rows_dot_impl, &base::expand_impl, &base::outer_impl}};
#ifdef ADAPTIR_AVX2_BUILDS
  if (cpu_has_avx2_fma())
    out.push_back({"avx2", &avx2::rows_dot_impl, &avx2::expand_impl, &avx2::outer_impl});
  if (cpu_can_avx512())
    out.push_back({"avx512", &avx512::rows_dot_impl, &avx512::expand_impl, &avx512::outer_impl});
#endif
  return out;
}

}  // namespace adaptir::cpu::gemm
