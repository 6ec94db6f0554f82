// CPU kernels of adaptir_cpp::spectral_gate and its backward.
//
// Per channel c: A = |U|, P = atan2(Ui, Ur), A' = aw[c] A + ab[c],
// P' = pw[c] P + pb[c], G = A' (cos P' + i sin P').
#include "spectral_gate.h"

#include "common.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace adaptir::cpu {
namespace {

constexpr const char* kFwd = "spectral_gate";
constexpr const char* kBwd = "spectral_gate_backward";
constexpr int64_t kChunk = 2048;  // complex elements per work item

struct GateParams {
  at::Tensor aw, ab, pw, pb;  // contiguous, 1-D views
};

// Checks U and the four parameters; returns the channel count h.
int64_t check_inputs(const char* op, const at::Tensor& U, const at::Tensor& aw,
                     const at::Tensor& ab, const at::Tensor& pw, const at::Tensor& pb) {
  check_cpu(U, op, "U");
  check_floating(U, op, "U");
  TORCH_CHECK(U.dim() == 5, op,
              ": U must be the real view of a complex spectrum with shape "
              "(N, h, H, Wf, 2), got ", U.dim(), " dims (shape ", U.sizes(), ")");
  TORCH_CHECK(U.size(4) == 2, op,
              ": the last dim of U must be 2 (real, imag), got shape ", U.sizes());
  const int64_t h = U.size(1);
  check_channel_param(aw, h, U, op, "amp_w", "U");
  check_channel_param(ab, h, U, op, "amp_b", "U");
  check_channel_param(pw, h, U, op, "pha_w", "U");
  check_channel_param(pb, h, U, op, "pha_b", "U");
  return h;
}

GateParams flat_params(const at::Tensor& aw, const at::Tensor& ab, const at::Tensor& pw,
                       const at::Tensor& pb) {
  return {aw.contiguous().view(-1), ab.contiguous().view(-1), pw.contiguous().view(-1),
          pb.contiguous().view(-1)};
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& U, const GateParams& p, at::Tensor& G) {
  const int64_t h = U.size(1);
  const PlaneChunks pc(U.size(0) * h, U.size(2) * U.size(3), kChunk);
  const scalar_t* u = U.const_data_ptr<scalar_t>();
  scalar_t* g = G.data_ptr<scalar_t>();
  const scalar_t* aw = p.aw.const_data_ptr<scalar_t>();
  const scalar_t* ab = p.ab.const_data_ptr<scalar_t>();
  const scalar_t* pw = p.pw.const_data_ptr<scalar_t>();
  const scalar_t* pb = p.pb.const_data_ptr<scalar_t>();

  parallel_plane_chunks(pc, [&](int64_t plane, int64_t begin, int64_t end, int64_t) {
    const int64_t c = plane % h;
    const scalar_t w_a = aw[c], b_a = ab[c], w_p = pw[c], b_p = pb[c];
    const scalar_t* up = u + 2 * (plane * pc.plane_len + begin);
    scalar_t* gp = g + 2 * (plane * pc.plane_len + begin);
    const int64_t n = end - begin;
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t ur = up[2 * i], ui = up[2 * i + 1];
      const scalar_t a = w_a * magnitude(ur, ui) + b_a;
      const scalar_t ph = w_p * std::atan2(ui, ur) + b_p;
      gp[2 * i] = a * std::cos(ph);
      gp[2 * i + 1] = a * std::sin(ph);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& gG, const at::Tensor& U, const GateParams& p,
                     at::Tensor& gU, at::Tensor& g_aw, at::Tensor& g_ab, at::Tensor& g_pw,
                     at::Tensor& g_pb) {
  const int64_t N = U.size(0), h = U.size(1);
  const PlaneChunks pc(N * h, U.size(2) * U.size(3), kChunk);
  ChannelPartials partials(pc, 4);
  const scalar_t* u = U.const_data_ptr<scalar_t>();
  const scalar_t* gg = gG.const_data_ptr<scalar_t>();
  scalar_t* gu = gU.data_ptr<scalar_t>();
  const scalar_t* aw = p.aw.const_data_ptr<scalar_t>();
  const scalar_t* ab = p.ab.const_data_ptr<scalar_t>();
  const scalar_t* pw = p.pw.const_data_ptr<scalar_t>();
  const scalar_t* pb = p.pb.const_data_ptr<scalar_t>();

  parallel_plane_chunks(pc, [&](int64_t plane, int64_t begin, int64_t end, int64_t item) {
    const int64_t c = plane % h;
    const scalar_t w_a = aw[c], b_a = ab[c], w_p = pw[c], b_p = pb[c];
    const int64_t off = 2 * (plane * pc.plane_len + begin);
    const scalar_t* up = u + off;
    const scalar_t* gp = gg + off;
    scalar_t* op = gu + off;
    acc_t<scalar_t> s_aw = 0, s_ab = 0, s_pw = 0, s_pb = 0;
    const int64_t n = end - begin;
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t ur = up[2 * i], ui = up[2 * i + 1];
      const scalar_t gr = gp[2 * i], gi = gp[2 * i + 1];
      const scalar_t a = magnitude(ur, ui);
      const scalar_t ph = std::atan2(ui, ur);
      const scalar_t a2 = w_a * a + b_a;
      const scalar_t ph2 = w_p * ph + b_p;
      const scalar_t cs = std::cos(ph2), sn = std::sin(ph2);
      const scalar_t d_a2 = gr * cs + gi * sn;
      const scalar_t d_ph2 = a2 * (gi * cs - gr * sn);
      s_aw += static_cast<acc_t<scalar_t>>(d_a2) * a;
      s_ab += d_a2;
      s_pw += static_cast<acc_t<scalar_t>>(d_ph2) * ph;
      s_pb += d_ph2;
      if (a == scalar_t(0)) {
        // torch: d|z| and d angle(z) are 0 at z = 0 (SPEC 4.2).
        op[2 * i] = 0;
        op[2 * i + 1] = 0;
      } else {
        const scalar_t d_a = w_a * d_a2 / a;          // dA / A
        const scalar_t d_ph = w_p * d_ph2 / (a * a);  // dP / A^2
        op[2 * i] = d_a * ur - d_ph * ui;
        op[2 * i + 1] = d_a * ui + d_ph * ur;
      }
    }
    double* part = partials.at(item);
    part[0] = s_aw;
    part[1] = s_ab;
    part[2] = s_pw;
    part[3] = s_pb;
  });

  const std::vector<double> sums = partials.reduce_channels(N, h);
  store_channel_sums<scalar_t>(sums, h, 4, 0, g_aw);
  store_channel_sums<scalar_t>(sums, h, 4, 1, g_ab);
  store_channel_sums<scalar_t>(sums, h, 4, 2, g_pw);
  store_channel_sums<scalar_t>(sums, h, 4, 3, g_pb);
}

}  // namespace

at::Tensor spectral_gate(const at::Tensor& U, const at::Tensor& amp_w, const at::Tensor& amp_b,
                         const at::Tensor& pha_w, const at::Tensor& pha_b) {
  check_inputs(kFwd, U, amp_w, amp_b, pha_w, pha_b);
  const at::Tensor Uc = U.contiguous();
  const GateParams p = flat_params(amp_w, amp_b, pha_w, pha_b);
  at::Tensor G = at::empty(Uc.sizes(), Uc.options());
  AT_DISPATCH_FLOATING_TYPES(Uc.scalar_type(), kFwd,
                             [&] { forward_kernel<scalar_t>(Uc, p, G); });
  return G;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
spectral_gate_backward(const at::Tensor& grad_G, const at::Tensor& U,
                       const at::Tensor& amp_w, const at::Tensor& amp_b,
                       const at::Tensor& pha_w, const at::Tensor& pha_b) {
  check_inputs(kBwd, U, amp_w, amp_b, pha_w, pha_b);
  check_like(grad_G, U, kBwd, "grad_G", "U");
  TORCH_CHECK(grad_G.sizes() == U.sizes(), kBwd, ": grad_G must have U's shape ",
              U.sizes(), ", got ", grad_G.sizes());
  // Incoming gradients are often expanded (stride 0); the kernel reads them densely.
  const at::Tensor Uc = U.contiguous();
  const at::Tensor gG = grad_G.contiguous();
  const GateParams p = flat_params(amp_w, amp_b, pha_w, pha_b);
  at::Tensor gU = at::empty(Uc.sizes(), Uc.options());
  at::Tensor g_aw = at::empty(amp_w.sizes(), Uc.options());
  at::Tensor g_ab = at::empty(amp_b.sizes(), Uc.options());
  at::Tensor g_pw = at::empty(pha_w.sizes(), Uc.options());
  at::Tensor g_pb = at::empty(pha_b.sizes(), Uc.options());
  AT_DISPATCH_FLOATING_TYPES(Uc.scalar_type(), kBwd, [&] {
    backward_kernel<scalar_t>(gG, Uc, p, gU, g_aw, g_ab, g_pw, g_pb);
  });
  return {gU, g_aw, g_ab, g_pw, g_pb};
}

TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m) {
  m.impl("spectral_gate", &spectral_gate);
  m.impl("spectral_gate_backward", &spectral_gate_backward);
}

}  // namespace adaptir::cpu
