// 2-D real FFTs of small float32 planes, as global_branch uses them (norm "ortho").
//
// Eight or sixteen planes are transformed at once, one per lane of a float vector: the
// planes are transposed into lane order in cache, every 1-D transform (mixed radix 2, 3,
// 4, 5, decimation in time) then works on whole vectors, and the results are transposed
// back. Single-threaded (called per plane group inside a parallel loop); the arithmetic
// of a plane does not depend on its lane, on the vector width or on the other planes, so
// results do not depend on how planes are grouped or on the build. The build is chosen
// at run time: AVX-512 (16 planes) where isa.h's cpu_has_avx512() says so, else AVX2+FMA
// (8 planes) where the CPU has it, else the baseline x86-64 one (8 planes).
#pragma once

#include <cstdint>

namespace adaptir::cpu::fft {

// Whether (H, W) is handled here: both sides at most kMaxSide, with no prime factor
// other than 2, 3 and 5. Other sizes go through ATen's FFT.
constexpr int64_t kMaxSide = 64;
bool supported(int64_t H, int64_t W);

// Planes per vector of the build in use (8 or 16): rfft2 and irfft2 take planes in
// blocks of this many, so a caller's plane groups are best a multiple of it.
int64_t lanes();

// out = rfft2(in, norm="ortho"): nq planes of H x W floats -> nq planes of H x (W/2 + 1)
// complex values, (re, im) interleaved, in torch.fft.rfft2's order.
void rfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);

// out = irfft2(in, s=(H, W), norm="ortho"), with torch.fft.irfft2's treatment of the
// imaginary parts of columns 0 and W/2 (ignored after the transform along H). in is
// not modified.
void irfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);

// Whether a vector build (AVX2+FMA, or AVX-512) is in use.
bool uses_avx2();

// Whether the AVX-512 build (16 planes per vector) is in use.
bool uses_avx512();

// ---- shared by the builds ------------------------------------------------------

// One radix-p stage of a length-n transform: n = p * m; twiddles w[(s - 1) * m + k] =
// exp(-2 pi i s k / n) for s in [1, p), k in [0, m).
struct Stage {
  int p;
  int64_t n, m;
  const float* wr;
  const float* wi;
};

// The stages of a length-n transform, outermost first (none for n = 1).
struct Plan {
  int64_t n;
  int count;
  Stage stages[16];
};

// The cached plan of length n (n supported); thread-safe.
const Plan& plan_for(int64_t n);

}  // namespace adaptir::cpu::fft
