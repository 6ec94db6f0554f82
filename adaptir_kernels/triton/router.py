"""router in Triton: one program per sample, one launch forward and one (plus two column
sums of the parameter-gradient partials) backward; samples with many pixels (a whole
image at N = 1) are split over several programs. Signature and math:
adaptir_kernels/ops/router.py.

The work is tiny (an h x H*W reduction and two MLPs on h-wide vectors per sample); the
composite costs about 15 ATen calls forward and 50 backward, each of which a GPU host
has to issue. Here:

Forward (`_router_fwd_kernel`): scores s_p = compress_w . u_p + compress_b over the sample's
    pixels, softmax, pooled = sum_p a_p u_p (two passes over u: the maximum, then the
    exponentials and the pooled sum), cs = proj2(gelu(proj0(pooled))) and
    cg = sigmoid(ci3(gelu(ci1(gmean)))).
Backward (`_router_bwd_kernel`): the same recomputed, then the MLP gradients, grad_s =
    a * (grad_pooled . u - grad_pooled . pooled), grad_u = grad_pooled a + compress_w
    grad_s written once (a third pass over u), and every parameter gradient as one row of
    per-sample partials, summed in a fixed order by `_common.colsum` (two launches of
    five outputs each).

Split samples (`_common.chunks`: more than SPLIT_MIN_ITERS pixel tiles per sample): the pixels
are cut into S chunks of CHUNK_ITERS tiles, and `_router_part_kernel` (S x N programs)
writes each chunk's softmax statistics (its maximum score, its sum of exponentials and
its unnormalised pooled vector), which the per-sample kernels combine (the maximum of
the maxima, the rescaled sums) instead of reading u. Backward, the per-sample kernel then
stops at the pooled gradient, and `_router_gu_kernel` (S x N programs) makes the pass
that writes grad_u, with compress_w / compress_b partials per chunk: one sequential
program per sample reading a 256 x 256 plane twice (three times backward) took most of
the adapter's GPU time at N = 1.

The two MLP widths (proj_hidden, ci_hidden) are padded to one block BJ of at most
MAX_J; wider adapters use the composite.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..ops.router import backward_torch, forward_torch
from . import _common as cm

MAX_J = 32  # the presets give at most hidden / 2 = 32
# A sample is split when its pixels take more than SPLIT_MIN_ITERS tiles of BP, into
# chunks of CHUNK_ITERS tiles, at most about two programs per SM in all.
SPLIT_MIN_ITERS = 64
CHUNK_ITERS = 16
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _gelu(t):
    return 0.5 * t * (1.0 + tl.math.erf(t * _SQRT1_2))


@triton.jit
def _gelu_grad(t):
    return 0.5 * (1.0 + tl.math.erf(t * _SQRT1_2)) + t * tl.exp(-0.5 * t * t) * _INV_SQRT_2PI


@triton.jit
def _tile(u_ptr, base, P, hi, p0, c, cmask, cw, cb, BP: tl.constexpr):
    """Pixels p0.. (below hi) of the sample (P pixels per channel): their indices, mask, u
    tile and scores compress_w . u_p + b."""
    p = p0 + tl.arange(0, BP)
    pm = p < hi
    ut = tl.load(u_ptr + base + c[:, None].to(tl.int64) * P + p[None, :], mask=cmask[:, None] & pm[None, :], other=0.0)
    return p, pm, ut, tl.sum(ut * cw[:, None], axis=0) + cb


@triton.jit
def _lanes(h, PH, Q, BH: tl.constexpr, BJ: tl.constexpr):
    """This program's sample, the channel lanes and the MLP-width lanes with their masks."""
    c = tl.arange(0, BH)
    j = tl.arange(0, BJ)
    return tl.program_id(0).to(tl.int64), c, c < h, j, j < PH, j < Q


@triton.jit
def _chunk_stats(u_ptr, base, P, lo, hi, cw, cb, c, cmask, BH: tl.constexpr, BP: tl.constexpr):
    """Softmax statistics of the sample's pixels lo..hi-1: (max score m, sum of
    exp(score - m), sum of exp(score - m) u_p)."""
    mx = tl.full((BP,), float("-inf"), tl.float32)
    for p0 in range(lo, hi, BP):
        p, pm, ut, sc = _tile(u_ptr, base, P, hi, p0, c, cmask, cw, cb, BP)
        mx = tl.maximum(mx, tl.where(pm, sc, float("-inf")))
    m = tl.max(mx, axis=0)
    ssum = tl.zeros((BP,), tl.float32)
    pooled = tl.zeros((BH,), tl.float32)
    for p0 in range(lo, hi, BP):
        p, pm, ut, sc = _tile(u_ptr, base, P, hi, p0, c, cmask, cw, cb, BP)
        e = tl.where(pm, tl.exp(sc - m), 0.0)
        ssum += e
        pooled += tl.sum(ut * e[None, :], axis=1)
    return m, tl.sum(ssum, axis=0), pooled


@triton.jit
def _combined_stats(st_ptr, n, S, SW, h, c, cmask):
    """The sample's (max score, sum of exponentials, pooled) from its S chunks' statistics
    (rows of SW: the unnormalised pooled vector, then m and the sum)."""
    row = st_ptr + n * S * SW
    m = tl.load(row + h)
    for k in range(1, S):
        m = tl.maximum(m, tl.load(row + k * SW + h))
    f = tl.exp(tl.load(row + h) - m)
    s = tl.load(row + h + 1) * f
    pooled = tl.load(row + c, mask=cmask, other=0.0) * f
    for k in range(1, S):
        f = tl.exp(tl.load(row + k * SW + h) - m)
        s += tl.load(row + k * SW + h + 1) * f
        pooled += tl.load(row + k * SW + c, mask=cmask, other=0.0) * f
    return m, s, pooled / s


@triton.jit
def _softmax_pool(u_ptr, st_ptr, n, h, P, S, cw, cb, c, cmask, SPLIT: tl.constexpr, BH: tl.constexpr,
                  BP: tl.constexpr):
    """(max score, sum of exp(score - max), pooled) for sample n: from u, or (SPLIT) from
    its chunks' statistics."""
    if SPLIT:
        m, s, pooled = _combined_stats(st_ptr, n, S, h + 2, h, c, cmask)
    else:
        m, s, pooled = _chunk_stats(u_ptr, n * h * P, P, 0, P, cw, cb, c, cmask, BH, BP)
        pooled = pooled / s
    return m, s, pooled


@triton.jit
def _chunk_lanes(cw_ptr, cb_ptr, h, P, CH, BH: tl.constexpr):
    """A chunk program's chunk k = program_id(0) and sample n = program_id(1), the number
    of chunks S, the channel lanes and mask, compress_w and _b, and the pixel range."""
    k = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BH)
    cmask = c < h
    lo = k * CH
    return (k, tl.program_id(1).to(tl.int64), tl.num_programs(0), c, cmask, tl.load(cw_ptr + c, mask=cmask, other=0.0),
            tl.load(cb_ptr), lo, tl.minimum(lo + CH, P))


@triton.jit
def _router_part_kernel(u_ptr, cw_ptr, cb_ptr, st_ptr, h, P, CH, BH: tl.constexpr, BP: tl.constexpr):
    """Chunk k = program_id(0) (pixels k CH .. k CH + CH - 1) of sample n = program_id(1):
    its softmax statistics as row n S + k of st (h + 2 columns)."""
    k, n, S, c, cmask, cw, cb, lo, hi = _chunk_lanes(cw_ptr, cb_ptr, h, P, CH, BH)
    m, s, pooled = _chunk_stats(u_ptr, n * h * P, P, lo, hi, cw, cb, c, cmask, BH, BP)
    row = st_ptr + (n * S + k) * (h + 2)
    tl.store(row + c, pooled, mask=cmask)
    tl.store(row + h, m)
    tl.store(row + h + 1, s)


@triton.jit
def _router_fwd_kernel(u_ptr, cw_ptr, cb_ptr, p0w_ptr, p0b_ptr, p2w_ptr, p2b_ptr, gm_ptr,
                c1w_ptr, c1b_ptr, c3w_ptr, c3b_ptr, cs_ptr, cg_ptr, st_ptr, h, P, PH, Q, S,
                SPLIT: tl.constexpr, BH: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr):
    n, c, cmask, j, jp, jq = _lanes(h, PH, Q, BH, BJ)
    cw = tl.load(cw_ptr + c, mask=cmask, other=0.0)
    cb = tl.load(cb_ptr)
    m, s, pooled = _softmax_pool(u_ptr, st_ptr, n, h, P, S, cw, cb, c, cmask, SPLIT, BH, BP)
    w0 = tl.load(p0w_ptr + j[:, None] * h + c[None, :], mask=jp[:, None] & cmask[None, :], other=0.0)
    hid = tl.sum(w0 * pooled[None, :], axis=1) + tl.load(p0b_ptr + j, mask=jp, other=0.0)
    w2 = tl.load(p2w_ptr + c[:, None] * PH + j[None, :], mask=cmask[:, None] & jp[None, :], other=0.0)
    cs = tl.sum(w2 * _gelu(hid)[None, :], axis=1) + tl.load(p2b_ptr + c, mask=cmask, other=0.0)
    gm = tl.load(gm_ptr + n * h + c, mask=cmask, other=0.0)
    w1 = tl.load(c1w_ptr + j[:, None] * h + c[None, :], mask=jq[:, None] & cmask[None, :], other=0.0)
    t = tl.sum(w1 * gm[None, :], axis=1) + tl.load(c1b_ptr + j, mask=jq, other=0.0)
    w3 = tl.load(c3w_ptr + c[:, None] * Q + j[None, :], mask=cmask[:, None] & jq[None, :], other=0.0)
    o = tl.sum(w3 * _gelu(t)[None, :], axis=1) + tl.load(c3b_ptr + c, mask=cmask, other=0.0)
    tl.store(cs_ptr + n * h + c, cs, mask=cmask)
    tl.store(cg_ptr + n * h + c, cm.sigmoid(o), mask=cmask)


@triton.jit
def _grad_pixels(u_ptr, gu_ptr, base, P, lo, hi, c, cmask, cw, cb, m, inv_s, gpool, dot,
                 BH: tl.constexpr, BP: tl.constexpr):
    """grad_u of the sample's pixels lo..hi-1, written; returns their shares of the
    compress_w and compress_b gradients."""
    gcw = tl.zeros((BH,), tl.float32)
    gcb = tl.zeros((BP,), tl.float32)
    for p0 in range(lo, hi, BP):
        p, pm, ut, sc = _tile(u_ptr, base, P, hi, p0, c, cmask, cw, cb, BP)
        a = tl.where(pm, tl.exp(sc - m) * inv_s, 0.0)
        gs = a * (tl.sum(ut * gpool[:, None], axis=0) - dot)
        gu = gpool[:, None] * a[None, :] + cw[:, None] * gs[None, :]
        tl.store(gu_ptr + base + c[:, None].to(tl.int64) * P + p[None, :], gu, mask=cmask[:, None] & pm[None, :])
        gcw += tl.sum(ut * gs[None, :], axis=1)
        gcb += gs
    return gcw, tl.sum(gcb, axis=0)


@triton.jit
def _router_gu_kernel(u_ptr, cw_ptr, cb_ptr, aux_ptr, gu_ptr, pc_ptr, h, P, CH,
                      BH: tl.constexpr, BP: tl.constexpr):
    """Split samples: grad_u of chunk k = program_id(0) of sample n = program_id(1), from
    the sample's row of aux (gpool, m, s, gpool . pooled); its compress_w / compress_b
    partials as row n S + k of pc (h + 1 columns)."""
    k, n, S, c, cmask, cw, cb, lo, hi = _chunk_lanes(cw_ptr, cb_ptr, h, P, CH, BH)
    row = aux_ptr + n * (h + 3)
    gpool = tl.load(row + c, mask=cmask, other=0.0)
    m = tl.load(row + h)
    inv_s = 1.0 / tl.load(row + h + 1)
    dot = tl.load(row + h + 2)
    gcw, gcb = _grad_pixels(u_ptr, gu_ptr, n * h * P, P, lo, hi, c, cmask, cw, cb, m, inv_s, gpool, dot, BH, BP)
    out = pc_ptr + (n * S + k) * (h + 1)
    tl.store(out + c, gcw, mask=cmask)
    tl.store(out + h, gcb)


@triton.jit
def _router_bwd_kernel(gcs_ptr, gcg_ptr, u_ptr, cw_ptr, cb_ptr, p0w_ptr, p0b_ptr, p2w_ptr, p2b_ptr, gm_ptr,
                c1w_ptr, c1b_ptr, c3w_ptr, c3b_ptr, gu_ptr, ggm_ptr, part_ptr, st_ptr, aux_ptr, h, P, PH, Q, K, S,
                SPLIT: tl.constexpr, BH: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr):
    """grad_u and grad_gmean of one sample; its parameter-gradient partials as row n of
    part (K columns: compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, ci1_w,
    ci1_b, ci3_w, ci3_b, each flattened). SPLIT: the softmax statistics come from the
    chunks' (st), and instead of grad_u and the compress_w / compress_b partials, the
    sample's row of aux (gpool, m, s, gpool . pooled) is written for _router_gu_kernel."""
    n, c, cmask, j, jp, jq = _lanes(h, PH, Q, BH, BJ)
    o_cb = h
    o_p0w = o_cb + 1
    o_p0b = o_p0w + PH * h
    o_p2w = o_p0b + PH
    o_p2b = o_p2w + h * PH
    o_c1w = o_p2b + h
    o_c1b = o_c1w + Q * h
    o_c3w = o_c1b + Q
    o_c3b = o_c3w + h * Q
    part = part_ptr + n * K
    base = n * h * P
    cw = tl.load(cw_ptr + c, mask=cmask, other=0.0)
    cb = tl.load(cb_ptr)
    m, s, pooled = _softmax_pool(u_ptr, st_ptr, n, h, P, S, cw, cb, c, cmask, SPLIT, BH, BP)
    # cs = proj2(gelu(proj0(pooled)))
    pmask = jp[:, None] & cmask[None, :]
    w0 = tl.load(p0w_ptr + j[:, None] * h + c[None, :], mask=pmask, other=0.0)
    hid = tl.sum(w0 * pooled[None, :], axis=1) + tl.load(p0b_ptr + j, mask=jp, other=0.0)
    gcs = tl.load(gcs_ptr + n * h + c, mask=cmask, other=0.0)
    tmask = cmask[:, None] & jp[None, :]
    tl.store(part + o_p2w + c[:, None] * PH + j[None, :], gcs[:, None] * _gelu(hid)[None, :], mask=tmask)
    tl.store(part + o_p2b + c, gcs, mask=cmask)
    w2 = tl.load(p2w_ptr + c[:, None] * PH + j[None, :], mask=tmask, other=0.0)
    ghid = tl.sum(w2 * gcs[:, None], axis=0) * _gelu_grad(hid)
    tl.store(part + o_p0w + j[:, None] * h + c[None, :], ghid[:, None] * pooled[None, :], mask=pmask)
    tl.store(part + o_p0b + j, ghid, mask=jp)
    # w0 loaded again (from the cache) rather than kept live across the w2 tile
    gpool = tl.sum(tl.load(p0w_ptr + j[:, None] * h + c[None, :], mask=pmask, other=0.0) * ghid[:, None], axis=0)
    # pooled = sum_p a_p u_p, a = softmax(compress_w . u + compress_b):
    # grad_s_p = a_p (gpool . u_p - sum_q a_q gpool . u_q), the sum being gpool . pooled
    dot = tl.sum(gpool * pooled, axis=0)
    if SPLIT:
        row = aux_ptr + n * (h + 3)
        tl.store(row + c, gpool, mask=cmask)
        tl.store(row + h, m)
        tl.store(row + h + 1, s)
        tl.store(row + h + 2, dot)
    else:
        gcw, gcb = _grad_pixels(u_ptr, gu_ptr, base, P, 0, P, c, cmask, cw, cb, m, 1.0 / s, gpool, dot, BH, BP)
        tl.store(part + c, gcw, mask=cmask)
        tl.store(part + o_cb, gcb)
    # cg = sigmoid(ci3(gelu(ci1(gmean))))
    qmask = jq[:, None] & cmask[None, :]
    gm = tl.load(gm_ptr + n * h + c, mask=cmask, other=0.0)
    w1 = tl.load(c1w_ptr + j[:, None] * h + c[None, :], mask=qmask, other=0.0)
    t = tl.sum(w1 * gm[None, :], axis=1) + tl.load(c1b_ptr + j, mask=jq, other=0.0)
    tg = _gelu(t)
    rmask = cmask[:, None] & jq[None, :]
    w3 = tl.load(c3w_ptr + c[:, None] * Q + j[None, :], mask=rmask, other=0.0)
    cg = cm.sigmoid(tl.sum(w3 * tg[None, :], axis=1) + tl.load(c3b_ptr + c, mask=cmask, other=0.0))
    go = tl.load(gcg_ptr + n * h + c, mask=cmask, other=0.0) * cg * (1.0 - cg)
    tl.store(part + o_c3w + c[:, None] * Q + j[None, :], go[:, None] * tg[None, :], mask=rmask)
    tl.store(part + o_c3b + c, go, mask=cmask)
    gt = tl.sum(w3 * go[:, None], axis=0) * _gelu_grad(t)
    tl.store(part + o_c1w + j[:, None] * h + c[None, :], gt[:, None] * gm[None, :], mask=qmask)
    tl.store(part + o_c1b + j, gt, mask=jq)
    w1 = tl.load(c1w_ptr + j[:, None] * h + c[None, :], mask=qmask, other=0.0)
    tl.store(ggm_ptr + n * h + c, tl.sum(w1 * gt[:, None], axis=0), mask=cmask)


_NAMES = ("u", "compress_w", "compress_b", "proj0_w", "proj0_b", "proj2_w", "proj2_b",
          "gmean", "ci1_w", "ci1_b", "ci3_w", "ci3_b")


def _check(op, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean, ci1_w, ci1_b, ci3_w, ci3_b):
    N, h, H, W = cm.hidden_input(op, u)
    p = proj0_w.shape[0] if proj0_w.dim() else 0
    q = ci1_w.shape[0] if ci1_w.dim() else 0
    cm.check(op, u, compress_w=(compress_w, h), compress_b=(compress_b, 1), proj0_w=(proj0_w, (p, h)),
             proj0_b=(proj0_b, (p,)), proj2_w=(proj2_w, (h, p)), proj2_b=(proj2_b, (h,)), gmean=(gmean, (N, h)),
             ci1_w=(ci1_w, (q, h)), ci1_b=(ci1_b, (q,)), ci3_w=(ci3_w, (h, q)), ci3_b=(ci3_b, (h,)))
    return N, h


def _config(BH, BJ):
    """The launch-table entry, with 8 warps where the BJ x BH weight tiles are largest
    (4 warps spill registers there)."""
    cfg = dict(cm.ROUTER_CONFIGS[BH])
    if BH * BJ >= 2048:
        cfg["num_warps"] = 8
    return cfg


def _blocks(u, proj0_w, ci1_w):
    """(BH, BJ, launch config), or None where the MLP widths exceed MAX_J."""
    width = max(proj0_w.shape[0], ci1_w.shape[0])
    if width > MAX_J:
        return None
    BH = cm.hidden_block(u.shape[1])
    BJ = max(8, triton.next_power_of_2(width))
    return BH, BJ, _config(BH, BJ)


def _chunk_stats_into(args, N, h, P, S, CH, BH, BP):
    """st (N, S, h + 2): the chunks' softmax statistics (_router_part_kernel)."""
    u = args[0]
    st = cm.new((N, S, h + 2), u.device)
    _router_part_kernel[(S, N)](u, args[1], args[2], st, h, P, CH, BH=BH, BP=BP,
                                **cm.opts(cm.ROUTER_CONFIGS[BH]))
    return st


def forward(u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean, ci1_w, ci1_b, ci3_w, ci3_b):
    _check("router", u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean, ci1_w, ci1_b, ci3_w, ci3_b)
    args = [cm.f32(t, name) for t, name in zip(
        (u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean, ci1_w, ci1_b, ci3_w, ci3_b), _NAMES)]
    blocks = _blocks(u, proj0_w, ci1_w)
    if blocks is None:
        return forward_torch(*args)
    BH, BJ, cfg = blocks
    N, h = u.shape[:2]
    P = u.shape[2] * u.shape[3]
    cs = cm.new((N, h), u.device)
    cg = cm.new((N, h), u.device)
    S, CH = cm.chunks(N, P, cfg["BP"], u.device, SPLIT_MIN_ITERS, CHUNK_ITERS)
    with cm.device_guard(u):
        st = _chunk_stats_into(args, N, h, P, S, CH, BH, cfg["BP"]) if S > 1 else cs  # cs: not read
        _router_fwd_kernel[(N,)](*args, cs, cg, st, h, P, proj0_w.shape[0], ci1_w.shape[0], S,
                                 SPLIT=S > 1, BH=BH, BJ=BJ, BP=cfg["BP"], **cm.opts(cfg))
    return cs, cg


def backward(grad_cs, grad_cg, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
             gmean, ci1_w, ci1_b, ci3_w, ci3_b):
    N, h = _check("router_backward", u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean,
                  ci1_w, ci1_b, ci3_w, ci3_b)
    cm.check("router_backward", u, grad_cs=(grad_cs, (N, h)), grad_cg=(grad_cg, (N, h)))
    grads = [cm.f32(grad_cs, "grad_cs"), cm.f32(grad_cg, "grad_cg")]
    args = [cm.f32(t, name) for t, name in zip(
        (u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean, ci1_w, ci1_b, ci3_w, ci3_b), _NAMES)]
    blocks = _blocks(u, proj0_w, ci1_w)
    if blocks is None:
        return backward_torch(*grads, *args)
    BH, BJ, cfg = blocks
    N, h = u.shape[:2]
    P = u.shape[2] * u.shape[3]
    params = args[1:7] + args[8:]
    K = sum(t.numel() for t in params)
    grad_u = cm.new(u.shape, u.device)
    grad_gmean = cm.new((N, h), u.device)
    part = cm.new((N, K), u.device)
    pgrads = [cm.new(t.shape, u.device) for t in params]
    S, CH = cm.chunks(N, P, cfg["BP"], u.device, SPLIT_MIN_ITERS, CHUNK_ITERS)
    with cm.device_guard(u):
        if S > 1:
            st = _chunk_stats_into(args, N, h, P, S, CH, BH, cfg["BP"])
            aux = cm.new((N, h + 3), u.device)
        else:
            st = aux = part  # not read
        _router_bwd_kernel[(N,)](*grads, *args, grad_u, grad_gmean, part, st, aux, h, P, proj0_w.shape[0],
                                 ci1_w.shape[0], K, S, SPLIT=S > 1, BH=BH, BJ=BJ, BP=cfg["BP"], **cm.opts(cfg))
        if S > 1:
            # compress_w / compress_b from the chunks' partials; the rest from the samples'
            pc = cm.new((N * S, h + 1), u.device)
            _router_gu_kernel[(S, N)](args[0], args[1], args[2], aux, grad_u, pc, h, P, CH, BH=BH, BP=cfg["BP"],
                                      **cm.opts(cm.ROUTER_CONFIGS[BH]))
            cm.colsum(pc, pgrads[:2])
            cm.colsum(part, pgrads[2:7], start=h + 1)
            cm.colsum(part, pgrads[7:], start=sum(t.numel() for t in params[:7]))
        else:
            cm.colsum(part, pgrads[:5])
            cm.colsum(part, pgrads[5:], start=sum(t.numel() for t in params[:5]))
    return (grad_u, grad_gmean, *pgrads)


# ---- what the launchers can pick, for compile_check.py ------------------------------


def compile_specs():
    names = ["u_ptr", "cw_ptr", "cb_ptr", "p0w_ptr", "p0b_ptr", "p2w_ptr", "p2b_ptr", "gm_ptr",
             "c1w_ptr", "c1b_ptr", "c3w_ptr", "c3b_ptr"]
    fwd = {k: "*fp32" for k in names + ["cs_ptr", "cg_ptr", "st_ptr"]}
    fwd.update(h="i32", P="i32", PH="i32", Q="i32", S="i32")
    bwd = {k: "*fp32" for k in ["gcs_ptr", "gcg_ptr"] + names + ["gu_ptr", "ggm_ptr", "part_ptr", "st_ptr", "aux_ptr"]}
    bwd.update(h="i32", P="i32", PH="i32", Q="i32", K="i32", S="i32")
    for BH in cm.HIDDEN_BLOCKS:
        for BJ in (8, 16, MAX_J):
            cfg = _config(BH, BJ)
            for split in (False, True):
                const = dict(SPLIT=split, BH=BH, BJ=BJ, BP=cfg["BP"])
                tag = f"BH={BH},BJ={BJ}" + (",SPLIT" if split else "")
                yield (f"router._router_fwd_kernel[{tag}]", _router_fwd_kernel, fwd, const, cm.opts(cfg))
                yield (f"router._router_bwd_kernel[{tag}]", _router_bwd_kernel, bwd, const, cm.opts(cfg))
        cfg = cm.ROUTER_CONFIGS[BH]
        const = dict(BH=BH, BP=cfg["BP"])
        sig = dict(u_ptr="*fp32", cw_ptr="*fp32", cb_ptr="*fp32", st_ptr="*fp32", h="i32", P="i32", CH="i32")
        yield (f"router._router_part_kernel[BH={BH}]", _router_part_kernel, sig, const, cm.opts(cfg))
        sig = dict(u_ptr="*fp32", cw_ptr="*fp32", cb_ptr="*fp32", aux_ptr="*fp32", gu_ptr="*fp32", pc_ptr="*fp32",
                   h="i32", P="i32", CH="i32")
        yield (f"router._router_gu_kernel[BH={BH}]", _router_gu_kernel, sig, const, cm.opts(cfg))
