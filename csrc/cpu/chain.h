// adaptir_cpp::adaptir_chain: the whole adapter (SPEC 5 steps 1-5) as one autograd node
// whose forward and backward call the C++ operators directly, and
// adaptir_cpp::bn_running_update_: BatchNorm2d's running-statistics update.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <tuple>
#include <vector>

namespace adaptir::cpu {

// The number of parameters the chain takes, in the order of
// adaptir_kernels.module._PARAMETERS (each in its nn.Parameter's own shape).
constexpr int64_t kChainParams = 24;

// Returns (out, mean, var): out in x's layout and dtype; mean, var (h,) the batch
// statistics in training mode (the running ones in eval mode). Differentiable in x and
// every parameter; the backward is the chain's own (one autograd node).
std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptir_chain(
    const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& running_var,
    at::TensorList params, bool training, double eps, c10::string_view layout, int64_t H,
    int64_t W);

// The forward with what its backward keeps: (out, mean, var, xhat, g, sign, gmean, cs, cg).
using ChainForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
ChainForward adaptir_chain_forward(const at::Tensor& x, const at::Tensor& running_mean,
                                   const at::Tensor& running_var, at::TensorList params,
                                   bool training, double eps, c10::string_view layout,
                                   int64_t H, int64_t W);

// Returns (grad_x, then the 24 parameter gradients in the parameters' shapes).
std::vector<at::Tensor> adaptir_chain_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& xhat,
    const at::Tensor& g, const at::Tensor& sign, const at::Tensor& gmean, const at::Tensor& cs,
    const at::Tensor& cg, const at::Tensor& var, at::TensorList params, bool training,
    double eps, c10::string_view layout, int64_t H, int64_t W);

// num_batches_tracked += 1; f = momentum, or 1 / num_batches_tracked without one;
// running_mean = (1 - f) running_mean + f mean;
// running_var = (1 - f) running_var + f var count / (count - 1).
void bn_running_update_(const at::Tensor& running_mean, const at::Tensor& running_var,
                        const at::Tensor& num_batches_tracked, const at::Tensor& mean,
                        const at::Tensor& var, std::optional<double> momentum, int64_t count);

}  // namespace adaptir::cpu
