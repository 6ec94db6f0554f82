"""local_branch in Triton: factorised depthwise 3x3 conv, bias and spatial gate in one pass,
and the explicit backward. Signatures: adaptir_kernels/ops/local_branch.py.

A program owns a tile of all h channels x BP consecutive pixels of one sample, so the
spatial gate (a sum over channels) closes inside the program. The 3x3 kernel
K = conv_A @ conv_B (h x 9) is computed once per call by _taps_kernel; each conv program
reads one K column per tap.

Backward (l and sg recomputed from u, never saved):
    _bwd_tap_kernel: recompute l, sg; grad_s = grad_sg * sg * (1 - sg);
        grad_lt = grad_l + grad_s * si_weight (stored, h-wide); per-program partial sums of
        grad_K (folded through A and B into partial grad_A, grad_B, which are linear in
        grad_K), grad_conv_bias, grad_si_weight, grad_si_bias;
    _bwd_input_kernel: grad_u = the transposed depthwise conv of grad_lt;
    colsum: the partial sums reduced in a fixed order, straight into the five gradients.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common as cm


@triton.jit
def _taps_kernel(a_ptr, b_ptr, k_ptr, h, rank, BH: tl.constexpr):
    """K = A @ B, (h, 9), once per call (one program)."""
    ch = tl.arange(0, BH)
    tap = tl.arange(0, 16)
    K = tl.zeros((BH, 16), dtype=tl.float32)
    for r in range(0, rank):
        a = tl.load(a_ptr + ch * rank + r, mask=ch < h, other=0.0)
        b = tl.load(b_ptr + r * 9 + tap, mask=tap < 9, other=0.0)
        K += a[:, None] * b[None, :]
    tl.store(k_ptr + ch[:, None] * 9 + tap[None, :], K, mask=(ch < h)[:, None] & (tap < 9)[None, :])


@triton.jit
def _conv_tile(ptr2d, k_ptr, ch, cmask, m2d, pmask, y_lo, y_hi, x_lo, x_hi, W, FLIP: tl.constexpr,
               BH: tl.constexpr, BP: tl.constexpr):
    """sum_t K[:, t] * src[:, p + offset_t] (zero padding), offset_t negated when FLIP."""
    acc = tl.zeros((BH, BP), dtype=tl.float32)
    kp = k_ptr + ch[:, None] * 9
    kmask = cmask[:, None]
    for t in tl.static_range(9):
        dy = (1 - t // 3) if FLIP else (t // 3 - 1)
        dx = (1 - t % 3) if FLIP else (t % 3 - 1)
        ok = pmask
        if dy < 0:
            ok = ok & y_lo
        if dy > 0:
            ok = ok & y_hi
        if dx < 0:
            ok = ok & x_lo
        if dx > 0:
            ok = ok & x_hi
        src = tl.load(ptr2d + (dy * W + dx), mask=m2d & ok[None, :], other=0.0)
        acc += tl.load(kp + t, mask=kmask, other=0.0) * src
    return acc


@triton.jit
def _tile(h, H, W, BH: tl.constexpr, BP: tl.constexpr):
    pblk = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    HW = H * W
    p = pblk * BP + tl.arange(0, BP)
    pmask = p < HW
    y = p // W
    x = p - y * W
    ch = tl.arange(0, BH)
    cmask = ch < h
    m2d = cmask[:, None] & pmask[None, :]
    off2d = (n * h * HW + ch.to(tl.int64) * HW)[:, None] + p[None, :]
    return pblk, n, HW, p, pmask, ch, cmask, m2d, off2d, y >= 1, y < H - 1, x >= 1, x < W - 1


@triton.jit
def _local_fwd_kernel(u_ptr, k_ptr, cb_ptr, siw_ptr, sib_ptr, l_ptr, sg_ptr,
                h, H, W,
                BH: tl.constexpr, BP: tl.constexpr):
    pblk, n, HW, p, pmask, ch, cmask, m2d, off2d, y_lo, y_hi, x_lo, x_hi = _tile(h, H, W, BH, BP)
    loc = _conv_tile(u_ptr + off2d, k_ptr, ch, cmask, m2d, pmask, y_lo, y_hi, x_lo, x_hi, W, False, BH, BP) \
        + tl.load(cb_ptr + ch, mask=cmask, other=0.0)[:, None]
    tl.store(l_ptr + off2d, loc, mask=m2d)
    siw = tl.load(siw_ptr + ch, mask=cmask, other=0.0)
    s = tl.sum(loc * siw[:, None], axis=0) + tl.load(sib_ptr)
    tl.store(sg_ptr + n * HW + p, 1.0 / (1.0 + tl.exp(-s)), mask=pmask)


@triton.jit
def _bwd_tap_kernel(u_ptr, k_ptr, a_ptr, b_ptr, cb_ptr, siw_ptr, sib_ptr, gl_ptr, gsg_ptr, glt_ptr, part_ptr,
                    h, rank, H, W, npb,
                    BH: tl.constexpr, BP: tl.constexpr):
    pblk, n, HW, p, pmask, ch, cmask, m2d, off2d, y_lo, y_hi, x_lo, x_hi = _tile(h, H, W, BH, BP)
    uptr = u_ptr + off2d
    loc = _conv_tile(uptr, k_ptr, ch, cmask, m2d, pmask, y_lo, y_hi, x_lo, x_hi, W, False, BH, BP) \
        + tl.load(cb_ptr + ch, mask=cmask, other=0.0)[:, None]
    loc = tl.where(m2d, loc, 0.0)
    siw = tl.load(siw_ptr + ch, mask=cmask, other=0.0)
    sg = 1.0 / (1.0 + tl.exp(-(tl.sum(loc * siw[:, None], axis=0) + tl.load(sib_ptr))))
    gs = tl.where(pmask, tl.load(gsg_ptr + n * HW + p, mask=pmask, other=0.0) * sg * (1.0 - sg), 0.0)
    glt = tl.where(m2d, tl.load(gl_ptr + off2d, mask=m2d, other=0.0) + gs[None, :] * siw[:, None], 0.0)
    tl.store(glt_ptr + off2d, glt, mask=m2d)
    # grad_K[c, t] = sum_p grad_lt[c, p] * u[c, p + offset_t]
    tap = tl.arange(0, 16)
    gK = tl.zeros((BH, 16), dtype=tl.float32)
    for t in tl.static_range(9):
        dy = t // 3 - 1
        dx = t % 3 - 1
        ok = pmask
        if dy < 0:
            ok = ok & y_lo
        if dy > 0:
            ok = ok & y_hi
        if dx < 0:
            ok = ok & x_lo
        if dx > 0:
            ok = ok & x_hi
        ut = tl.load(uptr + (dy * W + dx), mask=m2d & ok[None, :], other=0.0)
        gK += tl.where(tap[None, :] == t, tl.sum(glt * ut, axis=1)[:, None], 0.0)
    # Partial row: [grad_A (h*r) | grad_B (r*9) | grad_conv_bias (h) | grad_si_weight (h) | grad_si_bias]
    row = part_ptr + (n * npb + pblk) * (h * rank + rank * 9 + 2 * h + 1)
    for r in range(0, rank):
        b = tl.load(b_ptr + r * 9 + tap, mask=tap < 9, other=0.0)
        tl.store(row + ch * rank + r, tl.sum(gK * b[None, :], axis=1), mask=cmask)
        a = tl.load(a_ptr + ch * rank + r, mask=cmask, other=0.0)
        tl.store(row + h * rank + r * 9 + tap, tl.sum(a[:, None] * gK, axis=0), mask=tap < 9)
    off = h * rank + rank * 9
    tl.store(row + off + ch, tl.sum(glt, axis=1), mask=cmask)
    tl.store(row + off + h + ch, tl.sum(gs[None, :] * loc, axis=1), mask=cmask)
    tl.store(row + off + 2 * h, tl.sum(gs, axis=0))


@triton.jit
def _bwd_input_kernel(glt_ptr, k_ptr, gu_ptr, h, H, W,
                      BH: tl.constexpr, BP: tl.constexpr):
    """grad_u[c, p] = sum_t K[c, t] * grad_lt[c, p - offset_t] (zero outside the image)."""
    pblk, n, HW, p, pmask, ch, cmask, m2d, off2d, y_lo, y_hi, x_lo, x_hi = _tile(h, H, W, BH, BP)
    acc = _conv_tile(glt_ptr + off2d, k_ptr, ch, cmask, m2d, pmask, y_lo, y_hi, x_lo, x_hi, W, True, BH, BP)
    tl.store(gu_ptr + off2d, acc, mask=m2d)


# ---- launchers ---------------------------------------------------------------------


_TAPS_CONFIG = dict(num_warps=1)


def _prep(u, conv_A, conv_B, conv_bias, si_weight, si_bias):
    u = cm.f32(u, "u")
    conv_A, conv_B = cm.f32(conv_A, "conv_A"), cm.f32(conv_B, "conv_B")
    conv_bias, si_weight = cm.f32(conv_bias, "conv_bias"), cm.f32(si_weight, "si_weight")
    si_bias = cm.f32(si_bias, "si_bias")
    N, h, H, W = cm.hidden_input("local_branch", u)
    cm.check("local_branch", u, conv_A=(conv_A, (h, None)), conv_B=(conv_B, (conv_A.shape[1], 9)),
             conv_bias=(conv_bias, h), si_weight=(si_weight, h), si_bias=(si_bias, 1))
    BH = cm.hidden_block(h)
    cfg = cm.PIXEL_CONFIGS[BH]
    grid = (cm.cdiv(H * W, cfg["BP"]), N)
    K = cm.new((h, 9), u.device)
    with cm.device_guard(u):
        _taps_kernel[(1,)](conv_A, conv_B, K, h, conv_A.shape[1], BH=BH, **cm.opts(_TAPS_CONFIG))
    return u, conv_A, conv_B, conv_bias, si_weight, si_bias, K, BH, cfg, grid


def forward(u, conv_A, conv_B, conv_bias, si_weight, si_bias):
    u, conv_A, conv_B, conv_bias, si_weight, si_bias, K, BH, cfg, grid = _prep(
        u, conv_A, conv_B, conv_bias, si_weight, si_bias)
    N, h, H, W = u.shape
    loc = cm.new(u.shape, u.device)
    sg = cm.new((N, H, W), u.device)
    with cm.device_guard(u):
        _local_fwd_kernel[grid](u, K, conv_bias, si_weight, si_bias, loc, sg, h, H, W,
                                BH=BH, BP=cfg["BP"], **cm.opts(cfg))
    return loc, sg


def backward(grad_l, grad_sg, u, conv_A, conv_B, conv_bias, si_weight, si_bias):
    u, conv_A, conv_B, conv_bias, si_weight, si_bias, K, BH, cfg, grid = _prep(
        u, conv_A, conv_B, conv_bias, si_weight, si_bias)
    grad_l, grad_sg = cm.f32(grad_l, "grad_l"), cm.f32(grad_sg, "grad_sg")
    N, h, H, W = u.shape
    cm.check("local_branch_backward", u, grad_l=(grad_l, (N, h, H, W)), grad_sg=(grad_sg, (N, H, W)))
    rank = conv_A.shape[1]
    dev = u.device
    tcfg = cm.PIXEL_BWD_CONFIGS[BH]
    npb = cm.cdiv(H * W, tcfg["BP"])
    glt = cm.new(u.shape, dev)
    part = cm.new((N * npb, h * rank + rank * 9 + 2 * h + 1), dev)
    grad_u = cm.new(u.shape, dev)
    grads = [cm.new(t.shape, dev) for t in (conv_A, conv_B, conv_bias, si_weight, si_bias)]
    with cm.device_guard(u):
        _bwd_tap_kernel[(npb, N)](u, K, conv_A, conv_B, conv_bias, si_weight, si_bias, grad_l, grad_sg, glt, part,
                                  h, rank, H, W, npb, BH=BH, BP=tcfg["BP"], **cm.opts(tcfg))
        _bwd_input_kernel[grid](glt, K, grad_u, h, H, W, BH=BH, BP=cfg["BP"], **cm.opts(cfg))
        cm.colsum(part, grads)
    return (grad_u, *grads)


# ---- what the launchers can pick, for compile_check.py ------------------------------


def compile_specs():
    for BH in cm.HIDDEN_BLOCKS:
        cfg = cm.PIXEL_CONFIGS[BH]
        const = dict(BH=BH, BP=cfg["BP"])
        sig = dict(a_ptr="*fp32", b_ptr="*fp32", k_ptr="*fp32", h="i32", rank="i32")
        yield (f"local_branch._taps_kernel[BH={BH}]", _taps_kernel, sig, dict(BH=BH), cm.opts(_TAPS_CONFIG))
        sig = dict(u_ptr="*fp32", k_ptr="*fp32", cb_ptr="*fp32", siw_ptr="*fp32", sib_ptr="*fp32",
                   l_ptr="*fp32", sg_ptr="*fp32", h="i32", H="i32", W="i32")
        yield (f"local_branch._local_fwd_kernel[BH={BH}]", _local_fwd_kernel, sig, const, cm.opts(cfg))
        sig = dict(u_ptr="*fp32", k_ptr="*fp32", a_ptr="*fp32", b_ptr="*fp32", cb_ptr="*fp32", siw_ptr="*fp32",
                   sib_ptr="*fp32", gl_ptr="*fp32", gsg_ptr="*fp32", glt_ptr="*fp32", part_ptr="*fp32",
                   h="i32", rank="i32", H="i32", W="i32", npb="i32")
        tcfg = cm.PIXEL_BWD_CONFIGS[BH]
        yield (f"local_branch._bwd_tap_kernel[BH={BH}]", _bwd_tap_kernel, sig, dict(BH=BH, BP=tcfg["BP"]),
               cm.opts(tcfg))
        sig = dict(glt_ptr="*fp32", k_ptr="*fp32", gu_ptr="*fp32", h="i32", H="i32", W="i32")
        yield (f"local_branch._bwd_input_kernel[BH={BH}]", _bwd_input_kernel, sig, const, cm.opts(cfg))
