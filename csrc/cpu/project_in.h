// adaptir_cpp::project_in: u = BN(head(x)) from x in the backbone layout (SPEC 5 step 1).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <tuple>

namespace adaptir::cpu {

// Returns (u, xhat, mean, var); u, xhat: (N, h, H, W) in the compute dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_in(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, bool training, double eps, c10::string_view layout,
    int64_t H, int64_t W);

// Returns (grad_x, grad_weight, grad_bias, grad_bn_weight, grad_bn_bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_in_backward(
    const at::Tensor& grad_u, const at::Tensor& x, const at::Tensor& xhat,
    const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& var,
    bool training, double eps, c10::string_view layout, int64_t H, int64_t W);

}  // namespace adaptir::cpu
