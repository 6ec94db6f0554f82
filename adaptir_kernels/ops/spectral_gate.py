"""spectral_gate: the amplitude/phase gate between the forward and inverse FFT (SPEC 4.2).

U is the complex half spectrum as a real view, shape (N, h, H, Wf, 2). Per channel c:

    A  = |U|,                     P  = atan2(Ui, Ur)         (angle(0) = 0)
    A' = amp_w[c] * A + amp_b[c], P' = pha_w[c] * P + pha_b[c]
    G  = A' * (cos P' + i sin P')                             (same shape as U)

Backward, with grad_G = (dL/dGr, dL/dGi):

    dA' = gr cos P' + gi sin P',      dP' = A' (gi cos P' - gr sin P')
    grad_amp_w = sum dA' A,  grad_amp_b = sum dA',  grad_pha_w = sum dP' P,  grad_pha_b = sum dP'
    dA = amp_w dA',  dP = pha_w dP'
    grad_Ur = dA Ur / A - dP Ui / A^2,  grad_Ui = dA Ui / A + dP Ur / A^2,  and 0 where A = 0
    (torch defines the gradients of abs and angle as 0 at 0).

Parameters may have any shape with h elements (e.g. a (h, 1, 1, 1) conv weight); their
gradients come back in the same shape. Backends: "torch" (the composite below) and
"cpp" (torch.ops.adaptir_cpp.spectral_gate[_backward], with autograd registered here).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

from .. import _ext

_OP = "adaptir_cpp::spectral_gate"
_OP_BWD = "adaptir_cpp::spectral_gate_backward"


def _channel(p: Tensor) -> Tensor:
    """A per-channel parameter, broadcastable against (N, h, H, Wf)."""
    return p.reshape(1, -1, 1, 1)


def _polar_parts(U: Tensor):
    # Planes of their own: atan2 and hypot of the interleaved (stride 2) views take several
    # times as long on the CPU (atan2 at edt-train: 4.4 ms, against 0.9 ms with the copies).
    ur, ui = U[..., 0].contiguous(), U[..., 1].contiguous()
    return ur, ui, torch.hypot(ur, ui), torch.atan2(ui, ur)


def spectral_gate_torch(U: Tensor, amp_w: Tensor, amp_b: Tensor, pha_w: Tensor, pha_b: Tensor) -> Tensor:
    """Forward in plain torch ops. Not meant to be differentiated by autograd (atan2
    has no defined gradient at 0): use spectral_gate_backward_torch."""
    _, _, A, P = _polar_parts(U)
    A2 = _channel(amp_w) * A + _channel(amp_b)
    P2 = _channel(pha_w) * P + _channel(pha_b)
    return torch.stack((A2 * torch.cos(P2), A2 * torch.sin(P2)), dim=-1)


def _channel_sum(t: Tensor, like: Tensor) -> Tensor:
    # Sum over (N, H, Wf) in double, as the C++ kernel does.
    return t.sum(dim=(0, 2, 3), dtype=torch.float64).to(like.dtype).reshape(like.shape)


def spectral_gate_backward_torch(
    grad_G: Tensor, U: Tensor, amp_w: Tensor, amp_b: Tensor, pha_w: Tensor, pha_b: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Explicit backward in plain torch ops; returns (grad_U, grad_amp_w, grad_amp_b,
    grad_pha_w, grad_pha_b)."""
    ur, ui, A, P = _polar_parts(U)
    # Contiguous planes throughout: elementwise ops on the interleaved views run unvectorised.
    gr, gi = grad_G[..., 0].contiguous(), grad_G[..., 1].contiguous()
    A2 = torch.addcmul(_channel(amp_b), _channel(amp_w), A)
    P2 = torch.addcmul(_channel(pha_b), _channel(pha_w), P)
    cos, sin = torch.cos(P2), torch.sin(P2)
    dA2 = torch.addcmul(gr * cos, gi, sin)
    dP2 = A2 * torch.addcmul(gi * cos, gr, sin, value=-1.0)
    g_aw = _channel_sum(dA2 * A, amp_w)
    g_ab = _channel_sum(dA2, amp_b)
    g_pw = _channel_sum(dP2 * P, pha_w)
    g_pb = _channel_sum(dP2, pha_b)
    # With U = A e^{iP}: grad_U = (dA / A) U + (dP / A^2) i U. Where A = 0, U = 0 and the
    # reciprocal is taken of 1 instead, so the gradient there is 0 without a mask.
    inv = torch.where(A != 0, A, 1.0).reciprocal_()
    s = dA2.mul_(_channel(amp_w)).mul_(inv)  # dA / A (dA2 is not used again)
    t = dP2.mul_(_channel(pha_w)).mul_(inv).mul_(inv)  # dP / A^2
    grad_U = torch.stack((s * ur - t * ui, s * ui + t * ur), dim=-1)
    return grad_U, g_aw, g_ab, g_pw, g_pb


# ---- the C++ op: fake (meta) kernels and autograd -----------------------------------


def _cpp_forward(U, amp_w, amp_b, pha_w, pha_b):
    _ext.require()
    return torch.ops.adaptir_cpp.spectral_gate(U, amp_w, amp_b, pha_w, pha_b)


def _cpp_backward(grad_G, U, amp_w, amp_b, pha_w, pha_b):
    _ext.require()
    return torch.ops.adaptir_cpp.spectral_gate_backward(grad_G, U, amp_w, amp_b, pha_w, pha_b)


def _check_fake(U: Tensor, params) -> None:
    torch._check(U.dim() == 5 and U.shape[-1] == 2, lambda: f"U must be (N, h, H, Wf, 2), got {tuple(U.shape)}")
    for p in params:
        torch._check(p.numel() == U.shape[1], lambda: "each gate parameter must have h elements")


def _fake_forward(U, amp_w, amp_b, pha_w, pha_b):
    _check_fake(U, (amp_w, amp_b, pha_w, pha_b))
    return torch.empty_like(U, memory_format=torch.contiguous_format)


def _fake_backward(grad_G, U, amp_w, amp_b, pha_w, pha_b):
    _check_fake(U, (amp_w, amp_b, pha_w, pha_b))
    return (
        torch.empty_like(U, memory_format=torch.contiguous_format),
        U.new_empty(amp_w.shape),
        U.new_empty(amp_b.shape),
        U.new_empty(pha_w.shape),
        U.new_empty(pha_b.shape),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _autograd_backward(ctx, grad_G):
    U, amp_w, amp_b, pha_w, pha_b = ctx.saved_tensors
    return torch.ops.adaptir_cpp.spectral_gate_backward(grad_G, U, amp_w, amp_b, pha_w, pha_b)


def _register_cpp() -> None:
    torch.library.register_fake(_OP)(_fake_forward)
    torch.library.register_fake(_OP_BWD)(_fake_backward)
    torch.library.register_autograd(_OP, _autograd_backward, setup_context=_setup_context)


if _ext.available():
    _register_cpp()


# ---- backend dispatch ----------------------------------------------------------------

SPECTRAL_GATE: Dict[str, Tuple[Callable, Callable]] = {
    "torch": (spectral_gate_torch, spectral_gate_backward_torch),
    "cpp": (_cpp_forward, _cpp_backward),
}


def _impl(backend: str) -> Tuple[Callable, Callable]:
    if backend == "triton" and backend not in SPECTRAL_GATE:
        import adaptir_kernels.triton.spectral_gate  # noqa: F401  (registers its table entry)
    try:
        return SPECTRAL_GATE[backend]
    except KeyError:
        raise ValueError(
            f"spectral_gate: unknown backend {backend!r}; expected one of {sorted(SPECTRAL_GATE)}"
        ) from None


def spectral_gate(U: Tensor, amp_w: Tensor, amp_b: Tensor, pha_w: Tensor, pha_b: Tensor, backend: str = "torch") -> Tensor:
    return _impl(backend)[0](U, amp_w, amp_b, pha_w, pha_b)


def spectral_gate_backward(
    grad_G: Tensor, U: Tensor, amp_w: Tensor, amp_b: Tensor, pha_w: Tensor, pha_b: Tensor, backend: str = "torch"
):
    return _impl(backend)[1](grad_G, U, amp_w, amp_b, pha_w, pha_b)
