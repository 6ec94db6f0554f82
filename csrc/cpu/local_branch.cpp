// CPU kernels of adaptir_cpp::local_branch and its backward (SPEC 5 step 2).
//
// K = conv_A @ conv_B (h, 3, 3); l = depthwise_conv3x3(u, K, zero padding) + conv_bias;
// sg = sigmoid(sum_c si_weight[c] l[c] + si_bias).
// Work items are tiles of rows of one sample; the forward writes l and sg in one pass.
// The backward recomputes l and sg for the tile (plus one halo row each side), forms
// grad_lt = grad_l + grad_s * si_weight in a tile buffer and produces grad_u (the
// transposed conv) and per-tile partial sums of the parameter gradients, reduced in
// tile order. float32 tiles run the vectorised kernels of depthwise_tiles.h; the
// loops below serve float64 (gradcheck).
#include "local_branch.h"

#include "common.h"
#include "depthwise_tiles.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace adaptir::cpu {
namespace {

constexpr const char* kFwd = "local_branch";
constexpr const char* kBwd = "local_branch_backward";

struct Tiles {
  int64_t N, H, W, rows_per_tile, per_sample, count;
  Tiles(int64_t N_, int64_t H_, int64_t W_) : N(N_), H(H_), W(W_) {
    // At most about 4096 positions per tile, the rows shared out evenly; a single sample
    // of two or more rows takes at least two tiles, so that two threads share it. Depends
    // on the sizes only.
    rows_per_tile = even_part(H, (4096 + W - 1) / std::max<int64_t>(W, 1), N == 1 ? 2 : 1);
    per_sample = (H + rows_per_tile - 1) / rows_per_tile;
    count = N * per_sample;
  }
  void get(int64_t t, int64_t& n, int64_t& y0, int64_t& y1) const {
    n = t / per_sample;
    y0 = (t % per_sample) * rows_per_tile;
    y1 = std::min(H, y0 + rows_per_tile);
  }
};

// out[x] += k0 r[x-1] + k1 r[x] + k2 r[x+1], zero outside [0, W).
template <typename T>
inline void row_taps(T* __restrict out, const T* __restrict r, T k0, T k1, T k2, int64_t W) {
  if (W == 1) {
    out[0] += k1 * r[0];
    return;
  }
  out[0] += k1 * r[0] + k2 * r[1];
  for (int64_t x = 1; x < W - 1; ++x) out[x] += k0 * r[x - 1] + k1 * r[x] + k2 * r[x + 1];
  out[W - 1] += k0 * r[W - 2] + k1 * r[W - 1];
}

void check_args(const char* op, const at::Tensor& u, const at::Tensor& A, const at::Tensor& B,
                const at::Tensor& cb, const at::Tensor& siw, const at::Tensor& sib) {
  check_cpu(u, op, "u");
  check_floating(u, op, "u");
  TORCH_CHECK(u.dim() == 4, op, ": u must have shape (N, h, H, W), got ", u.sizes());
  const int64_t h = u.size(1);
  check_like(A, u, op, "conv_A", "u");
  check_like(B, u, op, "conv_B", "u");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == h, op, ": conv_A must have shape (h, r) with h=", h,
              ", got ", A.sizes());
  TORCH_CHECK(B.dim() == 2 && B.size(0) == A.size(1) && B.size(1) == 9, op,
              ": conv_B must have shape (r, 9) with r=", A.size(1), ", got ", B.sizes());
  check_channel_param(cb, h, u, op, "conv_bias", "u");
  check_channel_param(siw, h, u, op, "si_weight", "u");
  check_like(sib, u, op, "si_bias", "u");
  TORCH_CHECK(sib.numel() == 1, op, ": si_bias must have one element, got shape ", sib.sizes());
}

template <typename scalar_t>
struct Params {
  std::vector<scalar_t> K, bias, siw;
  scalar_t sib;
  Params(const at::Tensor& A, const at::Tensor& B, const at::Tensor& cb, const at::Tensor& siw_,
         const at::Tensor& sib_) {
    const at::Tensor Ac = A.contiguous(), Bc = B.contiguous();
    const int64_t h = Ac.size(0), r = Ac.size(1);
    const scalar_t* a = Ac.const_data_ptr<scalar_t>();
    const scalar_t* b = Bc.const_data_ptr<scalar_t>();
    K.resize(h * 9);
    for (int64_t c = 0; c < h; ++c)
      for (int64_t t = 0; t < 9; ++t) {
        double s = 0.0;
        for (int64_t k = 0; k < r; ++k) s += static_cast<double>(a[c * r + k]) * b[k * 9 + t];
        K[c * 9 + t] = static_cast<scalar_t>(s);
      }
    const at::Tensor cbc = cb.contiguous(), swc = siw_.contiguous();
    bias.assign(cbc.const_data_ptr<scalar_t>(), cbc.const_data_ptr<scalar_t>() + h);
    siw.assign(swc.const_data_ptr<scalar_t>(), swc.const_data_ptr<scalar_t>() + h);
    sib = sib_.contiguous().const_data_ptr<scalar_t>()[0];
  }
};

// l rows [ya, yb) of channel c of one sample into dst (rows of W), bias included.
template <typename scalar_t>
inline void conv_rows(const scalar_t* uplane, const scalar_t* k, scalar_t bias, int64_t H,
                      int64_t W, int64_t ya, int64_t yb, scalar_t* dst) {
  for (int64_t y = ya; y < yb; ++y) {
    scalar_t* o = dst + (y - ya) * W;
    for (int64_t x = 0; x < W; ++x) o[x] = bias;
    for (int64_t dy = -1; dy <= 1; ++dy) {
      const int64_t yy = y + dy;
      if (yy < 0 || yy >= H) continue;
      const scalar_t* kk = k + (dy + 1) * 3;
      row_taps(o, uplane + yy * W, kk[0], kk[1], kk[2], W);
    }
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& u, const Params<scalar_t>& p, at::Tensor& l, at::Tensor& sg) {
  const int64_t N = u.size(0), h = u.size(1), H = u.size(2), W = u.size(3), HW = H * W;
  const Tiles tiles(N, H, W);
  const scalar_t* up = u.const_data_ptr<scalar_t>();
  scalar_t* lp = l.data_ptr<scalar_t>();
  scalar_t* sp = sg.data_ptr<scalar_t>();
  if constexpr (std::is_same_v<scalar_t, float>) {
    parallel_items(tiles.count, [&](ItemQueue& queue) {
      const at::Tensor work =
          Scratch::get(4, 1, dw::forward_work(h, H, W, 0, tiles.rows_per_tile), u.options());
      for (int64_t t; queue.pop(t);) {
        int64_t n, y0, y1;
        tiles.get(t, n, y0, y1);
        dw::forward_tile(up + n * h * HW, h, H, W, y0, y1, p.K.data(), p.bias.data(), p.siw.data(),
                         p.sib, lp + n * h * HW, sp + n * HW, work.data_ptr<float>());
      }
    });
    return;
  }
  parallel_items(tiles.count, [&](ItemQueue& queue) {
    std::vector<scalar_t> s(static_cast<size_t>(tiles.rows_per_tile * W));
    for (int64_t t; queue.pop(t);) {
      int64_t n, y0, y1;
      tiles.get(t, n, y0, y1);
      const int64_t len = (y1 - y0) * W;
      std::fill(s.begin(), s.begin() + len, scalar_t(0));
      for (int64_t c = 0; c < h; ++c) {
        const int64_t plane = (n * h + c) * HW;
        scalar_t* lo = lp + plane + y0 * W;
        conv_rows(up + plane, p.K.data() + c * 9, p.bias[c], H, W, y0, y1, lo);
        const scalar_t w = p.siw[c];
        for (int64_t i = 0; i < len; ++i) s[i] += w * lo[i];
      }
      scalar_t* so = sp + n * HW + y0 * W;
      for (int64_t i = 0; i < len; ++i) so[i] = sigmoid(s[i] + p.sib);
    }
  });
}

// Per-tile partials: per channel 9 (grad_K) + conv_bias + si_weight; then si_bias.
constexpr int64_t kPer = 11;

template <typename scalar_t>
void backward_impl(const at::Tensor& gl, const at::Tensor& gsg, const at::Tensor& u,
                   const Params<scalar_t>& p, const at::Tensor& l, const at::Tensor& sg,
                   at::Tensor& gu, std::vector<double>& sums) {
  const int64_t N = u.size(0), h = u.size(1), H = u.size(2), W = u.size(3), HW = H * W;
  const Tiles tiles(N, H, W);
  const int64_t width = h * kPer + 1;
  std::vector<double> part(static_cast<size_t>(tiles.count * width), 0.0);
  const scalar_t* up = u.const_data_ptr<scalar_t>();
  const scalar_t* glp = gl.const_data_ptr<scalar_t>();
  const scalar_t* gsp = gsg.const_data_ptr<scalar_t>();
  scalar_t* gup = gu.data_ptr<scalar_t>();
  const int64_t max_rows = tiles.rows_per_tile + 2;
  static_assert(dw::kPer == kPer);

  if constexpr (std::is_same_v<scalar_t, float>) {
    const float* lp = l.defined() ? l.const_data_ptr<float>() : nullptr;
    const float* sgp = l.defined() ? sg.const_data_ptr<float>() : nullptr;
    parallel_items(tiles.count, [&](ItemQueue& queue) {
      const at::Tensor work =
          Scratch::get(4, 1, dw::backward_work(h, H, W, 1, 1 + tiles.rows_per_tile), u.options());
      for (int64_t t; queue.pop(t);) {
        int64_t n, y0, y1;
        tiles.get(t, n, y0, y1);
        dw::backward_tile(up + n * h * HW, glp + n * h * HW, gsp + n * HW, h, H, W, y0, y1,
                          p.K.data(), p.bias.data(), p.siw.data(), p.sib,
                          lp ? lp + n * h * HW : nullptr, sgp ? sgp + n * HW : nullptr,
                          gup + n * h * HW, part.data() + t * width, work.data_ptr<float>());
      }
    });
  } else {
    parallel_items(tiles.count, [&](ItemQueue& queue) {
      const at::Tensor lt = Scratch::get(4, h * max_rows, W, u.options());
      const at::Tensor st = Scratch::get(5, max_rows + 9, W, u.options());
      scalar_t* const lb = lt.data_ptr<scalar_t>();
      scalar_t* const s = st.data_ptr<scalar_t>();
      scalar_t* const acc = s + max_rows * W;
      for (int64_t t; queue.pop(t);) {
        int64_t n, y0, y1;
        tiles.get(t, n, y0, y1);
        const int64_t ya = std::max<int64_t>(0, y0 - 1), yb = std::min(H, y1 + 1);
        const int64_t R = yb - ya, len = R * W;
        const int64_t own0 = (y0 - ya) * W, own1 = (y1 - ya) * W;
        double* pt = part.data() + t * width;

        // Recompute l (rows ya..yb) and the gate pre-activation.
        std::fill(s, s + len, scalar_t(0));
        for (int64_t c = 0; c < h; ++c) {
          scalar_t* lc = lb + c * max_rows * W;
          conv_rows(up + (n * h + c) * HW, p.K.data() + c * 9, p.bias[c], H, W, ya, yb, lc);
          const scalar_t w = p.siw[c];
          for (int64_t i = 0; i < len; ++i) s[i] += w * lc[i];
        }
        // grad_s = grad_sg * sg (1 - sg), in place of s.
        const scalar_t* gsr = gsp + n * HW + ya * W;

        for (int64_t i = 0; i < len; ++i) {
          const scalar_t sgv = sigmoid(s[i] + p.sib);
          s[i] = gsr[i] * sgv * (scalar_t(1) - sgv);
        }
        pt[h * kPer] = sum_n(s + own0, own1 - own0);

        for (int64_t c = 0; c < h; ++c) {
          scalar_t* lc = lb + c * max_rows * W;
          const int64_t plane = (n * h + c) * HW;
          const scalar_t w = p.siw[c];
          const double gsiw = dot_n(s + own0, lc + own0, own1 - own0);
          // lc becomes grad_lt.
          const scalar_t* glr = glp + plane + ya * W;
          for (int64_t i = 0; i < len; ++i) lc[i] = glr[i] + s[i] * w;
          const double gcb = sum_n(lc + own0, own1 - own0);

          // grad_u = correlation of grad_lt with the flipped kernel.
          const scalar_t* k = p.K.data() + c * 9;
          for (int64_t y = y0; y < y1; ++y) {
            scalar_t* o = gup + plane + y * W;
            for (int64_t x = 0; x < W; ++x) o[x] = scalar_t(0);
            for (int64_t a = -1; a <= 1; ++a) {
              const int64_t yy = y + a;
              if (yy < 0 || yy >= H) continue;
              const scalar_t* kr = k + (1 - a) * 3;
              row_taps(o, lc + (yy - ya) * W, kr[2], kr[1], kr[0], W);
            }
          }

          // grad_K[a][b] = sum grad_lt[y][x] u[y + a - 1][x + b - 1], lane-wise over x.
          std::fill(acc, acc + 9 * W, scalar_t(0));
          const scalar_t* uplane = up + plane;
          for (int64_t y = y0; y < y1; ++y) {
            const scalar_t* g = lc + (y - ya) * W;
            for (int64_t a = 0; a < 3; ++a) {
              const int64_t yy = y + a - 1;
              if (yy < 0 || yy >= H) continue;
              const scalar_t* ur = uplane + yy * W;
              scalar_t* a0 = acc + (a * 3 + 0) * W;
              scalar_t* a1 = acc + (a * 3 + 1) * W;
              scalar_t* a2 = acc + (a * 3 + 2) * W;
              for (int64_t x = 1; x < W; ++x) a0[x] += g[x] * ur[x - 1];
              for (int64_t x = 0; x < W; ++x) a1[x] += g[x] * ur[x];
              for (int64_t x = 0; x + 1 < W; ++x) a2[x] += g[x] * ur[x + 1];
            }
          }
          double* pc = pt + c * kPer;
          for (int64_t tap = 0; tap < 9; ++tap) {
            const scalar_t* av = acc + tap * W;
            double sum = 0.0;
            for (int64_t x = 0; x < W; ++x) sum += av[x];
            pc[tap] = sum;
          }
          pc[9] = gcb;
          pc[10] = gsiw;
        }
      }
    });
  }

  sums.assign(static_cast<size_t>(width), 0.0);
  for (int64_t t = 0; t < tiles.count; ++t)
    for (int64_t e = 0; e < width; ++e) sums[e] += part[t * width + e];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> local_branch(const at::Tensor& u, const at::Tensor& conv_A,
                                                const at::Tensor& conv_B,
                                                const at::Tensor& conv_bias,
                                                const at::Tensor& si_weight,
                                                const at::Tensor& si_bias) {
  check_args(kFwd, u, conv_A, conv_B, conv_bias, si_weight, si_bias);
  const at::Tensor uc = u.contiguous();
  at::Tensor l = new_output(uc.sizes(), uc.options());
  at::Tensor sg = new_output({uc.size(0), uc.size(2), uc.size(3)}, uc.options());
  if (sg.numel() == 0) return {l, sg};
  AT_DISPATCH_FLOATING_TYPES(uc.scalar_type(), kFwd, [&] {
    const Params<scalar_t> p(conv_A, conv_B, conv_bias, si_weight, si_bias);
    forward_impl<scalar_t>(uc, p, l, sg);
  });
  return {l, sg};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
local_branch_backward(const at::Tensor& grad_l, const at::Tensor& grad_sg, const at::Tensor& u,
                      const at::Tensor& conv_A, const at::Tensor& conv_B,
                      const at::Tensor& conv_bias, const at::Tensor& si_weight,
                      const at::Tensor& si_bias) {
  return local_branch_backward(grad_l, grad_sg, u, conv_A, conv_B, conv_bias, si_weight, si_bias,
                               at::Tensor(), at::Tensor());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
local_branch_backward(const at::Tensor& grad_l, const at::Tensor& grad_sg, const at::Tensor& u,
                      const at::Tensor& conv_A, const at::Tensor& conv_B,
                      const at::Tensor& conv_bias, const at::Tensor& si_weight,
                      const at::Tensor& si_bias, const at::Tensor& l, const at::Tensor& sg) {
  check_args(kBwd, u, conv_A, conv_B, conv_bias, si_weight, si_bias);
  TORCH_CHECK(l.defined() == sg.defined(), kBwd, ": give both l and sg, or neither");
  if (l.defined()) {
    check_like(l, u, kBwd, "l", "u");
    check_like(sg, u, kBwd, "sg", "u");
    TORCH_CHECK(l.sizes() == u.sizes(), kBwd, ": l must have u's shape ", u.sizes(), ", got ",
                l.sizes());
    TORCH_CHECK(sg.dim() == 3 && sg.size(0) == u.size(0) && sg.size(1) == u.size(2) &&
                    sg.size(2) == u.size(3),
                kBwd, ": sg must have shape (N, H, W) = (", u.size(0), ", ", u.size(2), ", ",
                u.size(3), "), got ", sg.sizes());
  }
  check_like(grad_l, u, kBwd, "grad_l", "u");
  check_like(grad_sg, u, kBwd, "grad_sg", "u");
  TORCH_CHECK(grad_l.sizes() == u.sizes(), kBwd, ": grad_l must have u's shape ", u.sizes(),
              ", got ", grad_l.sizes());
  TORCH_CHECK(grad_sg.dim() == 3 && grad_sg.size(0) == u.size(0) && grad_sg.size(1) == u.size(2) &&
                  grad_sg.size(2) == u.size(3),
              kBwd, ": grad_sg must have shape (N, H, W) = (", u.size(0), ", ", u.size(2), ", ",
              u.size(3), "), got ", grad_sg.sizes());
  const at::Tensor uc = u.contiguous(), glc = grad_l.contiguous(), gsc = grad_sg.contiguous();
  const auto opts = uc.options();
  at::Tensor gu = new_output(uc.sizes(), opts);
  at::Tensor gA = new_output(conv_A.sizes(), opts);
  at::Tensor gB = new_output(conv_B.sizes(), opts);
  at::Tensor gcb = new_output(conv_bias.sizes(), opts);
  at::Tensor gsiw = new_output(si_weight.sizes(), opts);
  at::Tensor gsib = new_output(si_bias.sizes(), opts);
  const int64_t h = uc.size(1), r = conv_A.size(1);
  AT_DISPATCH_FLOATING_TYPES(uc.scalar_type(), kBwd, [&] {
    const Params<scalar_t> p(conv_A, conv_B, conv_bias, si_weight, si_bias);
    std::vector<double> sums(static_cast<size_t>(h * kPer + 1), 0.0);
    const at::Tensor lc = l.defined() ? l.contiguous() : l, sgc = sg.defined() ? sg.contiguous() : sg;
    if (gsc.numel() > 0) backward_impl<scalar_t>(glc, gsc, uc, p, lc, sgc, gu, sums);
    const at::Tensor Ac = conv_A.contiguous(), Bc = conv_B.contiguous();
    const scalar_t* a = Ac.const_data_ptr<scalar_t>();
    const scalar_t* b = Bc.const_data_ptr<scalar_t>();
    scalar_t* ga = gA.data_ptr<scalar_t>();
    scalar_t* gb = gB.data_ptr<scalar_t>();
    // grad_A = grad_K B^T, grad_B = A^T grad_K.
    for (int64_t c = 0; c < h; ++c)
      for (int64_t k = 0; k < r; ++k) {
        double s = 0.0;
        for (int64_t t = 0; t < 9; ++t) s += sums[c * kPer + t] * b[k * 9 + t];
        ga[c * r + k] = static_cast<scalar_t>(s);
      }
    for (int64_t k = 0; k < r; ++k)
      for (int64_t t = 0; t < 9; ++t) {
        double s = 0.0;
        for (int64_t c = 0; c < h; ++c) s += static_cast<double>(a[c * r + k]) * sums[c * kPer + t];
        gb[k * 9 + t] = static_cast<scalar_t>(s);
      }
    scalar_t* pcb = gcb.data_ptr<scalar_t>();
    scalar_t* psw = gsiw.data_ptr<scalar_t>();
    for (int64_t c = 0; c < h; ++c) {
      pcb[c] = static_cast<scalar_t>(sums[c * kPer + 9]);
      psw[c] = static_cast<scalar_t>(sums[c * kPer + 10]);
    }
    gsib.data_ptr<scalar_t>()[0] = static_cast<scalar_t>(sums[h * kPer]);
  });
  return {gu, gA, gB, gcb, gsiw, gsib};
}

TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m) {
  m.impl("local_branch", &local_branch);
  // The op's schema has no l and sg: the overload without them.
  using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, const at::Tensor&);
  m.impl("local_branch_backward", static_cast<Backward*>(&local_branch_backward));
}

}  // namespace adaptir::cpu
