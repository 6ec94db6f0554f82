"""combine_out: v = cs * (cg * l + sg * g), out = tail(v), written in the backbone's layout.

Signature (every backend; hidden tensors in the compute dtype, contiguous):
    forward(l, g, sg, cg, cs, tail_w, layout, out_dtype) -> out
        l, g: (N, h, H, W); sg: (N, H, W); cg, cs: (N, h); tail_w: (C, h)
        out: (N, H, W, C) for layout "nhwc", (H*W, N, C) for "lnc", dtype out_dtype,
        out[row] = tail_w @ v[n, :, p] (one pass over the output).
    backward(grad_out, l, g, sg, cg, cs, tail_w, layout)
        -> (grad_l, grad_g, grad_sg, grad_cg, grad_cs, grad_tail_w)
        grad_out (any float dtype) is read once for both grad_v = grad_out @ tail_w and
        grad_tail_w = sum_rows grad_out^T v (v recomputed).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ._products import linear_rows
from ._registry import BackendTable
from .project_in import hidden_to_rows, rows_to_hidden


def _out_shape(l: Tensor, C: int, layout: str):
    N, h, H, W = l.shape
    return (N, H, W, C) if layout == "nhwc" else (H * W, N, C)


def _combine(l, g, sg, cg, cs):
    return cs[:, :, None, None] * (cg[:, :, None, None] * l + sg[:, None] * g)


def forward_torch(l, g, sg, cg, cs, tail_w, layout, out_dtype):
    v = hidden_to_rows(_combine(l, g, sg, cg, cs), layout)
    return linear_rows(v, tail_w).to(out_dtype).view(_out_shape(l, tail_w.shape[0], layout))


def backward_torch(grad_out, l, g, sg, cg, cs, tail_w, layout):
    N, h, H, W = l.shape
    C = tail_w.shape[0]
    go = grad_out.reshape(-1, C).to(l.dtype)
    v = hidden_to_rows(_combine(l, g, sg, cg, cs), layout)
    grad_tail_w = go.t() @ v
    grad_v = rows_to_hidden(go @ tail_w, layout, N, H, W)
    gvc = grad_v * cs[:, :, None, None]
    grad_l = gvc * cg[:, :, None, None]
    grad_g = gvc * sg[:, None]
    grad_sg = (gvc * g).sum(1)
    grad_cg = (gvc * l).sum((2, 3))
    grad_cs = (grad_v * (cg[:, :, None, None] * l + sg[:, None] * g)).sum((2, 3))
    return grad_l, grad_g, grad_sg, grad_cg, grad_cs, grad_tail_w


TABLE = BackendTable("combine_out", (forward_torch, backward_torch))


@torch.library.custom_op("adaptir::combine_out", mutates_args=())
def combine_out(
    l: Tensor, g: Tensor, sg: Tensor, cg: Tensor, cs: Tensor, tail_w: Tensor, layout: str,
    out_dtype: torch.dtype, backend: str,
) -> Tensor:
    return TABLE.forward(backend)(l, g, sg, cg, cs, tail_w, layout, out_dtype)


@combine_out.register_fake
def _(l, g, sg, cg, cs, tail_w, layout, out_dtype, backend):
    return l.new_empty(_out_shape(l, tail_w.shape[0], layout), dtype=out_dtype)


@torch.library.custom_op("adaptir::combine_out_backward", mutates_args=())
def combine_out_backward(
    grad_out: Tensor, l: Tensor, g: Tensor, sg: Tensor, cg: Tensor, cs: Tensor, tail_w: Tensor,
    layout: str, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(TABLE.backward(backend)(grad_out, l, g, sg, cg, cs, tail_w, layout))


@combine_out_backward.register_fake
def _(grad_out, l, g, sg, cg, cs, tail_w, layout, backend):
    return tuple(t.new_empty(t.shape) for t in (l, g, sg, cg, cs, tail_w))


def _setup_context(ctx, inputs, output):
    l, g, sg, cg, cs, tail_w, layout, out_dtype, backend = inputs
    ctx.save_for_backward(l, g, sg, cg, cs, tail_w)
    ctx.args = (layout, backend)


def _backward(ctx, grad_out):
    layout, backend = ctx.args
    grads = combine_out_backward(grad_out.contiguous(), *ctx.saved_tensors, layout, backend)
    return (*grads, None, None, None)


combine_out.register_autograd(_backward, setup_context=_setup_context)
