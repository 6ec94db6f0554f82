// adaptir_cpp::router: the per-sample channel score cs and channel gate cg (SPEC 5
// step 4).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace adaptir::cpu {

// u: (N, h, H, W); gmean: (N, h). Returns (cs, cg), each (N, h).
std::tuple<at::Tensor, at::Tensor> router(const at::Tensor& u, const at::Tensor& compress_w,
                                          const at::Tensor& compress_b, const at::Tensor& proj0_w,
                                          const at::Tensor& proj0_b, const at::Tensor& proj2_w,
                                          const at::Tensor& proj2_b, const at::Tensor& gmean,
                                          const at::Tensor& ci1_w, const at::Tensor& ci1_b,
                                          const at::Tensor& ci3_w, const at::Tensor& ci3_b);

// Returns (grad_u, grad_gmean, grad_compress_w, grad_compress_b, grad_proj0_w,
// grad_proj0_b, grad_proj2_w, grad_proj2_b, grad_ci1_w, grad_ci1_b, grad_ci3_w, grad_ci3_b).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
router_backward(const at::Tensor& grad_cs, const at::Tensor& grad_cg, const at::Tensor& u,
                const at::Tensor& compress_w, const at::Tensor& compress_b,
                const at::Tensor& proj0_w, const at::Tensor& proj0_b, const at::Tensor& proj2_w,
                const at::Tensor& proj2_b, const at::Tensor& gmean, const at::Tensor& ci1_w,
                const at::Tensor& ci1_b, const at::Tensor& ci3_w, const at::Tensor& ci3_b);

}  // namespace adaptir::cpu
