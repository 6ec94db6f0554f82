// Spectral (amplitude/phase) gate of the AdaptIR global branch, SPEC 4 step 2.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace adaptir::cpu {

// U: real view of the complex half spectrum, (N, h, H, Wf, 2). Parameters: h
// elements each (any shape). Returns G with U's shape.
at::Tensor spectral_gate(const at::Tensor& U, const at::Tensor& amp_w,
                         const at::Tensor& amp_b, const at::Tensor& pha_w,
                         const at::Tensor& pha_b);

// Returns (grad_U, grad_amp_w, grad_amp_b, grad_pha_w, grad_pha_b); parameter
// gradients have their parameter's shape.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
spectral_gate_backward(const at::Tensor& grad_G, const at::Tensor& U,
                       const at::Tensor& amp_w, const at::Tensor& amp_b,
                       const at::Tensor& pha_w, const at::Tensor& pha_b);

}  // namespace adaptir::cpu
