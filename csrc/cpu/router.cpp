// CPU kernels of adaptir_cpp::router and its backward (SPEC 5 step 4).
//
// Per sample n (one work item each): scores s = compress_w . u[n] + compress_b over the
// H*W positions, a = softmax(s), pooled = sum_p a_p u[n, :, p];
// cs = proj2(gelu(proj0(pooled))), cg = sigmoid(ci3(gelu(ci1(gmean[n])))), GELU exact
// (erf). The backward recomputes the sample's forward, writes grad_u[n] once
// (grad_pooled a + compress_w grad_s, a rank-2 update per sample) and keeps per-sample
// partials of the parameter gradients, summed in sample order afterwards, so results do
// not depend on the thread count. Reductions over positions accumulate in double.
#include "router.h"

#include "common.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

// lanes8_impl.h's 32-byte vectors pass through always-inlined helpers only.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace adaptir::cpu {
namespace {

constexpr const char* kFwd = "router";
constexpr const char* kBwd = "router_backward";

struct Dims {
  int64_t N, h, P, p, q;
};

void check_matrix(const at::Tensor& t, int64_t rows, int64_t cols, const at::Tensor& u,
                  const char* op, const char* name) {
  check_like(t, u, op, name, "u");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": ", name,
              " must have shape (", rows, ", ", cols, "), got ", t.sizes());
}

void check_vector(const at::Tensor& t, int64_t len, const at::Tensor& u, const char* op,
                  const char* name) {
  check_like(t, u, op, name, "u");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == len, op, ": ", name, " must have shape (", len,
              "), got ", t.sizes());
}

// One of the two MLPs h -> k -> h: weights (k, h) and (h, k), biases (k) and (h), with
// their schema names; returns the hidden width k.
int64_t check_mlp(const at::Tensor& w0, const at::Tensor& b0, const at::Tensor& w2,
                  const at::Tensor& b2, int64_t h, const at::Tensor& u, const char* op,
                  const char* const names[4], const char* k_name) {
  TORCH_CHECK(w0.dim() == 2, op, ": ", names[0], " must have shape (", k_name, ", h), got ",
              w0.sizes());
  const int64_t k = w0.size(0);
  check_matrix(w0, k, h, u, op, names[0]);
  check_vector(b0, k, u, op, names[1]);
  check_matrix(w2, h, k, u, op, names[2]);
  check_vector(b2, h, u, op, names[3]);
  return k;
}

Dims check_args(const char* op, const at::Tensor& u, const at::Tensor& cw, const at::Tensor& cb,
                const at::Tensor& p0w, const at::Tensor& p0b, const at::Tensor& p2w,
                const at::Tensor& p2b, const at::Tensor& gmean, const at::Tensor& c1w,
                const at::Tensor& c1b, const at::Tensor& c3w, const at::Tensor& c3b) {
  check_cpu(u, op, "u");
  check_floating(u, op, "u");
  TORCH_CHECK(u.dim() == 4, op, ": u must have shape (N, h, H, W), got ", u.sizes());
  Dims d;
  d.N = u.size(0);
  d.h = u.size(1);
  d.P = u.size(2) * u.size(3);
  TORCH_CHECK(d.P >= 1, op, ": u must have at least one position, got ", u.sizes());
  check_vector(cw, d.h, u, op, "compress_w");
  check_vector(cb, 1, u, op, "compress_b");
  static const char* const proj[4] = {"proj0_w", "proj0_b", "proj2_w", "proj2_b"};
  static const char* const ci[4] = {"ci1_w", "ci1_b", "ci3_w", "ci3_b"};
  d.p = check_mlp(p0w, p0b, p2w, p2b, d.h, u, op, proj, "p");
  check_matrix(gmean, d.N, d.h, u, op, "gmean");
  d.q = check_mlp(c1w, c1b, c3w, c3b, d.h, u, op, ci, "q");
  return d;
}

template <typename T>
T gelu(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * T(0.7071067811865476)));
}

template <typename T>
T gelu_grad(T x) {
  const T inv_sqrt_2pi = T(0.3989422804014327);
  return T(0.5) * (T(1) + std::erf(x * T(0.7071067811865476))) + x * std::exp(T(-0.5) * x * x) * inv_sqrt_2pi;
}

// y[i] = b[i] + sum_j w[i, j] x[j]; w: (rows, cols) row-major.
template <typename T>
void affine(const T* w, const T* b, const T* x, int64_t rows, int64_t cols, T* y) {
  for (int64_t i = 0; i < rows; ++i) {
    T s = b[i];
    for (int64_t j = 0; j < cols; ++j) s += w[i * cols + j] * x[j];
    y[i] = s;
  }
}

// y[j] = sum_i w[i, j] x[i]; w: (rows, cols).
template <typename T>
void affine_t(const T* w, const T* x, int64_t rows, int64_t cols, T* y) {
  for (int64_t j = 0; j < cols; ++j) y[j] = T(0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) y[j] += w[i * cols + j] * x[i];
}

template <typename T>
struct Weights {
  const T *cw, *p0w, *p0b, *p2w, *p2b, *c1w, *c1b, *c3w, *c3b;
  T cb;
};

// ---- loops over the positions of one sample ------------------------------------
// Generic (float64) versions, and float32 ones compiled for AVX2 (without FMA, so they
// round as the baseline build does) and for the baseline, picked at load time.

// y[i] += w x[i].
template <typename T>
void axpy(T* __restrict y, T w, const T* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += w * x[i];
}

// common.h's dot_n.
template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  return dot_n(a, b, n);
}

// max_i a[i] (n >= 1), as std::max over i in order for finite values.
template <typename T>
T max_of(const T* a, int64_t n) {
  T m = a[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, a[i]);
  return m;
}

// a[i] = exp(a[i] - m) in place; returns their sum (in double).
template <typename T>
double exp_shift(T* a, int64_t n, T m) {
  double z = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    a[i] = std::exp(a[i] - m);
    z += a[i];
  }
  return z;
}

// out[i] = g a[i] + wc gs[i].
template <typename T>
void rank2(T* __restrict out, T g, const T* __restrict a, T wc, const T* __restrict gs, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g * a[i] + wc * gs[i];
}

namespace lanes {
#include "lanes8_impl.h"
}  // namespace lanes

ADAPTIR_CLONES
void axpy_f32(float* __restrict y, float w, const float* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += w * x[i];
}

// dot_n's eight partial sums, in the same order, written out here: calling dot_n (even
// forced inline) from this clone ran about a tenth slower on an AMD EPYC.
ADAPTIR_CLONES
double dot_f32(const float* a, const float* b, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(a[i + k]) * static_cast<double>(b[i + k]);
  for (; i < n; ++i) acc[0] += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Eight running maxima, then their maximum: the same value as the ordered loop unless a
// NaN is present (which the softmax then carries to every output either way).
ADAPTIR_CLONES
float max_f32(const float* a, int64_t n) {
  using namespace lanes;
  if (n < 8) return max_of(a, n);
  vf mv = ld(a);
  int64_t i = 8;
  for (; i + 8 <= n; i += 8) {
    const vf x = ld(a + i);
    mv = mv < x ? x : mv;
  }
  float m = mv[0];
  for (int k = 1; k < 8; ++k) m = std::max(m, mv[k]);
  for (; i < n; ++i) m = std::max(m, a[i]);
  return m;
}

// exp_shift with lanes8's exp (within about two ulps; arguments below -87 give
// exp(-87)), summed in eight double partial sums.
ADAPTIR_CLONES
double exp_shift_f32(float* a, int64_t n, float m) {
  using namespace lanes;
  typedef double vd __attribute__((vector_size(32)));
  typedef float vf4 __attribute__((vector_size(16)));
  vd lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
  const vf mv = bc(m);
  auto add = [&](vf e) {
    lo += __builtin_convertvector((vf4)__builtin_shufflevector(e, e, 0, 1, 2, 3), vd);
    hi += __builtin_convertvector((vf4)__builtin_shufflevector(e, e, 4, 5, 6, 7), vd);
  };
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const vf e = vexp(ld(a + i) - mv);
    st(a + i, e);
    add(e);
  }
  if (i < n) {  // the last 1-7: lanes past n add zero
    float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    __builtin_memcpy(t, a + i, sizeof(float) * (n - i));
    st(t, vexp(ld(t) - mv));
    for (int64_t j = n - i; j < 8; ++j) t[j] = 0.0f;
    __builtin_memcpy(a + i, t, sizeof(float) * (n - i));
    add(ld(t));
  }
  return ((lo[0] + hi[0]) + (lo[1] + hi[1])) + ((lo[2] + hi[2]) + (lo[3] + hi[3]));
}

ADAPTIR_CLONES
void rank2_f32(float* __restrict out, float g, const float* __restrict a, float wc,
               const float* __restrict gs, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g * a[i] + wc * gs[i];
}

template <>
void axpy<float>(float* __restrict y, float w, const float* __restrict x, int64_t n) {
  axpy_f32(y, w, x, n);
}
template <>
double dot<float>(const float* a, const float* b, int64_t n) {
  return dot_f32(a, b, n);
}
template <>
double exp_shift<float>(float* a, int64_t n, float m) {
  return exp_shift_f32(a, n, m);
}
template <>
void rank2<float>(float* __restrict out, float g, const float* __restrict a, float wc,
                  const float* __restrict gs, int64_t n) {
  rank2_f32(out, g, a, wc, gs, n);
}

// One sample's attention and pooling: a (P), pooled (h). u_n: (h, P).
template <typename T>
void attend(const T* u_n, const Weights<T>& w, const Dims& d, T* a, T* pooled) {
  const int64_t h = d.h, P = d.P;
  for (int64_t i = 0; i < P; ++i) a[i] = w.cb;
  for (int64_t c = 0; c < h; ++c) axpy(a, w.cw[c], u_n + c * P, P);
  T m;
  if constexpr (std::is_same_v<T, float>)
    m = max_f32(a, P);
  else
    m = max_of(a, P);
  const T inv = static_cast<T>(1.0 / exp_shift(a, P, m));
  for (int64_t i = 0; i < P; ++i) a[i] *= inv;
  for (int64_t c = 0; c < h; ++c) pooled[c] = static_cast<T>(dot(a, u_n + c * P, P));
}

template <typename T>
Weights<T> weights(const at::Tensor& cw, const at::Tensor& cb, const at::Tensor& p0w,
                   const at::Tensor& p0b, const at::Tensor& p2w, const at::Tensor& p2b,
                   const at::Tensor& c1w, const at::Tensor& c1b, const at::Tensor& c3w,
                   const at::Tensor& c3b) {
  Weights<T> w;
  w.cw = cw.const_data_ptr<T>();
  w.cb = cb.const_data_ptr<T>()[0];
  w.p0w = p0w.const_data_ptr<T>();
  w.p0b = p0b.const_data_ptr<T>();
  w.p2w = p2w.const_data_ptr<T>();
  w.p2b = p2b.const_data_ptr<T>();
  w.c1w = c1w.const_data_ptr<T>();
  w.c1b = c1b.const_data_ptr<T>();
  w.c3w = c3w.const_data_ptr<T>();
  w.c3b = c3b.const_data_ptr<T>();
  return w;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> router(const at::Tensor& u, const at::Tensor& compress_w,
                                          const at::Tensor& compress_b, const at::Tensor& proj0_w,
                                          const at::Tensor& proj0_b, const at::Tensor& proj2_w,
                                          const at::Tensor& proj2_b, const at::Tensor& gmean,
                                          const at::Tensor& ci1_w, const at::Tensor& ci1_b,
                                          const at::Tensor& ci3_w, const at::Tensor& ci3_b) {
  const Dims d = check_args(kFwd, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                            gmean, ci1_w, ci1_b, ci3_w, ci3_b);
  const auto opts = u.options();
  at::Tensor cs = new_output({d.N, d.h}, opts), cg = new_output({d.N, d.h}, opts);
  const at::Tensor uc = u.contiguous(), gm = gmean.contiguous();
  const at::Tensor t[10] = {compress_w.contiguous(), compress_b.contiguous(), proj0_w.contiguous(),
                            proj0_b.contiguous(),    proj2_w.contiguous(),    proj2_b.contiguous(),
                            ci1_w.contiguous(),      ci1_b.contiguous(),      ci3_w.contiguous(),
                            ci3_b.contiguous()};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), kFwd, [&] {
    using T = scalar_t;
    const Weights<T> w = weights<T>(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9]);
    const T* up = uc.const_data_ptr<T>();
    const T* gmp = gm.const_data_ptr<T>();
    T* csp = cs.data_ptr<T>();
    T* cgp = cg.data_ptr<T>();
    parallel_items(d.N, [&](ItemQueue& queue) {
      std::vector<T> a(d.P), pooled(d.h), hid(std::max(d.p, d.q)), o(d.h);
      for (int64_t n; queue.pop(n);) {
        attend(up + n * d.h * d.P, w, d, a.data(), pooled.data());
        affine(w.p0w, w.p0b, pooled.data(), d.p, d.h, hid.data());
        for (int64_t i = 0; i < d.p; ++i) hid[i] = gelu(hid[i]);
        affine(w.p2w, w.p2b, hid.data(), d.h, d.p, csp + n * d.h);
        affine(w.c1w, w.c1b, gmp + n * d.h, d.q, d.h, hid.data());
        for (int64_t i = 0; i < d.q; ++i) hid[i] = gelu(hid[i]);
        affine(w.c3w, w.c3b, hid.data(), d.h, d.q, o.data());
        for (int64_t c = 0; c < d.h; ++c) cgp[n * d.h + c] = sigmoid(o[c]);
      }
    });
  });
  return {cs, cg};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
router_backward(const at::Tensor& grad_cs, const at::Tensor& grad_cg, const at::Tensor& u,
                const at::Tensor& compress_w, const at::Tensor& compress_b,
                const at::Tensor& proj0_w, const at::Tensor& proj0_b, const at::Tensor& proj2_w,
                const at::Tensor& proj2_b, const at::Tensor& gmean, const at::Tensor& ci1_w,
                const at::Tensor& ci1_b, const at::Tensor& ci3_w, const at::Tensor& ci3_b) {
  const Dims d = check_args(kBwd, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                            gmean, ci1_w, ci1_b, ci3_w, ci3_b);
  check_matrix(grad_cs, d.N, d.h, u, kBwd, "grad_cs");
  check_matrix(grad_cg, d.N, d.h, u, kBwd, "grad_cg");
  const auto opts = u.options();
  at::Tensor g_u = new_output(u.sizes(), opts.memory_format(at::MemoryFormat::Contiguous));
  at::Tensor g_gm = new_output({d.N, d.h}, opts);
  at::Tensor g_cw = new_output({d.h}, opts), g_cb = new_output({1}, opts);
  at::Tensor g_p0w = new_output({d.p, d.h}, opts), g_p0b = new_output({d.p}, opts);
  at::Tensor g_p2w = new_output({d.h, d.p}, opts), g_p2b = new_output({d.h}, opts);
  at::Tensor g_c1w = new_output({d.q, d.h}, opts), g_c1b = new_output({d.q}, opts);
  at::Tensor g_c3w = new_output({d.h, d.q}, opts), g_c3b = new_output({d.h}, opts);
  const at::Tensor uc = u.contiguous(), gm = gmean.contiguous();
  const at::Tensor gcs = grad_cs.contiguous(), gcg = grad_cg.contiguous();
  const at::Tensor t[10] = {compress_w.contiguous(), compress_b.contiguous(), proj0_w.contiguous(),
                            proj0_b.contiguous(),    proj2_w.contiguous(),    proj2_b.contiguous(),
                            ci1_w.contiguous(),      ci1_b.contiguous(),      ci3_w.contiguous(),
                            ci3_b.contiguous()};
  // Per-sample partials, laid out one after another in this order:
  const int64_t h = d.h, p = d.p, q = d.q;
  const int64_t o_cw = 0, o_cb = o_cw + h, o_p0w = o_cb + 1, o_p0b = o_p0w + p * h,
                o_p2w = o_p0b + p, o_p2b = o_p2w + h * p, o_c1w = o_p2b + h, o_c1b = o_c1w + q * h,
                o_c3w = o_c1b + q, o_c3b = o_c3w + h * q, width = o_c3b + h;
  std::vector<double> part(static_cast<size_t>(d.N * width), 0.0);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), kBwd, [&] {
    using T = scalar_t;
    const Weights<T> w = weights<T>(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9]);
    const T* up = uc.const_data_ptr<T>();
    const T* gmp = gm.const_data_ptr<T>();
    const T* gcsp = gcs.const_data_ptr<T>();
    const T* gcgp = gcg.const_data_ptr<T>();
    T* gup = g_u.data_ptr<T>();
    T* ggmp = g_gm.data_ptr<T>();
    parallel_items(d.N, [&](ItemQueue& queue) {
      std::vector<T> a(d.P), gs(d.P), pooled(h), hid(std::max(p, q)), act(std::max(p, q)),
          ghid(std::max(p, q)), gpool(h), o(h), go(h);
      for (int64_t n; queue.pop(n);) {
        double* pt = part.data() + n * width;
        const T* u_n = up + n * h * d.P;
        const T* gc = gcsp + n * h;
        attend(u_n, w, d, a.data(), pooled.data());
        // cs = proj2(gelu(proj0(pooled)))
        affine(w.p0w, w.p0b, pooled.data(), p, h, hid.data());
        for (int64_t i = 0; i < p; ++i) act[i] = gelu(hid[i]);
        for (int64_t c = 0; c < h; ++c) {
          pt[o_p2b + c] = gc[c];
          for (int64_t i = 0; i < p; ++i) pt[o_p2w + c * p + i] = static_cast<double>(gc[c]) * act[i];
        }
        affine_t(w.p2w, gc, h, p, ghid.data());
        for (int64_t i = 0; i < p; ++i) {
          ghid[i] *= gelu_grad(hid[i]);
          pt[o_p0b + i] = ghid[i];
          for (int64_t c = 0; c < h; ++c) pt[o_p0w + i * h + c] = static_cast<double>(ghid[i]) * pooled[c];
        }
        affine_t(w.p0w, ghid.data(), p, h, gpool.data());
        // pooled = sum_p a_p u_p, a = softmax(s): grad_a = gpool . u, grad_s = a (grad_a - a . grad_a)
        for (int64_t i = 0; i < d.P; ++i) gs[i] = T(0);
        for (int64_t c = 0; c < h; ++c) axpy(gs.data(), gpool[c], u_n + c * d.P, d.P);
        const T ag = static_cast<T>(dot(a.data(), gs.data(), d.P));
        for (int64_t i = 0; i < d.P; ++i) gs[i] = a[i] * (gs[i] - ag);
        pt[o_cb] = sum_n(gs.data(), d.P);
        for (int64_t c = 0; c < h; ++c) {
          pt[o_cw + c] = dot(gs.data(), u_n + c * d.P, d.P);
          rank2(gup + (n * h + c) * d.P, gpool[c], a.data(), w.cw[c], gs.data(), d.P);
        }
        // cg = sigmoid(ci3(gelu(ci1(gmean))))
        const T* gm_n = gmp + n * h;
        affine(w.c1w, w.c1b, gm_n, q, h, hid.data());
        for (int64_t i = 0; i < q; ++i) act[i] = gelu(hid[i]);
        affine(w.c3w, w.c3b, act.data(), h, q, o.data());
        for (int64_t c = 0; c < h; ++c) {
          const T s = sigmoid(o[c]);
          go[c] = gcgp[n * h + c] * s * (T(1) - s);
          pt[o_c3b + c] = go[c];
          for (int64_t i = 0; i < q; ++i) pt[o_c3w + c * q + i] = static_cast<double>(go[c]) * act[i];
        }
        affine_t(w.c3w, go.data(), h, q, ghid.data());
        for (int64_t i = 0; i < q; ++i) {
          ghid[i] *= gelu_grad(hid[i]);
          pt[o_c1b + i] = ghid[i];
          for (int64_t c = 0; c < h; ++c) pt[o_c1w + i * h + c] = static_cast<double>(ghid[i]) * gm_n[c];
        }
        affine_t(w.c1w, ghid.data(), q, h, ggmp + n * h);
      }
    });
    // Parameter gradients: per-sample partials summed in sample order.
    const std::vector<double> sums = sum_partials(part.data(), d.N, width);
    auto store = [&](at::Tensor& dst, int64_t off) {
      T* o_ = dst.data_ptr<T>();
      for (int64_t e = 0; e < dst.numel(); ++e) o_[e] = static_cast<T>(sums[off + e]);
    };
    store(g_cw, o_cw);
    store(g_cb, o_cb);
    store(g_p0w, o_p0w);
    store(g_p0b, o_p0b);
    store(g_p2w, o_p2w);
    store(g_p2b, o_p2b);
    store(g_c1w, o_c1w);
    store(g_c1b, o_c1b);
    store(g_c3w, o_c3w);
    store(g_c3b, o_c3b);
  });
  return {g_u, g_gm, g_cw, g_cb, g_p0w, g_p0b, g_p2w, g_p2b, g_c1w, g_c1b, g_c3w, g_c3b};
}

TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m) {
  m.impl("router", &router);
  m.impl("router_backward", &router_backward);
}

}  // namespace adaptir::cpu
