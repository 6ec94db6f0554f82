// adaptir_cpp::global_branch: g = |irfft2(gate(rfft2(u)))| and its per-channel mean
// (SPEC 5 step 3).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace adaptir::cpu {

// u: (N, h, H, W); parameters: h elements each. Returns (g, gmean) with gmean (N, h).
std::tuple<at::Tensor, at::Tensor> global_branch(const at::Tensor& u, const at::Tensor& amp_w,
                                                 const at::Tensor& amp_b,
                                                 const at::Tensor& pha_w,
                                                 const at::Tensor& pha_b);

// Returns (grad_u, grad_amp_w, grad_amp_b, grad_pha_w, grad_pha_b).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_branch_backward(
    const at::Tensor& grad_g, const at::Tensor& grad_gmean, const at::Tensor& u,
    const at::Tensor& amp_w, const at::Tensor& amp_b, const at::Tensor& pha_w,
    const at::Tensor& pha_b);

}  // namespace adaptir::cpu
