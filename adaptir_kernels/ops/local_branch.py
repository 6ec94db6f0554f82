"""local_branch: the factorised depthwise 3x3 conv, its bias and the spatial gate.

Signature (every backend; tensors in the compute dtype, contiguous):
    forward(u, conv_A, conv_B, conv_bias, si_weight, si_bias) -> (l, sg)
        u: (N, h, H, W); conv_A (h, r); conv_B (r, 9); conv_bias (h); si_weight (h); si_bias (1)
        K = conv_A @ conv_B viewed (h, 3, 3); l = depthwise_conv3x3(u, K, zero padding 1) + conv_bias
        sg = sigmoid(sum_c si_weight[c] * l[:, c] + si_bias): (N, H, W)
    backward(grad_l, grad_sg, u, conv_A, conv_B, conv_bias, si_weight, si_bias)
        -> (grad_u, grad_conv_A, grad_conv_B, grad_conv_bias, grad_si_weight, grad_si_bias)
        l and sg are recomputed from u, never saved.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._registry import BackendTable, zeros_if_none


def _kernel(conv_A: Tensor, conv_B: Tensor) -> Tensor:
    return (conv_A @ conv_B).view(conv_A.shape[0], 1, 3, 3)


def forward_torch(u, conv_A, conv_B, conv_bias, si_weight, si_bias):
    h = u.shape[1]
    loc = F.conv2d(u, _kernel(conv_A, conv_B), conv_bias, padding=1, groups=h)
    sg = torch.sigmoid(torch.einsum("nchw,c->nhw", loc, si_weight) + si_bias)
    return loc, sg


def backward_torch(grad_l, grad_sg, u, conv_A, conv_B, conv_bias, si_weight, si_bias):
    h = u.shape[1]
    K = _kernel(conv_A, conv_B)
    loc, sg = forward_torch(u, conv_A, conv_B, conv_bias, si_weight, si_bias)
    grad_s = grad_sg * sg * (1 - sg)  # (N, H, W)
    grad_si_weight = torch.einsum("nhw,nchw->c", grad_s, loc)
    grad_si_bias = grad_s.sum().reshape(1)
    grad_lt = grad_l + grad_s[:, None] * si_weight[:, None, None]
    grad_conv_bias = grad_lt.sum((0, 2, 3))
    grad_u = torch.nn.grad.conv2d_input(u.shape, K, grad_lt, padding=1, groups=h)
    grad_K = torch.nn.grad.conv2d_weight(u, K.shape, grad_lt, padding=1, groups=h).view(h, 9)
    grad_conv_A = grad_K @ conv_B.t()
    grad_conv_B = conv_A.t() @ grad_K
    return grad_u, grad_conv_A, grad_conv_B, grad_conv_bias, grad_si_weight, grad_si_bias


TABLE = BackendTable("local_branch", (forward_torch, backward_torch))


@torch.library.custom_op("adaptir::local_branch", mutates_args=())
def local_branch(
    u: Tensor, conv_A: Tensor, conv_B: Tensor, conv_bias: Tensor, si_weight: Tensor, si_bias: Tensor,
    backend: str,
) -> Tuple[Tensor, Tensor]:
    return tuple(TABLE.forward(backend)(u, conv_A, conv_B, conv_bias, si_weight, si_bias))


@local_branch.register_fake
def _(u, conv_A, conv_B, conv_bias, si_weight, si_bias, backend):
    N, h, H, W = u.shape
    return u.new_empty(u.shape), u.new_empty((N, H, W))


@torch.library.custom_op("adaptir::local_branch_backward", mutates_args=())
def local_branch_backward(
    grad_l: Tensor, grad_sg: Tensor, u: Tensor, conv_A: Tensor, conv_B: Tensor, conv_bias: Tensor,
    si_weight: Tensor, si_bias: Tensor, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(TABLE.backward(backend)(grad_l, grad_sg, u, conv_A, conv_B, conv_bias, si_weight, si_bias))


@local_branch_backward.register_fake
def _(grad_l, grad_sg, u, conv_A, conv_B, conv_bias, si_weight, si_bias, backend):
    return (u.new_empty(u.shape), conv_A.new_empty(conv_A.shape), conv_B.new_empty(conv_B.shape),
            conv_bias.new_empty(conv_bias.shape), si_weight.new_empty(si_weight.shape), si_bias.new_empty(si_bias.shape))


def _setup_context(ctx, inputs, output):
    u, conv_A, conv_B, conv_bias, si_weight, si_bias, backend = inputs
    ctx.save_for_backward(u, conv_A, conv_B, conv_bias, si_weight, si_bias)
    ctx.backend = backend


def _backward(ctx, grad_l, grad_sg):
    u, conv_A, conv_B, conv_bias, si_weight, si_bias = ctx.saved_tensors
    N, h, H, W = u.shape
    grad_l = zeros_if_none(grad_l, u)
    grad_sg = zeros_if_none(grad_sg, u.new_empty((N, H, W)))
    grads = local_branch_backward(grad_l, grad_sg, u, conv_A, conv_B, conv_bias, si_weight, si_bias, ctx.backend)
    return (*grads, None)


local_branch.register_autograd(_backward, setup_context=_setup_context)
