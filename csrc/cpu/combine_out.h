// adaptir_cpp::combine_out: v = cs (cg l + sg g), out = tail(v) in the backbone layout
// (SPEC 5 step 5).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <tuple>

namespace adaptir::cpu {

// l, g: (N, h, H, W); sg: (N, H, W); cg, cs: (N, h); tail_w: (C, h).
// Returns out: (N, H, W, C) ("nhwc") or (H*W, N, C) ("lnc") of dtype out_dtype.
at::Tensor combine_out(const at::Tensor& l, const at::Tensor& g, const at::Tensor& sg,
                       const at::Tensor& cg, const at::Tensor& cs, const at::Tensor& tail_w,
                       c10::string_view layout, at::ScalarType out_dtype);

// Returns (grad_l, grad_g, grad_sg, grad_cg, grad_cs, grad_tail_w).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
combine_out_backward(const at::Tensor& grad_out, const at::Tensor& l, const at::Tensor& g,
                     const at::Tensor& sg, const at::Tensor& cg, const at::Tensor& cs,
                     const at::Tensor& tail_w, c10::string_view layout);

}  // namespace adaptir::cpu
