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
def _gate_value(ur, ui, aw, ab, pw, pb):
    """The gated value (real, imaginary) of the spectrum value ur + i ui."""
    A = tl.sqrt_rn(ur * ur + ui * ui)
    P = cm.atan2(ui, ur)
    A2 = aw * A + ab
    P2 = pw * P + pb
    return A2 * tl.cos(P2), A2 * tl.sin(P2)


@triton.jit
def _mirror(plane_off, kh, kw, H, Wf, w_even, m):
    """For the half spectrum's columns kw = 0 and (W even) kw = Wf - 1 = W / 2: True and
    the element offset of the partner (-kh mod H, kw) within the plane at plane_off."""
    # (kw == W / 2 as an index out of range where W is odd: a boolean scalar in a mask
    # gives an integer mask in the interpreter.)
    special = ((kw == 0) | (kw == Wf - 1 + (1 - w_even) * Wf)) & m
    km = tl.where(kh == 0, 0, H - kh)
    return special, plane_off + km * Wf + kw


@triton.jit
def _gate_fwd_kernel(U_ptr, G_ptr, aw_ptr, ab_ptr, pw_ptr, pb_ptr, total, h, H, Wf, sym, w_even,
                     BLOCK: tl.constexpr):
    """G = gate(U), flat over all complex values. With sym, the columns kw = 0 and (w_even)
    kw = Wf - 1 are stored as their Hermitian part along H, (G[kh] + conj(G[-kh])) / 2,
    as adaptir_kernels.spectrum.irfft2 hands them to the library: SPEC 4.1's inverse of
    G is unchanged, and every FFT library reads it correctly."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < total
    HWf = H * Wf
    plane = e // HWf
    c = plane % h
    aw = tl.load(aw_ptr + c, mask=m, other=0.0)
    ab = tl.load(ab_ptr + c, mask=m, other=0.0)
    pw = tl.load(pw_ptr + c, mask=m, other=0.0)
    pb = tl.load(pb_ptr + c, mask=m, other=0.0)
    ur = tl.load(U_ptr + 2 * e, mask=m, other=0.0)
    ui = tl.load(U_ptr + 2 * e + 1, mask=m, other=0.0)
    gr, gi = _gate_value(ur, ui, aw, ab, pw, pb)
    if sym != 0:
        r = e - plane * HWf
        kh = r // Wf
        special, em = _mirror(plane * HWf, kh, r - kh * Wf, H, Wf, w_even, m)
        mr = tl.load(U_ptr + 2 * em, mask=special, other=0.0)
        mi = tl.load(U_ptr + 2 * em + 1, mask=special, other=0.0)
        hr, hi = _gate_value(mr, mi, aw, ab, pw, pb)
        gr = tl.where(special, (gr + hr) * 0.5, gr)
        gi = tl.where(special, (gi - hi) * 0.5, gi)
    tl.store(G_ptr + 2 * e, gr, mask=m)
    tl.store(G_ptr + 2 * e + 1, gi, mask=m)


@triton.jit
def _gate_adjoint(gr, gi, ur, ui, aw, ab, pw, pb):
    """The gate's adjoint at one value: (grad_U real, imaginary) from grad_G = gr + i gi,
    and dA2, dP2, A, P for the parameter gradients."""
    A = tl.sqrt_rn(ur * ur + ui * ui)
    P = cm.atan2(ui, ur)
    A2 = aw * A + ab
    P2 = pw * P + pb
    cs = tl.cos(P2)
    sn = tl.sin(P2)
    dA2 = gr * cs + gi * sn
    dP2 = A2 * (gi * cs - gr * sn)
    # abs and angle have zero gradient at 0 (torch's convention).
    nz = A != 0.0
    sa = tl.where(nz, A, 1.0)
    dA = aw * dA2 / sa
    dP = pw * dP2 / (sa * sa)
    gur = tl.where(nz, dA * ur - dP * ui, 0.0)
    gui = tl.where(nz, dA * ui + dP * ur, 0.0)
    return gur, gui, dA2, dP2, A, P


@triton.jit
def _gate_bwd_kernel(gG_ptr, U_ptr, gU_ptr, part_ptr, aw_ptr, ab_ptr, pw_ptr, pb_ptr,
                     h, H, Wf, nchunks, weighted, sym, w_even,
                     BLOCK: tl.constexpr):
    """grad_U and per-program parameter-gradient partials. weighted: grad_G is taken as
    c * grad_G and grad_U divided by c (c[kw] of SPEC 4.1, where w_even says whether W is
    even). sym: grad_U's columns kw = 0 and (w_even) Wf - 1 are stored as their Hermitian
    part along H, as _gate_fwd_kernel does with G."""
    plane = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    HWf = H * Wf
    e = j * BLOCK + tl.arange(0, BLOCK)
    m = e < HWf
    c = plane % h
    n = plane // h
    off = (plane * HWf + e) * 2
    gr = tl.load(gG_ptr + off, mask=m, other=0.0)
    gi = tl.load(gG_ptr + off + 1, mask=m, other=0.0)
    kh = e // Wf
    kw = e - kh * Wf
    single = (weighted == 0) | (kw == 0) | ((w_even != 0) & (kw == Wf - 1))
    cw = tl.where(single, 1.0, 2.0)
    ur = tl.load(U_ptr + off, mask=m, other=0.0)
    ui = tl.load(U_ptr + off + 1, mask=m, other=0.0)
    aw = tl.load(aw_ptr + c)
    ab = tl.load(ab_ptr + c)
    pw = tl.load(pw_ptr + c)
    pb = tl.load(pb_ptr + c)
    gur, gui, dA2, dP2, A, P = _gate_adjoint(gr * cw, gi * cw, ur, ui, aw, ab, pw, pb)
    dA2 = tl.where(m, dA2, 0.0)
    dP2 = tl.where(m, dP2, 0.0)
    row = part_ptr + (n * nchunks + j) * (4 * h) + c
    tl.store(row, tl.sum(dA2 * A, axis=0))
    tl.store(row + h, tl.sum(dA2, axis=0))
    tl.store(row + 2 * h, tl.sum(dP2 * P, axis=0))
    tl.store(row + 3 * h, tl.sum(dP2, axis=0))
    inv_cw = tl.where(single, 1.0, 0.5)
    gur = gur * inv_cw
    gui = gui * inv_cw
    if sym != 0:
        # The partner's grad_U, whose weights are 1 in these columns.
        special, em = _mirror(plane * HWf, kh, kw, H, Wf, w_even, m)
        mr = tl.load(gG_ptr + 2 * em, mask=special, other=0.0)
        mi = tl.load(gG_ptr + 2 * em + 1, mask=special, other=0.0)
        vr = tl.load(U_ptr + 2 * em, mask=special, other=0.0)
        vi = tl.load(U_ptr + 2 * em + 1, mask=special, other=0.0)
        hr, hi, _a, _b, _c, _d = _gate_adjoint(mr, mi, vr, vi, aw, ab, pw, pb)
        gur = tl.where(special, (gur + hr) * 0.5, gur)
        gui = tl.where(special, (gui - hi) * 0.5, gui)
    tl.store(gU_ptr + off, gur, mask=m)
    tl.store(gU_ptr + off + 1, gui, mask=m)


# ---- launchers ---------------------------------------------------------------------


def _grid(U):
    N, h, H, Wf, _ = U.shape
    B = cm.GATE_BWD_CONFIG["BLOCK"]
    return (N * h, cm.cdiv(H * Wf, B)), B


def _width_flags(Wf, width, what):
    """(w_even) for a half spectrum of Wf columns of a plane `width` wide."""
    if width // 2 + 1 != Wf:
        raise ValueError(f"{what}: a half spectrum of {Wf} columns is not that of a plane {width} wide")
    return int(width % 2 == 0)


def gate_forward(U, amp_w, amp_b, pha_w, pha_b, hermitian_width=None):
    """G = gate(U) for the real view U (N, h, H, Wf, 2); parameters have h elements.

    hermitian_width=W: G's columns kw = 0 and (W even) W / 2 come out as their Hermitian
    part along H, ready for any library's irfft2 (adaptir_kernels.spectrum.irfft2)."""
    U = cm.f32(U, "U")
    params = [cm.f32(t, name).reshape(-1) for t, name in
              ((amp_w, "amp_w"), (amp_b, "amp_b"), (pha_w, "pha_w"), (pha_b, "pha_b"))]
    N, h, H, Wf, _ = U.shape
    sym = int(hermitian_width is not None)
    w_even = _width_flags(Wf, hermitian_width, "gate_forward") if sym else 0
    G = cm.new(U.shape, U.device)
    total = N * h * H * Wf
    B = cm.FLAT_CONFIG["BLOCK"]
    with cm.device_guard(U):
        _gate_fwd_kernel[(cm.cdiv(total, B),)](U, G, *params, total, h, H, Wf, sym, w_even,
                                               BLOCK=B, **cm.opts(cm.FLAT_CONFIG))
    return G


def gate_backward_into(grad_G, U, amp_w, amp_b, pha_w, pha_b, weights_of_width=None, hermitian=False):
    """(grad_U, grad_amp_w, grad_amp_b, grad_pha_w, grad_pha_b). With weights_of_width=W,
    grad_G is taken as c * grad_G and grad_U is returned divided by c (c of SPEC 4.1);
    hermitian (with weights_of_width) returns grad_U's columns kw = 0 and (W even) W / 2
    as their Hermitian part along H, as gate_forward's hermitian_width does with G."""
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
    if hermitian and not weighted:
        raise ValueError("gate_backward_into: hermitian needs weights_of_width (the plane's width)")
    w_even = _width_flags(Wf, weights_of_width, "gate_backward_into") if weighted else 0
    with cm.device_guard(U):
        _gate_bwd_kernel[grid](grad_G, U, grad_U, part, *params, h, H, Wf, grid[1], int(weighted), int(hermitian),
                               w_even, BLOCK=B, **cm.opts(cm.GATE_BWD_CONFIG))
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
               total="i32", h="i32", H="i32", Wf="i32", sym="i32", w_even="i32")
    yield ("spectral_gate._gate_fwd_kernel", _gate_fwd_kernel, sig, dict(BLOCK=fc["BLOCK"]), cm.opts(fc))
    sig = dict(gG_ptr="*fp32", U_ptr="*fp32", gU_ptr="*fp32", part_ptr="*fp32", aw_ptr="*fp32", ab_ptr="*fp32",
               pw_ptr="*fp32", pb_ptr="*fp32", h="i32", H="i32", Wf="i32", nchunks="i32", weighted="i32",
               sym="i32", w_even="i32")
    bc = cm.GATE_BWD_CONFIG
    yield ("spectral_gate._gate_bwd_kernel", _gate_bwd_kernel, sig, dict(BLOCK=bc["BLOCK"]), cm.opts(bc))
