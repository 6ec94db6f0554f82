"""combine_out in Triton: v = cs * (cg * l + sg * g) and out = v @ tail_w^T written straight
into the backbone's layout and dtype, and the explicit backward. Signatures:
adaptir_kernels/ops/combine_out.py.

A program owns BM consecutive pixels of one sample (all h channels), so v lives in
registers and the output rows it writes are complete; C is walked in chunks of BK.
Row addressing as in project_in.py: pixel p of sample n is backbone row n * sn + p * sp.

Backward: a program reads its block of grad_out rows from memory once for
grad_v = grad_out @ tail_w, then walks the same rows again (from cache, RS pixels at a
time) for its partial grad_tail_w = grad_out^T v, stored per block and summed over
blocks in a fixed order by colsum, like the per-sample partial sums of grad_cg and
grad_cs. (A single walk would need either the whole C x h partial or the whole block's
grad_v accumulated across column chunks in registers; fp32 dots on FMA units make long
reduction dimensions expensive in registers.)
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common as cm


@triton.jit
def _load_hidden(l_ptr, g_ptr, sg_ptr, cg_ptr, cs_ptr, n, p, pmask, ch, hmask, h, HW):
    m2d = pmask[:, None] & hmask[None, :]
    hid = (n * h * HW + p)[:, None] + ch[None, :].to(tl.int64) * HW
    loc = tl.load(l_ptr + hid, mask=m2d, other=0.0)
    g = tl.load(g_ptr + hid, mask=m2d, other=0.0)
    sg = tl.load(sg_ptr + n * HW + p, mask=pmask, other=0.0)
    cg = tl.load(cg_ptr + n * h + ch, mask=hmask, other=0.0)
    cs = tl.load(cs_ptr + n * h + ch, mask=hmask, other=0.0)
    return hid, m2d, loc, g, sg, cg, cs


@triton.jit
def _comb_fwd_kernel(l_ptr, g_ptr, sg_ptr, cg_ptr, cs_ptr, tw_ptr, out_ptr,
                C, h, HW, sn, sp,
                BM: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr):
    pblk = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    p = pblk * BM + tl.arange(0, BM)
    pmask = p < HW
    ch = tl.arange(0, BH)
    hmask = ch < h
    hid, m2d, loc, g, sg, cg, cs = _load_hidden(l_ptr, g_ptr, sg_ptr, cg_ptr, cs_ptr, n, p, pmask, ch, hmask, h, HW)
    v = cs[None, :] * (cg[None, :] * loc + sg[:, None] * g)
    orow = n * sn + p * sp
    kk0 = tl.arange(0, BK)
    for k0 in range(0, C, BK):
        kk = k0 + kk0
        kmask = kk < C
        tw = tl.load(tw_ptr + kk[None, :] * h + ch[:, None], mask=hmask[:, None] & kmask[None, :], other=0.0)
        o = tl.dot(v, tw, input_precision="ieee")
        tl.store(out_ptr + orow[:, None] * C + kk[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=pmask[:, None] & kmask[None, :])


@triton.jit
def _comb_bwd_kernel(go_ptr, l_ptr, g_ptr, sg_ptr, cg_ptr, cs_ptr, tw_ptr,
                gl_ptr, gg_ptr, gsg_ptr, ptail_ptr, pgate_ptr,
                N, C, h, HW, sn, sp, npb,
                BM: tl.constexpr, BK1: tl.constexpr, BK2: tl.constexpr, BH: tl.constexpr, RS: tl.constexpr):
    pblk = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    p = pblk * BM + tl.arange(0, BM)
    pmask = p < HW
    ch = tl.arange(0, BH)
    hmask = ch < h
    hid, m2d, loc, g, sg, cg, cs = _load_hidden(l_ptr, g_ptr, sg_ptr, cg_ptr, cs_ptr, n, p, pmask, ch, hmask, h, HW)
    orow = n * sn + p * sp
    # grad_v = grad_out @ tail_w over all of C.
    gv = tl.zeros((BM, BH), dtype=tl.float32)
    k1 = tl.arange(0, BK1)
    for k0 in range(0, C, BK1):
        kk = k0 + k1
        kmask = kk < C
        go = tl.load(go_ptr + orow[:, None] * C + kk[None, :], mask=pmask[:, None] & kmask[None, :],
                     other=0.0).to(tl.float32)
        tw = tl.load(tw_ptr + kk[:, None] * h + ch[None, :], mask=kmask[:, None] & hmask[None, :], other=0.0)
        gv = tl.dot(go, tw, gv, input_precision="ieee")
    w = cg[None, :] * loc + sg[:, None] * g
    gvc = gv * cs[None, :]
    tl.store(gl_ptr + hid, gvc * cg[None, :], mask=m2d)
    tl.store(gg_ptr + hid, gvc * sg[:, None], mask=m2d)
    tl.store(gsg_ptr + n * HW + p, tl.sum(gvc * g, axis=1), mask=pmask)
    # pgate[pblk] = [grad_cg (N, h) | grad_cs (N, h)]: block (pblk, n) owns sample n's slots.
    prow = pgate_ptr + pblk * (2 * N * h) + n * h + ch
    tl.store(prow, tl.sum(gvc * loc, axis=0), mask=hmask)
    tl.store(prow + N * h, tl.sum(gv * w, axis=0), mask=hmask)
    # This block's grad_tail_w = grad_out^T v, chunk by chunk, RS pixels at a time: the
    # block's grad_out rows were just read, so this second walk is served by the cache.
    block = n * npb + pblk
    k2 = tl.arange(0, BK2)
    for k0 in range(0, C, BK2):
        kk = k0 + k2
        kmask = kk < C
        pt = tl.zeros((BK2, BH), dtype=tl.float32)
        for r0 in range(0, BM, RS):
            ps = pblk * BM + r0 + tl.arange(0, RS)
            smask = ps < HW
            _, _, ls, gs, sgs, _, _ = _load_hidden(l_ptr, g_ptr, sg_ptr, cg_ptr, cs_ptr, n, ps, smask, ch, hmask,
                                                   h, HW)
            vs = cs[None, :] * (cg[None, :] * ls + sgs[:, None] * gs)
            gos = tl.load(go_ptr + (n * sn + ps * sp)[:, None] * C + kk[None, :],
                          mask=smask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
            pt = tl.dot(tl.trans(gos), vs, pt, input_precision="ieee")
        tl.store(ptail_ptr + block * C * h + kk[:, None] * h + ch[None, :], pt,
                 mask=kmask[:, None] & hmask[None, :])


# ---- launchers ---------------------------------------------------------------------


def _geometry(l, layout):
    N, h, H, W = l.shape
    HW = H * W
    if layout == "nhwc":
        return N, h, H, W, HW, HW, 1
    if layout == "lnc":
        return N, h, H, W, HW, 1, N
    raise ValueError(f"unknown layout {layout!r}")


def _prep(l, g, sg, cg, cs, tail_w, op="combine_out"):
    N, h, H, W = cm.hidden_input(op, l, "l")
    cm.check(op, l, g=(g, (N, h, H, W)), sg=(sg, (N, H, W)), cg=(cg, (N, h)), cs=(cs, (N, h)),
             tail_w=(tail_w, (None, h)))
    return (cm.f32(l, "l"), cm.f32(g, "g"), cm.f32(sg, "sg"), cm.f32(cg, "cg"), cm.f32(cs, "cs"),
            cm.f32(tail_w, "tail_w"))


def forward(l, g, sg, cg, cs, tail_w, layout, out_dtype):
    l, g, sg, cg, cs, tail_w = _prep(l, g, sg, cg, cs, tail_w)
    if out_dtype not in cm.TRITON_DTYPE:
        raise TypeError(f"backend 'triton' writes float32, float16 or bfloat16 outputs, not {out_dtype}")
    N, h, H, W, HW, sn, sp = _geometry(l, layout)
    C = tail_w.shape[0]
    BH = cm.hidden_block(h)
    cfg = cm.COMB_FWD_CONFIGS[BH]
    out = cm.new((N, H, W, C) if layout == "nhwc" else (HW, N, C), l.device, out_dtype)
    grid = (cm.cdiv(HW, cfg["BM"]), N)
    with cm.device_guard(l):
        _comb_fwd_kernel[grid](l, g, sg, cg, cs, tail_w, out, C, h, HW, sn, sp,
                               BM=cfg["BM"], BK=cfg["BK"], BH=BH, **cm.opts(cfg))
    return out


def backward(grad_out, l, g, sg, cg, cs, tail_w, layout):
    l, g, sg, cg, cs, tail_w = _prep(l, g, sg, cg, cs, tail_w, "combine_out_backward")
    grad_out = cm.io(grad_out, "grad_out")
    N, h, H, W, HW, sn, sp = _geometry(l, layout)
    C = tail_w.shape[0]
    cm.check("combine_out_backward", l,
             grad_out=(grad_out, (N, H, W, C) if layout == "nhwc" else (HW, N, C)))
    BH = cm.hidden_block(h)
    cfg = cm.COMB_BWD_CONFIGS[BH]
    npb = cm.cdiv(HW, cfg["BM"])
    dev = l.device
    grad_l = cm.new(l.shape, dev)
    grad_g = cm.new(l.shape, dev)
    grad_sg = cm.new(sg.shape, dev)
    grad_cg = cm.new(cg.shape, dev)
    grad_cs = cm.new(cs.shape, dev)
    grad_tail = cm.new(tail_w.shape, dev)
    ptail = cm.new((N * npb, C * h), dev)
    pgate = cm.new((npb, 2 * N * h), dev)
    with cm.device_guard(l):
        _comb_bwd_kernel[(npb, N)](grad_out, l, g, sg, cg, cs, tail_w, grad_l, grad_g, grad_sg, ptail, pgate,
                                   N, C, h, HW, sn, sp, npb, BM=cfg["BM"], BK1=cfg["BK1"], BK2=cfg["BK2"], BH=BH,
                                   RS=cfg["RS"], **cm.opts(cfg))
        cm.colsum(ptail, [grad_tail])
        cm.colsum(pgate, [grad_cg, grad_cs])
    return grad_l, grad_g, grad_sg, grad_cg, grad_cs, grad_tail


# ---- what the launchers can pick, for compile_check.py ------------------------------


def compile_specs():
    for BH in cm.HIDDEN_BLOCKS:
        cfg = cm.COMB_FWD_CONFIGS[BH]
        const = dict(BM=cfg["BM"], BK=cfg["BK"], BH=BH)
        bcfg = cm.COMB_BWD_CONFIGS[BH]
        bconst = dict(BM=bcfg["BM"], BK1=bcfg["BK1"], BK2=bcfg["BK2"], BH=BH, RS=bcfg["RS"])
        for dt in cm.IO_DTYPES:
            t = cm.TRITON_DTYPE[dt]
            sig = dict(l_ptr="*fp32", g_ptr="*fp32", sg_ptr="*fp32", cg_ptr="*fp32", cs_ptr="*fp32",
                       tw_ptr="*fp32", out_ptr=f"*{t}", C="i32", h="i32", HW="i32", sn="i32", sp="i32")
            yield (f"combine_out._comb_fwd_kernel[BH={BH},{t}]", _comb_fwd_kernel, sig, const, cm.opts(cfg))
            sig = dict(go_ptr=f"*{t}", l_ptr="*fp32", g_ptr="*fp32", sg_ptr="*fp32", cg_ptr="*fp32",
                       cs_ptr="*fp32", tw_ptr="*fp32", gl_ptr="*fp32", gg_ptr="*fp32", gsg_ptr="*fp32",
                       ptail_ptr="*fp32", pgate_ptr="*fp32", N="i32", C="i32", h="i32", HW="i32", sn="i32",
                       sp="i32", npb="i32")
            yield (f"combine_out._comb_bwd_kernel[BH={BH},{t}]", _comb_bwd_kernel, sig, bconst, cm.opts(bcfg))
