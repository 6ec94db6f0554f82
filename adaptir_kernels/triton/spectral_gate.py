"""The spectral (amplitude / phase) gate in Triton: one kernel each way.

Math and signatures: adaptir_kernels/ops/spectral_gate.py. Importing this module adds
the "triton" entry to that file's SPECTRAL_GATE table.

The spectrum is the real view (N, h, H, Wf, 2) of the complex half spectrum. The forward
kernel is flat over all complex values. A backward program owns BLOCK complex values of
one (n, c) plane, so its share of the four parameter gradients is one number each; those
partial sums are reduced in a fixed order by _common.colsum. The backward kernel can also
apply the half-spectrum weights c[kw] of SPEC 4.1 on the way in (grad_G = c *
rfft2(grad_y)) and 1 / c on the way out, which is how global_branch uses it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common as cm


@triton.jit
def _gate_fwd_kernel(U_ptr, G_ptr, aw_ptr, ab_ptr, pw_ptr, pb_ptr, total, h, HWf,
                     BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < total
    c = (e // HWf) % h
    ur = tl.load(U_ptr + 2 * e, mask=m, other=0.0)
    ui = tl.load(U_ptr + 2 * e + 1, mask=m, other=0.0)
    A = tl.sqrt_rn(ur * ur + ui * ui)
    P = cm.atan2(ui, ur)
    A2 = tl.load(aw_ptr + c, mask=m, other=0.0) * A + tl.load(ab_ptr + c, mask=m, other=0.0)
    P2 = tl.load(pw_ptr + c, mask=m, other=0.0) * P + tl.load(pb_ptr + c, mask=m, other=0.0)
    tl.store(G_ptr + 2 * e, A2 * tl.cos(P2), mask=m)
    tl.store(G_ptr + 2 * e + 1, A2 * tl.sin(P2), mask=m)


@triton.jit
def _gate_bwd_kernel(gG_ptr, U_ptr, gU_ptr, part_ptr, aw_ptr, ab_ptr, pw_ptr, pb_ptr,
                     h, HWf, Wf, nchunks, weighted, w_even,
                     BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    e = j * BLOCK + tl.arange(0, BLOCK)
    m = e < HWf
    c = plane % h
    n = plane // h
    off = (plane * HWf + e) * 2
    gr = tl.load(gG_ptr + off, mask=m, other=0.0)
    gi = tl.load(gG_ptr + off + 1, mask=m, other=0.0)
    kw = e % Wf
    single = (weighted == 0) | (kw == 0) | ((w_even != 0) & (kw == Wf - 1))
    cw = tl.where(single, 1.0, 2.0)
    gr = gr * cw
    gi = gi * cw
    ur = tl.load(U_ptr + off, mask=m, other=0.0)
    ui = tl.load(U_ptr + off + 1, mask=m, other=0.0)
    A = tl.sqrt_rn(ur * ur + ui * ui)
    P = cm.atan2(ui, ur)
    aw = tl.load(aw_ptr + c)
    pw = tl.load(pw_ptr + c)
    A2 = aw * A + tl.load(ab_ptr + c)
    P2 = pw * P + tl.load(pb_ptr + c)
    cs = tl.cos(P2)
    sn = tl.sin(P2)
    dA2 = tl.where(m, gr * cs + gi * sn, 0.0)
    dP2 = tl.where(m, A2 * (gi * cs - gr * sn), 0.0)
    row = part_ptr + (n * nchunks + j) * (4 * h) + c
    tl.store(row, tl.sum(dA2 * A, axis=0))
    tl.store(row + h, tl.sum(dA2, axis=0))
    tl.store(row + 2 * h, tl.sum(dP2 * P, axis=0))
    tl.store(row + 3 * h, tl.sum(dP2, axis=0))
    # abs and angle have zero gradient at 0 (torch's convention).
    nz = A != 0.0
    sa = tl.where(nz, A, 1.0)
    dA = aw * dA2 / sa
    dP = pw * dP2 / (sa * sa)
    gur = tl.where(nz, dA * ur - dP * ui, 0.0)
    gui = tl.where(nz, dA * ui + dP * ur, 0.0)
    inv_cw = tl.where(single, 1.0, 0.5)
    tl.store(gU_ptr + off, gur * inv_cw, mask=m)
    tl.store(gU_ptr + off + 1, gui * inv_cw, mask=m)


# ---- launchers ---------------------------------------------------------------------


def _grid(U):
    N, h, H, Wf, _ = U.shape
    B = cm.FLAT_CONFIG["BLOCK"]
    return (N * h, cm.cdiv(H * Wf, B)), B


def gate_forward(U, amp_w, amp_b, pha_w, pha_b):
    """G = gate(U) for the real view U (N, h, H, Wf, 2); parameters have h elements."""
    U = cm.f32(U, "U")
    params = [cm.f32(t, name).reshape(-1) for t, name in
              ((amp_w, "amp_w"), (amp_b, "amp_b"), (pha_w, "pha_w"), (pha_b, "pha_b"))]
    N, h, H, Wf, _ = U.shape
    G = cm.new(U.shape, U.device)
    total = N * h * H * Wf
    B = cm.FLAT_CONFIG["BLOCK"]
    with cm.device_guard(U):
        _gate_fwd_kernel[(cm.cdiv(total, B),)](U, G, *params, total, h, H * Wf,
                                               BLOCK=B, **cm.opts(cm.FLAT_CONFIG))
    return G


def gate_backward_into(grad_G, U, amp_w, amp_b, pha_w, pha_b, weights_of_width=None):
    """(grad_U, grad_amp_w, grad_amp_b, grad_pha_w, grad_pha_b). With weights_of_width=W,
    grad_G is taken as c * grad_G and grad_U is returned divided by c (c of SPEC 4.1)."""
    grad_G, U = cm.f32(grad_G, "grad_G"), cm.f32(U, "U")
    raw = (amp_w, amp_b, pha_w, pha_b)
    params = [cm.f32(t, name).reshape(-1) for t, name in zip(raw, ("amp_w", "amp_b", "pha_w", "pha_b"))]
    N, h, H, Wf, _ = U.shape
    dev = U.device
    grid, B = _grid(U)
    grad_U = cm.new(U.shape, dev)
    part = cm.new((N * grid[1], 4 * h), dev)
    grads = [cm.new(t.shape, dev) for t in raw]
    weighted = weights_of_width is not None
    w_even = int(weighted and weights_of_width % 2 == 0)
    with cm.device_guard(U):
        _gate_bwd_kernel[grid](grad_G, U, grad_U, part, *params, h, H * Wf, Wf, grid[1], int(weighted), w_even,
                               BLOCK=B, **cm.opts(cm.FLAT_CONFIG))
        cm.colsum(part, grads)
    return (grad_U, *grads)


def gate_backward(grad_G, U, amp_w, amp_b, pha_w, pha_b):
    return gate_backward_into(grad_G, U, amp_w, amp_b, pha_w, pha_b)


def _register() -> None:
    from ..ops import spectral_gate as table

    table.SPECTRAL_GATE.setdefault("triton", (gate_forward, gate_backward))


_register()


# ---- what the launchers can pick, for compile_check.py ------------------------------


def compile_specs():
    fc = cm.FLAT_CONFIG
    sig = dict(U_ptr="*fp32", G_ptr="*fp32", aw_ptr="*fp32", ab_ptr="*fp32", pw_ptr="*fp32", pb_ptr="*fp32",
               total="i32", h="i32", HWf="i32")
    yield ("spectral_gate._gate_fwd_kernel", _gate_fwd_kernel, sig, dict(BLOCK=fc["BLOCK"]), cm.opts(fc))
    sig = dict(gG_ptr="*fp32", U_ptr="*fp32", gU_ptr="*fp32", part_ptr="*fp32", aw_ptr="*fp32", ab_ptr="*fp32",
               pw_ptr="*fp32", pb_ptr="*fp32", h="i32", HWf="i32", Wf="i32", nchunks="i32", weighted="i32",
               w_even="i32")
    yield ("spectral_gate._gate_bwd_kernel", _gate_bwd_kernel, sig, dict(BLOCK=fc["BLOCK"]), cm.opts(fc))
