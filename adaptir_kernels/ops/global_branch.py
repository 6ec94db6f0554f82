"""global_branch: u -> g = |irfft2(gate(rfft2(u)))| and its per-channel mean.

Signature (every backend; tensors in the compute dtype, contiguous):
    forward(u, amp_w, amp_b, pha_w, pha_b) -> (g, gmean, sign)
        u, g: (N, h, H, W); amp_w, amp_b, pha_w, pha_b: (h); gmean: (N, h) = g.mean((2, 3)).
        The gate is the spectral gate (ops/spectral_gate.py) on the ortho-normalised half
        spectrum; the transforms follow SPEC 4.1. sign: where y (g = |y|) is negative,
        packed 8 to a byte, uint8 (N, h, ceil(H*W / 8)) (`pack_signs`).
    backward(grad_g, grad_gmean, u, g, sign, amp_w, amp_b, pha_w, pha_b)
        -> (grad_u, grad_amp_w, grad_amp_b, grad_pha_w, grad_pha_b)
        The spectrum is recomputed from u; sign(y) is read from g and sign (one gate pass
        and inverse transform fewer than recomputing y). With an empty sign tensor
        (`no_signs`), y is recomputed from u instead and g is not read.

Adjoints used by the explicit backward (c[kw] = 1 at kw = 0 and kw = W/2 for even W,
else 2; see SPEC 4.1):
    y = irfft2(Y)  =>  dL/dY = c * rfft2(dL/dy)
    U = rfft2(u)   =>  dL/du = irfft2(dL/dU / c)
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..spectrum import irfft2, rfft2_real
from ._registry import BackendTable, zeros_if_none


def half_spectrum_weights(W: int, device, dtype) -> Tensor:
    """c[kw] of SPEC 4.1 for a half spectrum of width W // 2 + 1."""
    c = torch.full((W // 2 + 1,), 2.0, device=device, dtype=dtype)
    c[0] = 1.0
    if W % 2 == 0:
        c[-1] = 1.0
    return c


def _spectrum(u: Tensor) -> Tensor:
    return rfft2_real(u).contiguous()


def _inverse(G: Tensor, H: int, W: int) -> Tensor:
    return irfft2(torch.view_as_complex(G), H, W)


def sign_shape(u_shape) -> Tuple[int, ...]:
    """Shape of the forward's packed signs for u of shape (N, h, H, W)."""
    N, h, H, W = u_shape
    return (N, h, (H * W + 7) // 8)


def no_signs(u: Tensor) -> Tensor:
    """The empty sign tensor: the backward then recomputes y."""
    return torch.empty((0,), dtype=torch.uint8, device=u.device)


def check_signs(u: Tensor, g: Tensor, sign: Tensor, op: str = "global_branch backward") -> None:
    """A clear error unless sign is the packed-sign tensor of u's shape and g is u-shaped."""
    want = sign_shape(u.shape)
    if sign.dtype != torch.uint8 or tuple(sign.shape) != want:
        raise ValueError(f"{op}: sign must be uint8 (packed bits) of shape (N, h, ceil(H*W/8)) = {want}, "
                         f"got {sign.dtype} {tuple(sign.shape)}")
    if tuple(g.shape) != tuple(u.shape):
        raise ValueError(f"{op}: g must have u's shape {tuple(u.shape)}, got {tuple(g.shape)}")
    if sign.device != u.device or g.device != u.device:
        raise ValueError(f"{op}: u is on {u.device}, g on {g.device}, sign on {sign.device}")


def pack_signs(y: Tensor) -> Tensor:
    """(N, h, H, W) -> uint8 (N, h, ceil(H*W / 8)): bit k of byte i set where
    y[..., 8 i + k] < 0 (the layout every backend's forward writes)."""
    N, h, H, W = y.shape
    flat = (y.reshape(N, h, H * W) < 0).to(torch.uint8)
    pad = (-(H * W)) % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    w = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=y.device)
    return (flat.view(N, h, -1, 8) * w).sum(-1, dtype=torch.uint8)


def unpack_signs(g: Tensor, sign: Tensor) -> Tensor:
    """sign(y) from g = |y| and the packed signs: 0 where g is not positive, else -1 or +1."""
    N, h, H, W = g.shape
    bits = (sign.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=g.device)) & 1
    neg = bits.reshape(N, h, -1)[:, :, : H * W].reshape(g.shape).to(g.dtype)
    return (g > 0).to(g.dtype) * (1 - 2 * neg)


def forward_torch(u, amp_w, amp_b, pha_w, pha_b):
    from .spectral_gate import spectral_gate_torch

    H, W = u.shape[-2:]
    G = spectral_gate_torch(_spectrum(u), amp_w, amp_b, pha_w, pha_b)
    y = _inverse(G, H, W)
    g = y.abs()
    return g, g.mean((2, 3)), pack_signs(y)


def backward_torch(grad_g, grad_gmean, u, g, sign, amp_w, amp_b, pha_w, pha_b):
    from .spectral_gate import spectral_gate_backward_torch, spectral_gate_torch

    H, W = u.shape[-2:]
    U = _spectrum(u)
    if sign.numel():
        check_signs(u, g, sign)
        sgn = unpack_signs(g, sign)
    else:
        sgn = torch.sign(_inverse(spectral_gate_torch(U, amp_w, amp_b, pha_w, pha_b), H, W))
    grad_y = (grad_g + grad_gmean[:, :, None, None] / (H * W)) * sgn
    c = half_spectrum_weights(W, u.device, u.dtype)
    grad_G = torch.view_as_real(torch.fft.rfft2(grad_y, norm="ortho") * c).contiguous()
    grad_U, gaw, gab, gpw, gpb = spectral_gate_backward_torch(grad_G, U, amp_w, amp_b, pha_w, pha_b)
    grad_u = irfft2(torch.view_as_complex(grad_U.contiguous()) / c, H, W)
    return grad_u, gaw, gab, gpw, gpb


TABLE = BackendTable("global_branch", (forward_torch, backward_torch))


@torch.library.custom_op("adaptir::global_branch", mutates_args=())
def global_branch(
    u: Tensor, amp_w: Tensor, amp_b: Tensor, pha_w: Tensor, pha_b: Tensor, backend: str
) -> Tuple[Tensor, Tensor, Tensor]:
    return tuple(TABLE.forward(backend)(u, amp_w, amp_b, pha_w, pha_b))


@global_branch.register_fake
def _(u, amp_w, amp_b, pha_w, pha_b, backend):
    return (u.new_empty(u.shape), u.new_empty(u.shape[:2]),
            u.new_empty(sign_shape(u.shape), dtype=torch.uint8))


@torch.library.custom_op("adaptir::global_branch_backward", mutates_args=())
def global_branch_backward(
    grad_g: Tensor, grad_gmean: Tensor, u: Tensor, g: Tensor, sign: Tensor, amp_w: Tensor,
    amp_b: Tensor, pha_w: Tensor, pha_b: Tensor, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(TABLE.backward(backend)(grad_g, grad_gmean, u, g, sign, amp_w, amp_b, pha_w, pha_b))


@global_branch_backward.register_fake
def _(grad_g, grad_gmean, u, g, sign, amp_w, amp_b, pha_w, pha_b, backend):
    return (u.new_empty(u.shape), amp_w.new_empty(amp_w.shape), amp_b.new_empty(amp_b.shape),
            pha_w.new_empty(pha_w.shape), pha_b.new_empty(pha_b.shape))


def _setup_context(ctx, inputs, output):
    u, amp_w, amp_b, pha_w, pha_b, backend = inputs
    g, _gmean, sign = output
    ctx.save_for_backward(u, g, sign, amp_w, amp_b, pha_w, pha_b)
    ctx.mark_non_differentiable(sign)
    ctx.backend = backend


def _backward(ctx, grad_g, grad_gmean, _grad_sign):
    u, g, sign, amp_w, amp_b, pha_w, pha_b = ctx.saved_tensors
    grad_g = zeros_if_none(grad_g, u)
    grad_gmean = zeros_if_none(grad_gmean, u.new_empty(u.shape[:2]))
    grads = global_branch_backward(grad_g, grad_gmean, u, g, sign, amp_w, amp_b, pha_w, pha_b, ctx.backend)
    return (*grads, None)


global_branch.register_autograd(_backward, setup_context=_setup_context)
