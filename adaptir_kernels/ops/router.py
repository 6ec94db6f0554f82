"""router: the per-sample channel score cs and channel gate cg.

Tiny (per-sample vectors plus one h-wide reduction). The plain-torch composite below
serves the "torch" backend; "cpp" (csrc/cpu/router.cpp) and "triton"
(adaptir_kernels/triton/router.py) have their own kernels, since at small sizes the
composite's ~65 ATen calls per forward+backward cost more than the work.

Signature (tensors in the compute dtype):
    forward(u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
            gmean, ci1_w, ci1_b, ci3_w, ci3_b) -> (cs, cg)
        u (N, h, H, W); compress_w (h); compress_b (1); proj0_w (p, h); proj0_b (p);
        proj2_w (h, p); proj2_b (h); gmean (N, h); ci1_w (q, h); ci1_b (q); ci3_w (h, q); ci3_b (h)
        a = softmax over positions of (compress_w . u + compress_b); pooled = sum_p a_p u_p
        cs = proj2(gelu(proj0(pooled)));  cg = sigmoid(ci3(gelu(ci1(gmean))))      (N, h) each
    backward(grad_cs, grad_cg, <the forward's inputs>)
        -> (grad_u, grad_gmean, grad_compress_w, grad_compress_b, grad_proj0_w, grad_proj0_b,
            grad_proj2_w, grad_proj2_b, grad_ci1_w, grad_ci1_b, grad_ci3_w, grad_ci3_b)
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from ._registry import BackendTable, zeros_if_none

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(t: Tensor) -> Tensor:
    return 0.5 * t * (1.0 + torch.erf(t * _INV_SQRT2))


def gelu_grad(t: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(t * _INV_SQRT2)) + t * torch.exp(-0.5 * t * t) * _INV_SQRT_2PI


# The h-wide reductions are batched matrix products on u's own (N, h, P) layout: einsum
# would permute u into a copy first.
def _attention(u, compress_w, compress_b):
    uf = u.flatten(2)  # (N, h, P)
    n = uf.shape[0]
    scores = torch.bmm(compress_w.expand(n, 1, -1), uf).squeeze(1) + compress_b
    return uf, torch.softmax(scores, dim=1)


def _pool(uf, weights):
    """sum_p weights[n, p] * uf[n, :, p] -> (N, h), as (1, P) @ (P, h) per sample (the
    matrix-vector form (h, P) @ (P, 1) is several times slower in ATen's CPU bmm)."""
    return torch.bmm(weights.unsqueeze(1), uf.transpose(1, 2)).squeeze(1)


def forward_torch(u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                  gmean, ci1_w, ci1_b, ci3_w, ci3_b):
    uf, attn = _attention(u, compress_w, compress_b)
    pooled = _pool(uf, attn)
    cs = gelu(pooled @ proj0_w.t() + proj0_b) @ proj2_w.t() + proj2_b
    cg = torch.sigmoid(gelu(gmean @ ci1_w.t() + ci1_b) @ ci3_w.t() + ci3_b)
    return cs, cg


def backward_torch(grad_cs, grad_cg, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                   gmean, ci1_w, ci1_b, ci3_w, ci3_b):
    uf, attn = _attention(u, compress_w, compress_b)
    pooled = _pool(uf, attn)
    # cs = proj2(gelu(proj0(pooled)))
    hid = pooled @ proj0_w.t() + proj0_b
    act = gelu(hid)
    grad_proj2_w = grad_cs.t() @ act
    grad_proj2_b = grad_cs.sum(0)
    grad_hid = (grad_cs @ proj2_w) * gelu_grad(hid)
    grad_proj0_w = grad_hid.t() @ pooled
    grad_proj0_b = grad_hid.sum(0)
    grad_pooled = grad_hid @ proj0_w  # (N, h)
    # pooled = sum_p a_p u_p, a = softmax(s), s = compress_w . u + compress_b
    grad_attn = torch.bmm(grad_pooled.unsqueeze(1), uf).squeeze(1)
    grad_s = attn * (grad_attn - (attn * grad_attn).sum(1, keepdim=True))
    # grad_u[n, c, p] = grad_pooled[n, c] a[n, p] + compress_w[c] grad_s[n, p]: a rank-2
    # product per sample, written once.
    left = torch.stack((grad_pooled, compress_w.expand_as(grad_pooled)), dim=2)  # (N, h, 2)
    grad_u = torch.bmm(left, torch.stack((attn, grad_s), dim=1))  # (N, h, P)
    grad_compress_w = _pool(uf, grad_s).sum(0)
    grad_compress_b = grad_s.sum().reshape(1)
    # cg = sigmoid(ci3(gelu(ci1(gmean))))
    t = gmean @ ci1_w.t() + ci1_b
    tg = gelu(t)
    cg = torch.sigmoid(tg @ ci3_w.t() + ci3_b)
    grad_o = grad_cg * cg * (1 - cg)
    grad_ci3_w = grad_o.t() @ tg
    grad_ci3_b = grad_o.sum(0)
    grad_t = (grad_o @ ci3_w) * gelu_grad(t)
    grad_ci1_w = grad_t.t() @ gmean
    grad_ci1_b = grad_t.sum(0)
    grad_gmean = grad_t @ ci1_w
    return (grad_u.view(u.shape), grad_gmean, grad_compress_w, grad_compress_b, grad_proj0_w, grad_proj0_b,
            grad_proj2_w, grad_proj2_b, grad_ci1_w, grad_ci1_b, grad_ci3_w, grad_ci3_b)


TABLE = BackendTable("router", (forward_torch, backward_torch))


@torch.library.custom_op("adaptir::router", mutates_args=())
def router(
    u: Tensor, compress_w: Tensor, compress_b: Tensor, proj0_w: Tensor, proj0_b: Tensor,
    proj2_w: Tensor, proj2_b: Tensor, gmean: Tensor, ci1_w: Tensor, ci1_b: Tensor,
    ci3_w: Tensor, ci3_b: Tensor, backend: str,
) -> Tuple[Tensor, Tensor]:
    return tuple(TABLE.forward(backend)(
        u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean, ci1_w, ci1_b, ci3_w, ci3_b))


@router.register_fake
def _(u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean, ci1_w, ci1_b, ci3_w, ci3_b, backend):
    return u.new_empty(u.shape[:2]), u.new_empty(u.shape[:2])


@torch.library.custom_op("adaptir::router_backward", mutates_args=())
def router_backward(
    grad_cs: Tensor, grad_cg: Tensor, u: Tensor, compress_w: Tensor, compress_b: Tensor,
    proj0_w: Tensor, proj0_b: Tensor, proj2_w: Tensor, proj2_b: Tensor, gmean: Tensor,
    ci1_w: Tensor, ci1_b: Tensor, ci3_w: Tensor, ci3_b: Tensor, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(TABLE.backward(backend)(
        grad_cs, grad_cg, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
        gmean, ci1_w, ci1_b, ci3_w, ci3_b))


@router_backward.register_fake
def _(grad_cs, grad_cg, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
      gmean, ci1_w, ci1_b, ci3_w, ci3_b, backend):
    like = (u, gmean, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, ci1_w, ci1_b, ci3_w, ci3_b)
    return tuple(t.new_empty(t.shape) for t in like)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:-1])
    ctx.backend = inputs[-1]


def _backward(ctx, grad_cs, grad_cg):
    saved = ctx.saved_tensors
    u, gmean = saved[0], saved[7]
    grad_cs = zeros_if_none(grad_cs, u.new_empty(u.shape[:2]))
    grad_cg = zeros_if_none(grad_cg, gmean)
    (grad_u, grad_gmean, *param_grads) = router_backward(grad_cs, grad_cg, *saved, ctx.backend)
    # Reorder to the forward's argument order: u, 6 params, gmean, 4 params, backend.
    return (grad_u, *param_grads[:6], grad_gmean, *param_grads[6:], None)


router.register_autograd(_backward, setup_context=_setup_context)
