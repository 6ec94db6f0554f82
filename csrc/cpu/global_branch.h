// adaptir_cpp::global_branch: g = |irfft2(gate(rfft2(u)))| and its per-channel mean
// (SPEC 5 step 3).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace adaptir::cpu {

// u: (N, h, H, W); parameters: h elements each. Returns (g, gmean, sign): gmean (N, h);
// sign (N, h, ceil(H*W / 8)) uint8, bit k of byte i of a plane set where the inverse
// transform y (g = |y|) is negative at position 8 i + k.
std::tuple<at::Tensor, at::Tensor, at::Tensor> global_branch(const at::Tensor& u,
                                                             const at::Tensor& amp_w,
                                                             const at::Tensor& amp_b,
                                                             const at::Tensor& pha_w,
                                                             const at::Tensor& pha_b);

// Returns (grad_u, grad_amp_w, grad_amp_b, grad_pha_w, grad_pha_b). With the forward's g
// and sign, sign(y) is read from them; with an empty sign (another backend's forward,
// which keeps none) y is recomputed from u and g is not read.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_branch_backward(
    const at::Tensor& grad_g, const at::Tensor& grad_gmean, const at::Tensor& u,
    const at::Tensor& g, const at::Tensor& sign, const at::Tensor& amp_w,
    const at::Tensor& amp_b, const at::Tensor& pha_w, const at::Tensor& pha_b);

}  // namespace adaptir::cpu
