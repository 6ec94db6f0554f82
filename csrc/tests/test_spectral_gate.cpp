// C++ checks of the spectral gate kernels: a hand-computed forward, the SPEC 4.2
// conventions at U = 0, the dispatcher route, argument errors, and the backward
// against central finite differences.
#include "cpu/spectral_gate.h"

#include "tests/expect.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <tuple>

namespace {

using adaptir_test::failures;

#define EXPECT_NEAR(a, b, tol)                                                              \
  do {                                                                                     \
    const double va_ = (a), vb_ = (b);                                                     \
    if (!(std::fabs(va_ - vb_) <= (tol))) {                                                \
      std::fprintf(stderr, "%s:%d: %s = %.17g vs %s = %.17g (tol %g)\n", __FILE__, __LINE__, \
                   #a, va_, #b, vb_, static_cast<double>(tol));                            \
      ++failures;                                                                          \
    }                                                                                      \
  } while (0)

using adaptir::cpu::spectral_gate;
using adaptir::cpu::spectral_gate_backward;

at::Tensor vec(std::initializer_list<double> v) {
  return at::tensor(std::vector<double>(v), at::kDouble);
}

// U = [(3, 4), (0, 0), (-1, 0)] in one channel; aw = 2, ab = 0.5, pw = 0.5, pb = 0.1.
void test_hand_computed() {
  const at::Tensor U = vec({3, 4, 0, 0, -1, 0}).view({1, 1, 1, 3, 2});
  const at::Tensor aw = vec({2}), ab = vec({0.5}), pw = vec({0.5}), pb = vec({0.1});
  const at::Tensor G = spectral_gate(U, aw, ab, pw, pb);
  const double* g = G.const_data_ptr<double>();
  // (3, 4): A = 5, cos P = 0.6, so cos(P/2) = sqrt(0.8), sin(P/2) = sqrt(0.2);
  // A' = 10.5, P' = P/2 + 0.1.
  const double c2 = std::sqrt(0.8), s2 = std::sqrt(0.2), c1 = std::cos(0.1), s1 = std::sin(0.1);
  EXPECT_NEAR(g[0], 10.5 * (c2 * c1 - s2 * s1), 1e-14);
  EXPECT_NEAR(g[1], 10.5 * (s2 * c1 + c2 * s1), 1e-14);
  // (0, 0): A = 0, angle(0) = 0, so G = ab (cos pb, sin pb).
  EXPECT_NEAR(g[2], 0.5 * c1, 1e-15);
  EXPECT_NEAR(g[3], 0.5 * s1, 1e-15);
  // (-1, 0): A = 1, P = pi; A' = 2.5, P' = pi/2 + 0.1.
  EXPECT_NEAR(g[4], -2.5 * s1, 1e-14);
  EXPECT_NEAR(g[5], 2.5 * c1, 1e-14);

  // float32 follows the same formula.
  const at::Tensor Gf = spectral_gate(U.to(at::kFloat), aw.to(at::kFloat), ab.to(at::kFloat),
                                      pw.to(at::kFloat), pb.to(at::kFloat));
  EXPECT(Gf.scalar_type() == at::kFloat);
  EXPECT_NEAR((Gf.to(at::kDouble) - G).abs().max().item<double>(), 0.0, 1e-5);

  // Gradient of U is 0 at U = 0 (SPEC 4.2).
  const auto grads = spectral_gate_backward(at::ones_like(U), U, aw, ab, pw, pb);
  const double* gu = std::get<0>(grads).const_data_ptr<double>();
  EXPECT(gu[2] == 0.0 && gu[3] == 0.0);
}

void test_dispatcher_route() {
  at::manual_seed(1);
  const at::Tensor U = at::randn({2, 3, 4, 3, 2}, at::kDouble);
  const at::Tensor aw = at::randn({3}, at::kDouble), ab = at::randn({3}, at::kDouble);
  const at::Tensor pw = at::randn({3}, at::kDouble), pb = at::randn({3}, at::kDouble);
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("adaptir_cpp::spectral_gate", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, const at::Tensor&)>();
  const at::Tensor G = op.call(U, aw, ab, pw, pb);
  EXPECT(at::equal(G, spectral_gate(U, aw, ab, pw, pb)));
  EXPECT(c10::Dispatcher::singleton()
            .findSchema({"adaptir_cpp::spectral_gate_backward", ""})
            .has_value());
}

template <typename F>
bool throws_with(F f, const char* needle) {
  try {
    f();
  } catch (const c10::Error& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

void test_errors() {
  const at::Tensor p = at::zeros({3}, at::kFloat);
  EXPECT(throws_with([&] { spectral_gate(at::zeros({1, 3, 2, 2, 3}), p, p, p, p); },
                    "last dim of U must be 2"));
  EXPECT(throws_with([&] { spectral_gate(at::zeros({1, 3, 2, 2}), p, p, p, p); },
                    "(N, h, H, Wf, 2)"));
  EXPECT(throws_with([&] { spectral_gate(at::zeros({1, 4, 2, 2, 2}), p, p, p, p); },
                    "amp_w must have 4 elements"));
  EXPECT(throws_with([&] { spectral_gate(at::zeros({1, 3, 2, 2, 2}, at::kInt), p, p, p, p); },
                    "float32 or float64"));
  EXPECT(throws_with(
      [&] { spectral_gate(at::zeros({1, 3, 2, 2, 2}), p, p, p, p.to(at::kDouble)); },
      "pha_b has dtype Double"));
}

// Central differences of L = sum(W * G) against the backward with grad_G = W.
void test_finite_differences() {
  at::manual_seed(0);
  at::Tensor U = at::randn({2, 3, 3, 2, 2}, at::kDouble);
  U = U + 0.3 * U.sign();  // keep |U| away from the kink at 0
  std::vector<at::Tensor> params;
  for (int i = 0; i < 4; ++i) params.push_back(0.5 * at::randn({3}, at::kDouble));
  const at::Tensor W = at::randn_like(U);

  auto loss = [&](const at::Tensor& u, const std::vector<at::Tensor>& q) {
    return (W * spectral_gate(u, q[0], q[1], q[2], q[3])).sum().item<double>();
  };
  const auto grads = spectral_gate_backward(W, U, params[0], params[1], params[2], params[3]);
  const at::Tensor analytic[5] = {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads),
                                  std::get<3>(grads), std::get<4>(grads)};
  const double eps = 1e-6;
  for (int which = 0; which < 5; ++which) {
    const at::Tensor target = which == 0 ? U : params[which - 1];
    const at::Tensor ga = analytic[which];
    EXPECT(ga.sizes() == target.sizes());
    for (int64_t i = 0; i < target.numel(); ++i) {
      auto perturbed = [&](double delta) {
        at::Tensor u = U.clone();
        std::vector<at::Tensor> q;
        for (const auto& t : params) q.push_back(t.clone());
        at::Tensor t = which == 0 ? u : q[which - 1];
        t.view(-1)[i] += delta;
        return loss(u, q);
      };
      const double numeric = (perturbed(eps) - perturbed(-eps)) / (2 * eps);
      const double value = ga.reshape(-1)[i].item<double>();
      EXPECT_NEAR(value, numeric, 1e-6 * (1.0 + std::fabs(numeric)));
    }
  }
}

}  // namespace

int main() {
  test_hand_computed();
  test_dispatcher_route();
  test_errors();
  test_finite_differences();
  return adaptir_test::finish("spectral_gate");
}
