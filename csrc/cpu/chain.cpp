// adaptir_cpp::adaptir_chain and adaptir_cpp::bn_running_update_ (see chain.h).
//
// The chain is the same composition of the five operators as the Python autograd
// Function in adaptir_kernels/module.py (same saved tensors, same recomputation, same
// order of the gradient sums), so its output and gradients are bitwise those of that path
// with the "cpp" backend. The running statistics are updated in double and rounded once
// (the Python path's in-place ATen ops round twice): the same up to rounding. What the
// chain removes is the interpreter: one call from Python runs the forward, and the
// backward runs without entering Python at all. Inside a training step, where each
// Python line and each dispatcher call finds its code out of the caches, that is about a
// millisecond per adapter call.
#include "chain.h"

#include "combine_out.h"
#include "common.h"
#include "global_branch.h"
#include "local_branch.h"
#include "project_in.h"
#include "router.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/mul.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <string>

namespace adaptir::cpu {
namespace {

constexpr const char* kChain = "adaptir_chain";

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Parameter indices, as adaptir_kernels.module._PARAMETERS orders them.
enum P : int {
  kHeadW, kHeadB, kBnW, kBnB, kConvA, kConvB, kConvBias, kSiW, kSiB, kAmpW, kAmpB, kPhaW,
  kPhaB, kCompW, kCompB, kProj0W, kProj0B, kProj2W, kProj2B, kCi1W, kCi1B, kCi3W, kCi3B,
  kTailW
};

// The parameters in the operators' shapes (the views adaptir_kernels.module makes).
std::vector<at::Tensor> op_views(at::TensorList p) {
  TORCH_CHECK(static_cast<int64_t>(p.size()) == kChainParams, kChain, ": expected ",
              kChainParams, " parameters, got ", p.size());
  TORCH_CHECK(p[kHeadW].dim() >= 2 && p[kCi1W].dim() >= 1, kChain,
              ": head.weight must be (h, C, 1, 1) and channel_interaction.1.weight "
              "(ci, h, 1, 1), got shapes ", p[kHeadW].sizes(), " and ", p[kCi1W].sizes());
  const int64_t h = p[kHeadW].size(0), C = p[kHeadW].size(1), ci = p[kCi1W].size(0);
  std::vector<at::Tensor> v(p.begin(), p.end());
  v[kHeadW] = p[kHeadW].view({h, C});
  v[kSiW] = p[kSiW].view({h});
  v[kAmpW] = p[kAmpW].view({h});
  v[kPhaW] = p[kPhaW].view({h});
  v[kCompW] = p[kCompW].view({h});
  v[kCi1W] = p[kCi1W].view({ci, h});
  v[kCi3W] = p[kCi3W].view({h, ci});
  v[kTailW] = p[kTailW].view({C, h});
  return v;
}

struct Forward {
  at::Tensor out, mean, var, xhat, g, sign, gmean, cs, cg;
};

Forward run_forward(const at::Tensor& x, const at::Tensor& running_mean,
                    const at::Tensor& running_var, const std::vector<at::Tensor>& v,
                    bool training, double eps, c10::string_view layout, int64_t H, int64_t W) {
  Forward f;
  at::Tensor u;
  std::tie(u, f.xhat, f.mean, f.var) =
      project_in(x, v[kHeadW], v[kHeadB], v[kBnW], v[kBnB], running_mean, running_var,
                 training, eps, layout, H, W);
  auto [loc, sg] = local_branch(u, v[kConvA], v[kConvB], v[kConvBias], v[kSiW], v[kSiB]);
  std::tie(f.g, f.gmean, f.sign) = global_branch(u, v[kAmpW], v[kAmpB], v[kPhaW], v[kPhaB]);
  std::tie(f.cs, f.cg) = router(u, v[kCompW], v[kCompB], v[kProj0W], v[kProj0B], v[kProj2W],
                                v[kProj2B], f.gmean, v[kCi1W], v[kCi1B], v[kCi3W], v[kCi3B]);
  f.out = combine_out(loc, f.g, sg, f.cg, f.cs, v[kTailW], layout, x.scalar_type());
  return f;
}

// Element-wise passes of the backward over hidden-width tensors, in parallel and into
// cached outputs. at::addcmul's fresh output for u was page-faulted on every backward
// (0.6 ms of the backward at edt-train on an AMD EPYC; these take about 0.1 ms).
bool same_float_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.is_contiguous() &&
         b.is_contiguous() && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble);
}

// project_in's u = xhat * bn_w[j] + bn_b[j] over the (n, j) planes of xhat (N, h, H, W),
// rounded as its forward rounds it (a product, then a sum).
at::Tensor bn_affine(const at::Tensor& xhat, const at::Tensor& w, const at::Tensor& b) {
  const int64_t h = w.numel();
  if (xhat.dim() != 4 || xhat.size(1) != h || w.scalar_type() != xhat.scalar_type() ||
      b.scalar_type() != xhat.scalar_type() || !xhat.is_contiguous() ||
      (xhat.scalar_type() != at::kFloat && xhat.scalar_type() != at::kDouble))
    return at::add(at::mul(xhat, w.view({-1, 1, 1})), b.view({-1, 1, 1}));  // same rounding
  at::Tensor u = new_output(xhat.sizes(), xhat.options());
  const PlaneChunks pc(xhat.size(0) * h, xhat.size(2) * xhat.size(3), 4096);
  AT_DISPATCH_FLOATING_TYPES(xhat.scalar_type(), "bn_affine", [&] {
    const at::Tensor wc = w.contiguous(), bc = b.contiguous();
    const scalar_t* xp = xhat.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* up = u.data_ptr<scalar_t>();
    parallel_plane_chunks(pc, [&](int64_t p, int64_t begin, int64_t end, int64_t) {
      const scalar_t wj = wp[p % h], bj = bp[p % h];
      const scalar_t* xr = xp + p * pc.plane_len;
      scalar_t* ur = up + p * pc.plane_len;
      for (int64_t i = begin; i < end; ++i) ur[i] = xr[i] * wj + bj;
    });
  });
  return u;
}

// a = (a + b) + c, element-wise (a is an operator's own output).
void add_two_(at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  if (!same_float_layout(a, b) || !same_float_layout(a, c)) {
    a.add_(b).add_(c);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "add_two_", [&] {
    scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    at::parallel_for(0, a.numel(), int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) ap[i] = (ap[i] + bp[i]) + cp[i];
    });
  });
}

c10::OperatorHandle find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// The autograd node. Its forward and backward call adaptir_chain_forward and
// adaptir_chain_backward through the dispatcher (below autograd), so that FakeTensor
// tracing (torch.compile, opcheck) sees those ops, not the kernels.
class ChainFunction : public torch::autograd::Function<ChainFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               at::TensorList params, bool training, double eps,
                               c10::string_view layout, int64_t H, int64_t W) {
    static const auto op =
        find_op("adaptir_cpp::adaptir_chain_forward")
            .typed<ChainForward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                at::TensorList, bool, double, c10::string_view, int64_t,
                                int64_t)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor xc = x.contiguous();
    auto [out, mean, var, xhat, g, sign, gmean, cs, cg] =
        op.call(xc, running_mean, running_var, params, training, eps, layout, H, W);
    variable_list saved{xc, xhat, g, sign, gmean, cs, cg, var};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(std::move(saved));
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["layout"] = std::string(layout);
    ctx->saved_data["H"] = H;
    ctx->saved_data["W"] = W;
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);
    return {out, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op("adaptir_cpp::adaptir_chain_backward")
            .typed<std::vector<at::Tensor>(
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, at::TensorList, bool, double, c10::string_view, int64_t,
                int64_t)>();
    // One per forward argument: x, running_mean, running_var, the parameters, then the
    // five non-tensor arguments.
    variable_list result(3 + kChainParams + 5);
    const at::Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return result;
    // With create_graph the engine runs this under grad mode. The backward is explicit and
    // has no derivative of its own: compute it unrecorded, then make differentiating its
    // results an error (as Python's once_differentiable does), never a silent zero.
    const bool create_graph = at::GradMode::is_enabled();
    std::vector<at::Tensor> pg;
    {
      at::NoGradGuard no_grad;
      const variable_list s = ctx->get_saved_variables();
      pg = op.call(grad_out, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
                   at::TensorList(s.data() + 8, kChainParams), ctx->saved_data["training"].toBool(),
                   ctx->saved_data["eps"].toDouble(), ctx->saved_data["layout"].toStringRef(),
                   ctx->saved_data["H"].toInt(), ctx->saved_data["W"].toInt());
    }
    if (create_graph) {
      variable_list detached;
      detached.reserve(pg.size());
      for (const at::Tensor& t : pg) {
        at::Tensor d = t.detach();
        d.set_requires_grad(true);
        detached.push_back(std::move(d));
      }
      auto err = std::make_shared<torch::autograd::DelayedError>(
          "adaptir_cpp::adaptir_chain: the fused adapter's backward is not differentiable "
          "(no double backward); use adaptir_kernels.reference.AdaptIR for higher-order gradients",
          static_cast<int64_t>(detached.size()));
      pg = (*err)(std::move(detached));
    }
    result[0] = pg[0];
    std::copy(pg.begin() + 1, pg.end(), result.begin() + 3);
    return result;
  }
};

// Autograd key: one node for the whole adapter.
std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_autograd(
    const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& running_var,
    at::TensorList params, bool training, double eps, c10::string_view layout, int64_t H,
    int64_t W) {
  variable_list out = ChainFunction::apply(x, running_mean, running_var, params, training,
                                           eps, layout, H, W);
  return {out[0], out[1], out[2]};
}

}  // namespace

// CPU key (below autograd, e.g. under torch.inference_mode): the forward only.
std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptir_chain(
    const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& running_var,
    at::TensorList params, bool training, double eps, c10::string_view layout, int64_t H,
    int64_t W) {
  Forward f = run_forward(x.contiguous(), running_mean, running_var, op_views(params),
                          training, eps, layout, H, W);
  return {f.out, f.mean, f.var};
}

ChainForward adaptir_chain_forward(const at::Tensor& x, const at::Tensor& running_mean,
                                   const at::Tensor& running_var, at::TensorList params,
                                   bool training, double eps, c10::string_view layout,
                                   int64_t H, int64_t W) {
  Forward f = run_forward(x.contiguous(), running_mean, running_var, op_views(params),
                          training, eps, layout, H, W);
  return {f.out, f.mean, f.var, f.xhat, f.g, f.sign, f.gmean, f.cs, f.cg};
}

std::vector<at::Tensor> adaptir_chain_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& xhat,
    const at::Tensor& g, const at::Tensor& sign, const at::Tensor& gmean, const at::Tensor& cs,
    const at::Tensor& cg, const at::Tensor& var, at::TensorList params, bool training,
    double eps, c10::string_view layout, int64_t H, int64_t W) {
  const std::vector<at::Tensor> v = op_views(params);
  // project_in's u, as it defines it (train and eval): the BN affine of xhat.
  const at::Tensor u = bn_affine(xhat, v[kBnW], v[kBnB]);
  auto [loc, sg] = local_branch(u, v[kConvA], v[kConvB], v[kConvBias], v[kSiW], v[kSiB]);
  auto [g_l, g_g, g_sg, g_cg, g_cs, g_tail] =
      combine_out_backward(grad_out.contiguous(), loc, g, sg, cg, cs, v[kTailW], layout);
  auto [gu_router, g_gmean, g_cw, g_cb, g_p0w, g_p0b, g_p2w, g_p2b, g_c1w, g_c1b, g_c3w,
        g_c3b] = router_backward(g_cs, g_cg, u, v[kCompW], v[kCompB], v[kProj0W], v[kProj0B],
                                 v[kProj2W], v[kProj2B], gmean, v[kCi1W], v[kCi1B], v[kCi3W],
                                 v[kCi3B]);
  auto [gu_global, g_aw, g_ab, g_pw, g_pb] = global_branch_backward(
      g_g, g_gmean, u, g, sign, v[kAmpW], v[kAmpB], v[kPhaW], v[kPhaB]);
  auto [gu_local, g_A, g_B, g_cbias, g_siw, g_sib] = local_branch_backward(
      g_l, g_sg, u, v[kConvA], v[kConvB], v[kConvBias], v[kSiW], v[kSiB], loc, sg);
  at::Tensor grad_u = gu_global;  // the operator's own output
  add_two_(grad_u, gu_local, gu_router);
  auto [g_x, g_hw, g_hb, g_bnw, g_bnb] = project_in_backward(
      grad_u, x, xhat, v[kHeadW], v[kBnW], var, training, eps, layout, H, W);

  std::vector<at::Tensor> out{g_x,  g_hw,  g_hb,  g_bnw, g_bnb, g_A,   g_B,   g_cbias, g_siw,
                              g_sib, g_aw, g_ab,  g_pw,  g_pb,  g_cw,  g_cb,  g_p0w,   g_p0b,
                              g_p2w, g_p2b, g_c1w, g_c1b, g_c3w, g_c3b, g_tail};
  for (int64_t i = 0; i < kChainParams; ++i) {
    at::Tensor& gp = out[1 + i];
    if (gp.sizes() != params[i].sizes()) gp = gp.view(params[i].sizes());
  }
  return out;
}

void bn_running_update_(const at::Tensor& running_mean, const at::Tensor& running_var,
                        const at::Tensor& num_batches_tracked, const at::Tensor& mean,
                        const at::Tensor& var, std::optional<double> momentum, int64_t count) {
  constexpr const char* op = "bn_running_update_";
  TORCH_CHECK(count > 1, op, ": the unbiased variance needs count > 1, got ", count);
  TORCH_CHECK(running_mean.dim() == 1 && running_var.sizes() == running_mean.sizes(), op,
              ": running_mean and running_var must be vectors of one length, got shapes ",
              running_mean.sizes(), " and ", running_var.sizes());
  TORCH_CHECK(mean.sizes() == running_mean.sizes() && var.sizes() == running_var.sizes(), op,
              ": mean and var must have the running statistics' shape ", running_mean.sizes(),
              ", got ", mean.sizes(), " and ", var.sizes());
  TORCH_CHECK(num_batches_tracked.numel() == 1 && num_batches_tracked.scalar_type() == at::kLong,
              op, ": num_batches_tracked must be one int64, got ", num_batches_tracked.scalar_type(),
              " of shape ", num_batches_tracked.sizes());
  for (const at::Tensor* t : {&running_mean, &running_var, &num_batches_tracked, &mean, &var})
    check_cpu(*t, op, "every tensor");
  const at::ScalarType st = running_mean.scalar_type();
  TORCH_CHECK((st == at::kFloat || st == at::kDouble) && running_var.scalar_type() == st &&
                  mean.scalar_type() == st && var.scalar_type() == st,
              op, ": running statistics, mean and var must share one dtype, float32 or float64; got ",
              running_mean.scalar_type(), ", ", running_var.scalar_type(), ", ",
              mean.scalar_type(), ", ", var.scalar_type());
  TORCH_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(), op,
              ": the running statistics must be contiguous");
  // A dozen values: plain loops, where five ATen calls cost about 0.1 ms inside a step.
  int64_t& nbt = *num_batches_tracked.data_ptr<int64_t>();
  nbt += 1;
  const double f = momentum.has_value() ? *momentum : 1.0 / static_cast<double>(nbt);
  const double fv = f * static_cast<double>(count) / static_cast<double>(count - 1);
  const at::Tensor mc = mean.contiguous(), vc = var.contiguous();
  AT_DISPATCH_FLOATING_TYPES(st, op, [&] {
    // BatchNorm2d's update: (1 - f) running + f batch, the variance unbiased.
    scalar_t* rm = running_mean.data_ptr<scalar_t>();
    scalar_t* rv = running_var.data_ptr<scalar_t>();
    const scalar_t* bm = mc.data_ptr<scalar_t>();
    const scalar_t* bv = vc.data_ptr<scalar_t>();
    for (int64_t j = 0; j < running_mean.numel(); ++j) {  // in double, rounded once
      rm[j] = static_cast<scalar_t>((1.0 - f) * static_cast<double>(rm[j]) + f * static_cast<double>(bm[j]));
      rv[j] = static_cast<scalar_t>((1.0 - f) * static_cast<double>(rv[j]) + fv * static_cast<double>(bv[j]));
    }
  });
  // Written through pointers: bump the version counters as in-place ops do.
  for (const at::Tensor* t : {&running_mean, &running_var, &num_batches_tracked})
    t->unsafeGetTensorImpl()->bump_version();
}

TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m) {
  m.impl("adaptir_chain", &adaptir_chain);
  m.impl("adaptir_chain_forward", &adaptir_chain_forward);
  m.impl("adaptir_chain_backward", &adaptir_chain_backward);
  m.impl("bn_running_update_", &bn_running_update_);
}

TORCH_LIBRARY_IMPL(adaptir_cpp, Autograd, m) { m.impl("adaptir_chain", &chain_autograd); }

}  // namespace adaptir::cpu
