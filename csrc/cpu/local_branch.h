// adaptir_cpp::local_branch: factorised depthwise 3x3 conv, bias and spatial gate
// (SPEC 5 step 2).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace adaptir::cpu {

// u: (N, h, H, W). Returns (l, sg) with l: (N, h, H, W), sg: (N, H, W).
std::tuple<at::Tensor, at::Tensor> local_branch(const at::Tensor& u, const at::Tensor& conv_A,
                                                const at::Tensor& conv_B,
                                                const at::Tensor& conv_bias,
                                                const at::Tensor& si_weight,
                                                const at::Tensor& si_bias);

// Returns (grad_u, grad_conv_A, grad_conv_B, grad_conv_bias, grad_si_weight, grad_si_bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
local_branch_backward(const at::Tensor& grad_l, const at::Tensor& grad_sg, const at::Tensor& u,
                      const at::Tensor& conv_A, const at::Tensor& conv_B,
                      const at::Tensor& conv_bias, const at::Tensor& si_weight,
                      const at::Tensor& si_bias);

// The same with l and sg, local_branch(u, ...)'s outputs, at hand (both defined, or
// neither): the float32 kernels read them instead of recomputing them, with bitwise the
// same results. adaptir_chain's backward, which computes them anyway, passes them.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
local_branch_backward(const at::Tensor& grad_l, const at::Tensor& grad_sg, const at::Tensor& u,
                      const at::Tensor& conv_A, const at::Tensor& conv_B,
                      const at::Tensor& conv_bias, const at::Tensor& si_weight,
                      const at::Tensor& si_bias, const at::Tensor& l, const at::Tensor& sg);

}  // namespace adaptir::cpu
