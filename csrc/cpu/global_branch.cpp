// CPU kernels of adaptir_cpp::global_branch and its backward (SPEC 5 step 3).
//
// The (n, c) planes are processed in fixed groups, each group start to finish inside
// one work item (one parallel region per call, the group's data stays in cache):
// Transforms: norm "ortho"; small_fft.h's for float32 planes of up to 64 x 64 whose
// sides have no prime factor above 5, on CPUs with AVX2 and FMA (the groups are then
// blocks of 8 planes, 16 with the AVX-512 builds), ATen's FFT otherwise.
// Forward:  U = rfft2(u); the spectral gate in place on U;
//           y = irfft2(U) written into the output; g = |y| in place with the plane means
//           and the signs of y packed 8 to a byte.
// Backward: U = rfft2(u); sign(y) from g and the packed signs (or, without them,
//           recomputed: Y = gate(U); y = irfft2(Y)); grad_y = (grad_g + grad_gmean /
//           HW) sign(y); GY = rfft2(grad_y); one gate-backward pass in place on
//           GY. With grad_G = c GY (SPEC 4.1 weights c[kw]) and the gate backward J^T
//           linear in grad_G, grad_U / c = J^T GY: the c-weights only enter the
//           parameter-gradient sums, which the same pass accumulates per plane (summed
//           per channel in sample order). grad_u = irfft2(J^T GY).
// The gate follows ops/spectral_gate.py (the same formulas as spectral_gate.cpp). In
// float32 it runs on 8-lane vectors (16 with the AVX-512 builds, gate_lanes_impl.h) with
// branch-free polynomial atan2 and sin/cos (about 1e-7 relative error, like libm's float
// functions); float64 uses libm.
#include "global_branch.h"

#include "common.h"
#include "isa.h"
#include "small_fft.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/fft_irfft2.h>
#include <ATen/ops/fft_rfft2.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <cstring>
#include <utility>

#pragma GCC diagnostic ignored "-Wpsabi"

namespace adaptir::cpu {
namespace {

constexpr const char* kFwd = "global_branch";
constexpr const char* kBwd = "global_branch_backward";

// ---- the gate on float vectors (gate_lanes_impl.h) ------------------------------

struct Gate {
  float wa, ba, wp, bp;
};

// The vector path is exact enough while |P'| = |wp P + bp| stays below 8192.
inline bool vector_ok(const Gate& p) {
  return std::fabs(p.wp) * 3.1415927f + std::fabs(p.bp) < 8000.0f;
}

// Eight lanes, inlined into ADAPTIR_CLONES functions (AVX2 without FMA, or the baseline).
namespace simd {
#define ADAPTIR_GATE_LANES 8
#include "gate_lanes_impl.h"
#undef ADAPTIR_GATE_LANES
}  // namespace simd

#ifdef ADAPTIR_AVX2_BUILDS
// Sixteen lanes for the CPUs whose AVX-512 builds are chosen (isa.h), compiled without
// contraction like the AVX2 clone, so bitwise equal to it.
#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512vl")
#pragma GCC optimize("fp-contract=off")
namespace simd16 {
#define ADAPTIR_GATE_LANES 16
#include "gate_lanes_impl.h"
#undef ADAPTIR_GATE_LANES
}  // namespace simd16

void gate_forward_x16(const float* in, float* out, int64_t n, Gate p) {
  simd16::gate_forward_lanes(in, out, n, p);
}

void gate_backward_x16(float* g, const float* u, const float* cw, int64_t n, Gate p, double* sums) {
  simd16::gate_backward_lanes(g, u, cw, n, p, sums);
}
#pragma GCC pop_options
#endif

ADAPTIR_CLONES
void gate_forward_x8(const float* in, float* out, int64_t n, Gate p) {
  simd::gate_forward_lanes(in, out, n, p);
}

ADAPTIR_CLONES
void gate_backward_x8(float* g, const float* u, const float* cw, int64_t n, Gate p, double* sums) {
  simd::gate_backward_lanes(g, u, cw, n, p, sums);
}

// G = gate(U) for n complex elements; in and out may be the same buffer.
void gate_forward_f32(const float* in, float* out, int64_t n, Gate p) {
#ifdef ADAPTIR_AVX2_BUILDS
  if (cpu_has_avx512()) return gate_forward_x16(in, out, n, p);
#endif
  gate_forward_x8(in, out, n, p);
}

// In place on g (GY in, J^T GY out); u: the spectrum; cw: per-element c-weights.
// Adds the c-weighted sums (amp_w, amp_b, pha_w, pha_b) into sums.
void gate_backward_f32(float* g, const float* u, const float* cw, int64_t n, Gate p,
                       double* sums) {
#ifdef ADAPTIR_AVX2_BUILDS
  if (cpu_has_avx512()) return gate_backward_x16(g, u, cw, n, p, sums);
#endif
  gate_backward_x8(g, u, cw, n, p, sums);
}

// Scalar (libm) versions: float64, and float32 channels with very large pha weights.
template <typename T>
void gate_forward_scalar(const T* in, T* out, int64_t n, T wa, T ba, T wp, T bp) {
  for (int64_t i = 0; i < n; ++i) {
    const T ur = in[2 * i], ui = in[2 * i + 1];
    const T a2 = wa * magnitude(ur, ui) + ba;
    const T p2 = wp * std::atan2(ui, ur) + bp;
    out[2 * i] = a2 * std::cos(p2);
    out[2 * i + 1] = a2 * std::sin(p2);
  }
}

template <typename T>
void gate_backward_scalar(T* g, const T* u, const float* cw, int64_t n, T wa, T ba, T wp, T bp,
                          double* sums) {
  double s_aw = 0, s_ab = 0, s_pw = 0, s_pb = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T ur = u[2 * i], ui = u[2 * i + 1];
    const T gr = g[2 * i], gi = g[2 * i + 1];
    const T a = magnitude(ur, ui);
    const T ph = std::atan2(ui, ur);
    const T a2 = wa * a + ba;
    const T p2 = wp * ph + bp;
    const T cs = std::cos(p2), sn = std::sin(p2);
    const T da2 = gr * cs + gi * sn;
    const T dp2 = a2 * (gi * cs - gr * sn);
    const double w = cw[i];
    s_aw += w * da2 * a;
    s_ab += w * da2;
    s_pw += w * dp2 * ph;
    s_pb += w * dp2;
    if (a == T(0)) {
      g[2 * i] = 0;
      g[2 * i + 1] = 0;
    } else {
      const T da = wa * da2 / a;
      const T dp = wp * dp2 / (a * a);
      g[2 * i] = da * ur - dp * ui;
      g[2 * i + 1] = da * ui + dp * ur;
    }
  }
  sums[0] += s_aw;
  sums[1] += s_ab;
  sums[2] += s_pw;
  sums[3] += s_pb;
}

template <typename T>
struct GateParams {
  std::vector<T> aw, ab, pw, pb;
  explicit GateParams(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                      const at::Tensor& d) {
    auto grab = [](const at::Tensor& t, std::vector<T>& v) {
      const at::Tensor tc = t.contiguous();
      v.assign(tc.const_data_ptr<T>(), tc.const_data_ptr<T>() + tc.numel());
    };
    grab(a, aw);
    grab(b, ab);
    grab(c, pw);
    grab(d, pb);
  }
};

template <typename T>
void gate_forward_chunk(const T* in, T* out, int64_t n, const GateParams<T>& p, int64_t c) {
  if constexpr (std::is_same_v<T, float>) {
    const Gate g{p.aw[c], p.ab[c], p.pw[c], p.pb[c]};
    if (vector_ok(g)) {
      gate_forward_f32(in, out, n, g);
      return;
    }
  }
  gate_forward_scalar<T>(in, out, n, p.aw[c], p.ab[c], p.pw[c], p.pb[c]);
}

template <typename T>
void gate_backward_chunk(T* g, const T* u, const float* cw, int64_t n, const GateParams<T>& p,
                         int64_t c, double* sums) {
  if constexpr (std::is_same_v<T, float>) {
    const Gate q{p.aw[c], p.ab[c], p.pw[c], p.pb[c]};
    if (vector_ok(q)) {
      gate_backward_f32(g, u, cw, n, q, sums);
      return;
    }
  }
  gate_backward_scalar<T>(g, u, cw, n, p.aw[c], p.ab[c], p.pw[c], p.pb[c], sums);
}

void check_args(const char* op, const at::Tensor& u, const at::Tensor& aw, const at::Tensor& ab,
                const at::Tensor& pw, const at::Tensor& pb) {
  check_cpu(u, op, "u");
  check_floating(u, op, "u");
  TORCH_CHECK(u.dim() == 4, op, ": u must have shape (N, h, H, W), got ", u.sizes());
  const int64_t h = u.size(1);
  check_channel_param(aw, h, u, op, "amp_w", "u");
  check_channel_param(ab, h, u, op, "amp_b", "u");
  check_channel_param(pw, h, u, op, "pha_w", "u");
  check_channel_param(pb, h, u, op, "pha_b", "u");
}

// Planes (n, c) are processed in fixed groups, each group start to finish (transforms,
// gate, the elementwise passes) inside one task, so the group's data stays in cache and
// the whole operator is one parallel region. The grouping depends on the sizes only.
struct PlaneGroups {
  int64_t planes, size, count;
  bool own;  // small_fft.h's transforms (float32)
  PlaneGroups(int64_t planes_, int64_t plane_elems, bool own_) : planes(planes_), own(own_) {
    if (own) {
      // small_fft.h transforms 8 or 16 planes at once: one such block per group.
      size = fft::lanes();
      count = (planes + size - 1) / size;
      return;
    }
    // Each group is one FFT call per direction, whose fixed cost (about 20-40 us on a
    // 2-core EPYC) dominates for small planes: as few groups as keep each one within
    // ~256 KiB of float input (so it stays in cache from transform to gate to inverse),
    // but at least two per thread, and a multiple of the thread count where possible.
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t by_bytes = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(plane_elems, 1));
    int64_t want = std::max((planes + by_bytes - 1) / by_bytes, 2 * threads);
    want = (want + threads - 1) / threads * threads;
    size = std::max<int64_t>(1, (planes + want - 1) / want);
    count = (planes + size - 1) / size;
  }
};

// Tasks call ATen ops: no autograd recording, whatever the worker thread's state.
struct WorkerGuards {
  at::AutoDispatchBelowADInplaceOrView below_ad;
  at::NoGradGuard no_grad;
};

// Whether the transforms of (H, W) float planes are small_fft.h's (else ATen's).
bool own_fft(at::ScalarType t, int64_t H, int64_t W) {
  return t == at::kFloat && fft::supported(H, W) && fft::uses_avx2();
}

// out = irfft2(U, s=(H, W), norm="ortho") for (planes, H, W/2+1) complex U with ATen's
// FFT (the ATen loops; small_fft.h's transforms run in the *_groups_own loops); out
// contiguous (planes, H, W).
void inverse_spectrum(at::Tensor& out, const at::Tensor& U, int64_t H, int64_t W) {
  at::fft_irfft2_out(out, U, at::IntArrayRef{H, W}, {-2, -1}, "ortho");
}

// Sets the imaginary parts of the exactly real bins (kh in {0, H/2}, kw in {0, W/2},
// halves for even sizes) of `planes` half spectra (H x (W/2+1) complex, interleaved) to
// +0: FFTs leave rounding-level values of either sign there, which would make angle() +pi
// or -pi by chance (adaptir_kernels/spectrum.py).
template <typename T>
void zero_real_bins(T* d, int64_t planes, int64_t H, int64_t W) {
  const int64_t wf = W / 2 + 1;
  const int64_t rows[2] = {0, H / 2}, cols[2] = {0, W / 2};
  const int nr = (H % 2 == 0 && H > 1) ? 2 : 1, nc = (W % 2 == 0 && W > 1) ? 2 : 1;
  for (int64_t q = 0; q < planes; ++q)
    for (int a = 0; a < nr; ++a)
      for (int b = 0; b < nc; ++b) d[2 * (q * H * wf + rows[a] * wf + cols[b]) + 1] = T(0);
}

// rfft2 of (planes, H, W) with ATen's FFT, the exactly real bins' imaginary parts set
// to +0.
at::Tensor spectrum(const at::Tensor& u) {
  const int64_t planes = u.size(0), H = u.size(1), W = u.size(2);
  const at::Tensor U = at::fft_rfft2(u, std::nullopt, {-2, -1}, "ortho").contiguous();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "spectrum", [&] {
    zero_real_bins(reinterpret_cast<scalar_t*>(U.data_ptr()), planes, H, W);
  });
  return U;
}

// The same with small_fft.h's transforms, from and into raw float32 memory.
void own_spectrum(const float* u, float* U, int64_t planes, int64_t H, int64_t W) {
  fft::rfft2(u, U, planes, H, W);
  zero_real_bins(U, planes, H, W);
}

template <typename T>
T* real_ptr(const at::Tensor& complex) {
  return reinterpret_cast<T*>(complex.data_ptr());
}

// Bytes of packed signs per plane of HW values.
inline int64_t sign_bytes(int64_t HW) { return (HW + 7) / 8; }

// abs_mean_planes (below) for one float32 plane, eight values (one sign byte) at a time: the
// same per-lane double sums in the same order, so bitwise the same results.
ADAPTIR_CLONES
void abs_mean_plane_f32(float* v, int64_t HW, float* mean, uint8_t* sq) {
  using namespace simd;
  typedef double vd __attribute__((vector_size(32)));
  typedef float vf4 __attribute__((vector_size(16)));
  const vi weight = {1, 2, 4, 8, 16, 32, 64, 128};
  vd lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + L <= HW; i += L) {
    const vf x = load(v + i);
    vi b = (x < 0.0f) & weight;
    b |= __builtin_shufflevector(b, b, 4, 5, 6, 7, 0, 1, 2, 3);
    b |= __builtin_shufflevector(b, b, 2, 3, 0, 1, 6, 7, 4, 5);
    b |= __builtin_shufflevector(b, b, 1, 0, 3, 2, 5, 4, 7, 6);
    sq[i / 8] = static_cast<uint8_t>(b[0]);
    const vf a = vabs(x);
    store(v + i, a);
    lo += __builtin_convertvector((vf4)__builtin_shufflevector(a, a, 0, 1, 2, 3), vd);
    hi += __builtin_convertvector((vf4)__builtin_shufflevector(a, a, 4, 5, 6, 7), vd);
  }
  double acc[8] = {lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]};
  if (i < HW) {
    unsigned bits = 0;
    for (int k = 0; i + k < HW; ++k) {
      bits |= static_cast<unsigned>(v[i + k] < 0.0f) << k;
      v[i + k] = std::abs(v[i + k]);
      acc[0] += v[i + k];
    }
    sq[i / 8] = static_cast<uint8_t>(bits);
  }
  double t = 0.0;
  for (int k = 0; k < 8; ++k) t += acc[k];
  *mean = static_cast<float>(t / static_cast<double>(HW));
}

// |y| in place, per-plane means, and the signs of y: bit k of byte i of a plane's
// sign bytes is set where y[8 i + k] < 0.
template <typename T>
void abs_mean_planes(T* y, int64_t planes, int64_t HW, T* mean, uint8_t* sign) {
  const int64_t nb = sign_bytes(HW);
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t q = 0; q < planes; ++q) abs_mean_plane_f32(y + q * HW, HW, mean + q, sign + q * nb);
    return;
  }
  for (int64_t q = 0; q < planes; ++q) {
    T* v = y + q * HW;
    uint8_t* sq = sign + q * nb;
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= HW; i += 8) {
      unsigned bits = 0;
      for (int k = 0; k < 8; ++k) {
        bits |= static_cast<unsigned>(v[i + k] < T(0)) << k;
        const T a = std::abs(v[i + k]);
        v[i + k] = a;
        acc[k] += a;
      }
      sq[i / 8] = static_cast<uint8_t>(bits);
    }
    if (i < HW) {
      unsigned bits = 0;
      for (int k = 0; i + k < HW; ++k) {
        bits |= static_cast<unsigned>(v[i + k] < T(0)) << k;
        v[i + k] = std::abs(v[i + k]);
        acc[0] += v[i + k];
      }
      sq[i / 8] = static_cast<uint8_t>(bits);
    }
    double s = 0.0;
    for (int k = 0; k < 8; ++k) s += acc[k];
    mean[q] = static_cast<T>(s / static_cast<double>(HW));
  }
}

// grad_y = (grad_g + m) sign(y) for one plane, with sign(y) = 0 where g = |y| is not
// positive (y = 0, or NaN) and else -1 or +1 from the packed sign bits.
template <typename T>
void grad_y_from_signs(const T* gg, T m, const T* g, const uint8_t* sign, int64_t i0, int64_t HW,
                       T* out) {
  for (int64_t i = i0; i < HW; ++i) {
    const T mag = static_cast<T>(g[i] > T(0));
    const T neg = static_cast<T>((sign[i >> 3] >> (i & 7)) & 1);
    out[i] = (gg[i] + m) * (mag - T(2) * neg * mag);
  }
}

// The same for float32, eight values (one sign byte) at a time, bitwise equal to the
// loop above (the factor is exactly +1, -1 or +0 either way).
ADAPTIR_CLONES
void grad_y_from_signs_f32(const float* gg, float m, const float* g, const uint8_t* sign,
                           int64_t HW, float* out) {
  using namespace simd;
  const vi lane = {0, 1, 2, 3, 4, 5, 6, 7};
  const vi one = (vi)splat(1.0f);
  int64_t i = 0;
  for (; i + L <= HW; i += L) {
    const vf neg = __builtin_convertvector(((vi{} + sign[i >> 3]) >> lane) & 1, vf);
    const vf mag = (vf)((load(g + i) > 0.0f) & one);
    store(out + i, (load(gg + i) + m) * (mag - 2.0f * neg * mag));
  }
  grad_y_from_signs<float>(gg, m, g, sign, i, HW, out);
}

inline void grad_y_plane(const float* gg, float m, const float* g, const uint8_t* sign,
                         int64_t HW, float* out) {
  grad_y_from_signs_f32(gg, m, g, sign, HW, out);
}
inline void grad_y_plane(const double* gg, double m, const double* g, const uint8_t* sign,
                         int64_t HW, double* out) {
  grad_y_from_signs<double>(gg, m, g, sign, 0, HW, out);
}

// grad_y = (grad_g + grad_gmean / HW) sign(y) in place on the recomputed y of nq planes
// (gg and gm start at the group's first plane).
template <typename T>
void grad_y_recomputed(T* y, int64_t nq, int64_t HW, const T* gg, const T* gm, T inv) {
  for (int64_t q = 0; q < nq; ++q) {
    const T* a = gg + q * HW;
    const T m = gm[q] * inv;
    T* vq = y + q * HW;
    for (int64_t i = 0; i < HW; ++i) {
      const T sg = static_cast<T>(vq[i] > 0) - static_cast<T>(vq[i] < 0);
      vq[i] = (a[i] + m) * sg;
    }
  }
}

// The group loops with small_fft.h's transforms (groups.own, float32): the same steps as
// the ATen loops in global_branch and global_branch_backward, on raw pointers, with the
// spectra in this thread's scratch memory. A view, an allocation and its release cost a
// few microseconds each, and the ATen loops make about a hundred of each per training
// step at edt-train.
template <typename T>
void forward_groups_own(const PlaneGroups& groups, const T* u, T* g, T* gmean, uint8_t* sign,
                        const GateParams<T>& p, int64_t h, int64_t H, int64_t W,
                        const at::TensorOptions& opts) {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t HW = H * W, plane_len = H * (W / 2 + 1), n2 = 2 * plane_len;
    parallel_items(groups.count, [&](ItemQueue& queue) {
      // Held as tensors: a request beyond Scratch's limit is a fresh tensor of its own.
      const at::Tensor Ub = Scratch::get(0, groups.size, n2, opts);
      float* U = Ub.data_ptr<float>();
      for (int64_t t; queue.pop(t);) {
        const int64_t q0 = t * groups.size, nq = std::min(groups.size, groups.planes - q0);
        own_spectrum(u + q0 * HW, U, nq, H, W);
        for (int64_t q = 0; q < nq; ++q)
          gate_forward_chunk<float>(U + q * n2, U + q * n2, plane_len, p, (q0 + q) % h);
        fft::irfft2(U, g + q0 * HW, nq, H, W);
        abs_mean_planes<float>(g + q0 * HW, nq, HW, gmean + q0, sign + q0 * sign_bytes(HW));
      }
    });
  } else {
    TORCH_CHECK(false, "global_branch: small_fft.h's transforms take float32 only");
  }
}

// g and sign: the forward's (nullptr: y is recomputed); cw: c[kw] per element of a
// plane; part: four parameter sums per plane.
template <typename T>
void backward_groups_own(const PlaneGroups& groups, const T* u, const T* gg, const T* gm,
                         const T* g, const uint8_t* sign, T* gu, const GateParams<T>& p,
                         const float* cw, double* part, int64_t h, int64_t H, int64_t W,
                         const at::TensorOptions& opts) {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t HW = H * W, plane_len = H * (W / 2 + 1), n2 = 2 * plane_len;
    const float inv = 1.0f / static_cast<float>(HW);
    parallel_items(groups.count, [&](ItemQueue& queue) {
      const at::Tensor Ub = Scratch::get(0, groups.size, n2, opts);  // held: as the forward
      const at::Tensor GYb = Scratch::get(1, groups.size, n2, opts);
      const at::Tensor yb = Scratch::get(2, groups.size, HW, opts);
      const at::Tensor Yb = sign ? at::Tensor() : Scratch::get(3, groups.size, n2, opts);
      float* U = Ub.data_ptr<float>();
      float* GY = GYb.data_ptr<float>();
      float* y = yb.data_ptr<float>();
      float* Y = sign ? nullptr : Yb.data_ptr<float>();
      for (int64_t t; queue.pop(t);) {
        const int64_t q0 = t * groups.size, nq = std::min(groups.size, groups.planes - q0);
        own_spectrum(u + q0 * HW, U, nq, H, W);
        if (sign) {
          for (int64_t q = 0; q < nq; ++q) {
            const int64_t e = q0 + q;
            grad_y_plane(gg + e * HW, gm[e] * inv, g + e * HW, sign + e * sign_bytes(HW), HW,
                         y + q * HW);
          }
        } else {
          for (int64_t q = 0; q < nq; ++q)
            gate_forward_chunk<float>(U + q * n2, Y + q * n2, plane_len, p, (q0 + q) % h);
          fft::irfft2(Y, y, nq, H, W);
          grad_y_recomputed(y, nq, HW, gg + q0 * HW, gm + q0, inv);
        }
        own_spectrum(y, GY, nq, H, W);
        for (int64_t q = 0; q < nq; ++q)
          gate_backward_chunk<float>(GY + q * n2, U + q * n2, cw, plane_len, p, (q0 + q) % h,
                                     part + (q0 + q) * 4);
        fft::irfft2(GY, gu + q0 * HW, nq, H, W);
      }
    });
  } else {
    TORCH_CHECK(false, "global_branch_backward: small_fft.h's transforms take float32 only");
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_branch(const at::Tensor& u,
                                                             const at::Tensor& amp_w,
                                                             const at::Tensor& amp_b,
                                                             const at::Tensor& pha_w,
                                                             const at::Tensor& pha_b) {
  check_args(kFwd, u, amp_w, amp_b, pha_w, pha_b);
  const int64_t N = u.size(0), h = u.size(1), H = u.size(2), W = u.size(3), HW = H * W;
  const auto opts = u.options();
  at::Tensor g = new_output(u.sizes(), opts);
  at::Tensor gmean = new_output({N, h}, opts);
  at::Tensor sign = at::empty({N, h, sign_bytes(HW)}, opts.dtype(at::kByte));
  if (poison_enabled() && sign.numel() > 0) sign.fill_(255);  // every byte is written below
  if (u.numel() == 0) {
    gmean.fill_(std::numeric_limits<double>::quiet_NaN());
    return {g, gmean, sign};
  }
  const int64_t planes = N * h, plane_len = H * (W / 2 + 1);
  const at::Tensor u3 = u.detach().contiguous().view({planes, H, W});
  at::Tensor g3 = g.view({planes, H, W});
  const PlaneGroups groups(planes, HW, own_fft(u.scalar_type(), H, W));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), kFwd, [&] {
    const GateParams<scalar_t> p(amp_w, amp_b, pha_w, pha_b);
    scalar_t* gm = gmean.data_ptr<scalar_t>();
    if (groups.own) {
      forward_groups_own<scalar_t>(groups, u3.const_data_ptr<scalar_t>(), g3.data_ptr<scalar_t>(),
                                   gm, sign.data_ptr<uint8_t>(), p, h, H, W, opts);
      return;
    }
    parallel_items(groups.count, [&](ItemQueue& queue) {
      WorkerGuards guards;
      for (int64_t t; queue.pop(t);) {
        const int64_t q0 = t * groups.size, nq = std::min(groups.size, planes - q0);
        at::Tensor U = spectrum(u3.narrow(0, q0, nq));
        scalar_t* d = real_ptr<scalar_t>(U);
        for (int64_t q = 0; q < nq; ++q)
          gate_forward_chunk<scalar_t>(d + 2 * q * plane_len, d + 2 * q * plane_len, plane_len, p,
                                       (q0 + q) % h);
        at::Tensor gq = g3.narrow(0, q0, nq);
        inverse_spectrum(gq, U, H, W);
        abs_mean_planes<scalar_t>(gq.data_ptr<scalar_t>(), nq, HW, gm + q0,
                                  sign.data_ptr<uint8_t>() + q0 * sign_bytes(HW));
      }
    });
  });
  return {g, gmean, sign};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_branch_backward(
    const at::Tensor& grad_g, const at::Tensor& grad_gmean, const at::Tensor& u,
    const at::Tensor& g, const at::Tensor& sign, const at::Tensor& amp_w,
    const at::Tensor& amp_b, const at::Tensor& pha_w, const at::Tensor& pha_b) {
  check_args(kBwd, u, amp_w, amp_b, pha_w, pha_b);
  check_like(grad_g, u, kBwd, "grad_g", "u");
  check_like(grad_gmean, u, kBwd, "grad_gmean", "u");
  TORCH_CHECK(grad_g.sizes() == u.sizes(), kBwd, ": grad_g must have u's shape ", u.sizes(),
              ", got ", grad_g.sizes());
  const int64_t N = u.size(0), h = u.size(1), H = u.size(2), W = u.size(3), HW = H * W;
  TORCH_CHECK(grad_gmean.dim() == 2 && grad_gmean.size(0) == N && grad_gmean.size(1) == h, kBwd,
              ": grad_gmean must have shape (N, h) = (", N, ", ", h, "), got ", grad_gmean.sizes());
  const bool have_signs = sign.numel() > 0;
  if (have_signs) {
    check_cpu(sign, kBwd, "sign");
    TORCH_CHECK(sign.scalar_type() == at::kByte, kBwd, ": sign must be uint8 (packed bits), got ",
                sign.scalar_type());
    TORCH_CHECK(sign.dim() == 3 && sign.size(0) == N && sign.size(1) == h &&
                    sign.size(2) == sign_bytes(HW),
                kBwd, ": sign must have shape (N, h, ceil(H*W/8)) = (", N, ", ", h, ", ",
                sign_bytes(HW), "), got ", sign.sizes());
    check_like(g, u, kBwd, "g", "u");
    TORCH_CHECK(g.sizes() == u.sizes(), kBwd, ": g must have u's shape ", u.sizes(), ", got ",
                g.sizes());
  }
  const auto opts = u.options();
  at::Tensor grad_u = new_output(u.sizes(), opts);
  at::Tensor g_aw = new_output(amp_w.sizes(), opts);
  at::Tensor g_ab = new_output(amp_b.sizes(), opts);
  at::Tensor g_pw = new_output(pha_w.sizes(), opts);
  at::Tensor g_pb = new_output(pha_b.sizes(), opts);
  if (u.numel() == 0) {
    for (at::Tensor* t : {&g_aw, &g_ab, &g_pw, &g_pb}) t->zero_();
    return {grad_u, g_aw, g_ab, g_pw, g_pb};
  }
  const int64_t planes = N * h, Wf = W / 2 + 1, plane_len = H * Wf;
  const at::Tensor u3 = u.detach().contiguous().view({planes, H, W});
  const at::Tensor gg = grad_g.detach().contiguous(), gm = grad_gmean.detach().contiguous();
  const at::Tensor gc = have_signs ? g.detach().contiguous() : at::Tensor();
  const at::Tensor sc = have_signs ? sign.contiguous() : at::Tensor();
  at::Tensor gu3 = grad_u.view({planes, H, W});
  // c[kw] (SPEC 4.1) per element of one plane.
  std::vector<float> cw(static_cast<size_t>(plane_len));
  for (int64_t i = 0; i < plane_len; ++i) {
    const int64_t kw = i % Wf;
    cw[i] = (kw == 0 || (W % 2 == 0 && kw == W / 2)) ? 1.0f : 2.0f;
  }
  // Per plane: the four c-weighted parameter sums.
  std::vector<double> part(static_cast<size_t>(planes * 4), 0.0);
  const PlaneGroups groups(planes, HW, own_fft(u.scalar_type(), H, W));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), kBwd, [&] {
    const GateParams<scalar_t> p(amp_w, amp_b, pha_w, pha_b);
    const scalar_t* ggp = gg.const_data_ptr<scalar_t>();
    const scalar_t* gmp = gm.const_data_ptr<scalar_t>();
    const scalar_t inv = scalar_t(1) / static_cast<scalar_t>(HW);
    if (groups.own) {
      backward_groups_own<scalar_t>(groups, u3.const_data_ptr<scalar_t>(), ggp, gmp,
                                    have_signs ? gc.const_data_ptr<scalar_t>() : nullptr,
                                    have_signs ? sc.const_data_ptr<uint8_t>() : nullptr,
                                    gu3.data_ptr<scalar_t>(), p, cw.data(), part.data(), h, H, W,
                                    opts);
    } else {
      parallel_items(groups.count, [&](ItemQueue& queue) {
        WorkerGuards guards;
        for (int64_t t; queue.pop(t);) {
          const int64_t q0 = t * groups.size, nq = std::min(groups.size, planes - q0);
          const at::Tensor U = spectrum(u3.narrow(0, q0, nq));
          const scalar_t* up = real_ptr<scalar_t>(U);
          at::Tensor y = at::empty({nq, H, W}, u3.options());
          scalar_t* v = y.data_ptr<scalar_t>();
          if (have_signs) {
            // grad_y from g and the forward's signs.
            const scalar_t* gp = gc.const_data_ptr<scalar_t>();
            const uint8_t* sp = sc.const_data_ptr<uint8_t>();
            for (int64_t q = 0; q < nq; ++q) {
              const int64_t e = q0 + q;
              grad_y_plane(ggp + e * HW, gmp[e] * inv, gp + e * HW, sp + e * sign_bytes(HW), HW,
                           v + q * HW);
            }
          } else {
            // Recompute y = irfft2(gate(rfft2(u))), then grad_y = (grad_g + grad_gmean / HW)
            // sign(y) in place.
            at::Tensor Y = at::empty_like(U);
            scalar_t* yp = real_ptr<scalar_t>(Y);
            for (int64_t q = 0; q < nq; ++q)
              gate_forward_chunk<scalar_t>(up + 2 * q * plane_len, yp + 2 * q * plane_len,
                                           plane_len, p, (q0 + q) % h);
            inverse_spectrum(y, Y, H, W);
            grad_y_recomputed(v, nq, HW, ggp + q0 * HW, gmp + q0, inv);
          }
          // J^T GY in place, with the c-weighted parameter sums.
          at::Tensor GY = spectrum(y);
          scalar_t* gyp = real_ptr<scalar_t>(GY);
          for (int64_t q = 0; q < nq; ++q)
            gate_backward_chunk<scalar_t>(gyp + 2 * q * plane_len, up + 2 * q * plane_len,
                                          cw.data(), plane_len, p, (q0 + q) % h,
                                          part.data() + (q0 + q) * 4);
          at::Tensor guq = gu3.narrow(0, q0, nq);
          inverse_spectrum(guq, GY, H, W);
        }
      });
    }
    // Per channel, samples in order.
    at::Tensor* outs[4] = {&g_aw, &g_ab, &g_pw, &g_pb};
    for (int k = 0; k < 4; ++k) {
      scalar_t* o = outs[k]->data_ptr<scalar_t>();
      for (int64_t c = 0; c < h; ++c) {
        double s = 0.0;
        for (int64_t n = 0; n < N; ++n) s += part[(n * h + c) * 4 + k];
        o[c] = static_cast<scalar_t>(s);
      }
    }
  });
  return {grad_u, g_aw, g_ab, g_pw, g_pb};
}

TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m) {
  m.impl("global_branch", &global_branch);
  m.impl("global_branch_backward", &global_branch_backward);
}

}  // namespace adaptir::cpu
