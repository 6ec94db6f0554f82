// 2-D real FFTs of small float32 planes, as global_branch uses them (norm "ortho").
//
// Eight planes are transformed at once, one per lane of an 8-float vector: the planes
// are transposed into lane order in cache, every 1-D transform (mixed radix 2, 3, 4, 5,
// decimation in time) then works on whole vectors, and the results are transposed back.
// Single-threaded (called per plane group inside a parallel loop); the arithmetic of a
// plane does not depend on its lane or on the other planes, so results do not depend on
// how planes are grouped. An AVX2+FMA build is chosen at run time where the CPU has it.
#pragma once

#include <cstdint>

namespace adaptir::cpu::fft {

// Whether (H, W) is handled here: both sides at most kMaxSide, with no prime factor
// other than 2, 3 and 5. Other sizes go through ATen's FFT.
constexpr int64_t kMaxSide = 64;
bool supported(int64_t H, int64_t W);

// Planes per vector.
constexpr int64_t kLanes = 8;

// out = rfft2(in, norm="ortho"): nq planes of H x W floats -> nq planes of H x (W/2 + 1)
// complex values, (re, im) interleaved, in torch.fft.rfft2's order.
void rfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);

// out = irfft2(in, s=(H, W), norm="ortho"), with torch.fft.irfft2's treatment of the
// imaginary parts of columns 0 and W/2 (ignored after the transform along H). in is
// not modified.
void irfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);

// Whether the AVX2+FMA build is in use.
bool uses_avx2();

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
