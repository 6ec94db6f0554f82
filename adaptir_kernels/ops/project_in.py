"""project_in: x in the backbone's layout -> u = BN(head(x)), hidden layout (N, h, H, W).

Signature (every backend):
    forward(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
            training, eps, layout, H, W) -> (u, xhat, mean, var)
        x: (N, H, W, C) for layout "nhwc" or (H*W, N, C) for "lnc", contiguous, any
           float dtype; the compute dtype is float64 for float64 x, else float32.
        weight (h, C), bias, bn_weight, bn_bias, running_mean, running_var (h): compute dtype.
        u, xhat: (N, h, H, W) contiguous, compute dtype; xhat = (z - mean) / sqrt(var + eps)
           with z = x @ weight.T + bias, and u = xhat * bn_weight + bn_bias.
        mean, var: (h). Training: the batch mean and biased variance of z over (N, H, W).
           Eval: copies of running_mean and running_var. The running-buffer update is the
           caller's (module.py), from these two vectors, exactly as BatchNorm2d does it.
    backward(grad_u, x, xhat, weight, bn_weight, var, training, eps, layout, H, W)
        -> (grad_x, grad_weight, grad_bias, grad_bn_weight, grad_bn_bias)
        grad_x has x's layout and dtype; it is written once, and x is read once.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ._products import linear_rows
from ._registry import BackendTable, zeros_if_none


def rows_to_hidden(z: Tensor, layout: str, N: int, H: int, W: int) -> Tensor:
    """(rows, h) in the backbone's row order -> (N, h, H, W) contiguous."""
    h = z.shape[-1]
    if layout == "nhwc":
        return z.view(N, H, W, h).permute(0, 3, 1, 2).contiguous()
    return z.view(H, W, N, h).permute(2, 3, 0, 1).contiguous()


def hidden_to_rows(t: Tensor, layout: str) -> Tensor:
    """(N, h, H, W) -> (rows, h) in the backbone's row order."""
    N, h, H, W = t.shape
    if layout == "nhwc":
        return t.permute(0, 2, 3, 1).reshape(-1, h)
    return t.permute(2, 3, 0, 1).reshape(-1, h)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def forward_torch(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, eps, layout, H, W):
    C = x.shape[-1]
    N = x.shape[0] if layout == "nhwc" else x.shape[1]
    z = torch.addmm(bias, x.reshape(-1, C).to(_compute_dtype(x)), weight.t())
    if training:
        # The mean as a sum over the count, as BatchNorm2d computes it: an inf in z gives
        # an inf mean there (var_mean's running update would give NaN), so the running
        # buffers match the reference's.
        mean = z.mean(dim=0)
        var = torch.var(z, dim=0, correction=0)
    else:
        mean, var = running_mean.clone(), running_var.clone()
    xhat_rows = (z - mean) * torch.rsqrt(var + eps)
    xhat = rows_to_hidden(xhat_rows, layout, N, H, W)
    u = xhat * bn_weight[:, None, None] + bn_bias[:, None, None]
    return u, xhat, mean, var


def backward_torch(grad_u, x, xhat, weight, bn_weight, var, training, eps, layout, H, W):
    invstd = torch.rsqrt(var + eps)
    dims = (0, 2, 3)
    grad_bn_bias = grad_u.sum(dims)
    grad_bn_weight = (grad_u * xhat).sum(dims)
    scale = (bn_weight * invstd)[:, None, None]
    if training:
        m = xhat.numel() // xhat.shape[1]
        grad_z = scale * (grad_u - (grad_bn_bias / m)[:, None, None] - xhat * (grad_bn_weight / m)[:, None, None])
    else:
        grad_z = scale * grad_u
    gz = hidden_to_rows(grad_z, layout)
    C = x.shape[-1]
    x2 = x.reshape(-1, C).to(gz.dtype)
    grad_weight = gz.t() @ x2
    grad_bias = gz.sum(0)
    grad_x = linear_rows(gz, weight.t()).to(x.dtype).view(x.shape)
    return grad_x, grad_weight, grad_bias, grad_bn_weight, grad_bn_bias


TABLE = BackendTable("project_in", (forward_torch, backward_torch))


@torch.library.custom_op("adaptir::project_in", mutates_args=())
def project_in(
    x: Tensor, weight: Tensor, bias: Tensor, bn_weight: Tensor, bn_bias: Tensor,
    running_mean: Tensor, running_var: Tensor, training: bool, eps: float,
    layout: str, H: int, W: int, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(TABLE.forward(backend)(
        x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, eps, layout, H, W))


@project_in.register_fake
def _(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, eps, layout, H, W, backend):
    N = x.shape[0] if layout == "nhwc" else x.shape[1]
    h = weight.shape[0]
    u = weight.new_empty((N, h, H, W))
    return u, u.new_empty(u.shape), weight.new_empty((h,)), weight.new_empty((h,))


@torch.library.custom_op("adaptir::project_in_backward", mutates_args=())
def project_in_backward(
    grad_u: Tensor, x: Tensor, xhat: Tensor, weight: Tensor, bn_weight: Tensor, var: Tensor,
    training: bool, eps: float, layout: str, H: int, W: int, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(TABLE.backward(backend)(grad_u, x, xhat, weight, bn_weight, var, training, eps, layout, H, W))


@project_in_backward.register_fake
def _(grad_u, x, xhat, weight, bn_weight, var, training, eps, layout, H, W, backend):
    h = weight.shape[0]
    return (x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty((h,)),
            weight.new_empty((h,)), weight.new_empty((h,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias, bn_weight, bn_bias, rm, rv, training, eps, layout, H, W, backend = inputs
    u, xhat, mean, var = output
    ctx.mark_non_differentiable(xhat, mean, var)
    ctx.save_for_backward(x, xhat, weight, bn_weight, var)
    ctx.args = (training, eps, layout, H, W, backend)


def _backward(ctx, grad_u, grad_xhat, grad_mean, grad_var):
    x, xhat, weight, bn_weight, var = ctx.saved_tensors
    training, eps, layout, H, W, backend = ctx.args
    gx, gw, gb, gbw, gbb = project_in_backward(
        zeros_if_none(grad_u, xhat), x, xhat, weight, bn_weight, var, training, eps, layout, H, W, backend)
    return gx, gw, gb, gbw, gbb, None, None, None, None, None, None, None, None


project_in.register_autograd(_backward, setup_context=_setup_context)
