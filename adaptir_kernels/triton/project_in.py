"""project_in in Triton: z = x @ W^T + b read straight from the backbone's layout, BN, and
the explicit backward. Signatures: adaptir_kernels/ops/project_in.py.

Rows. Both layouts store x as a row-major (rows, C) matrix; only the row order differs
(NHWC: row = n * HW + p; LNC: row = p * N + n). Kernels walk "virtual rows"
q = n * HW + p, so that the hidden tensors (N, h, H, W) are written contiguously along
p, and address x at row n * sn + p * sp ((sn, sp) = (HW, 1) or (1, N)).

Forward (x read once):
    training: _proj_fwd_kernel (z and per-block mean / M2) -> _stats_kernel (fixed-order
              reduction to mean, biased var) -> _apply_kernel (xhat, u);
    eval:     _proj_fwd_kernel alone (running statistics applied in place).
Backward (x read once, grad_x written once, SPEC 5.1):
    _grad_partials_kernel: per-block sums of grad_u, grad_u * xhat, xhat (h-wide);
    colsum -> grad_bn_bias, grad_bn_weight and sum(xhat);
    _proj_bwd_kernel: program (g, k) owns a group of rows and a chunk of BK columns of C;
              walking its rows RS at a time it rebuilds grad_z from grad_u and xhat
              (h-wide, re-read per column chunk from cache), reads x once, writes grad_x
              = grad_z @ W once (in x's dtype), and accumulates grad_W = grad_z^T x for
              its chunk in registers; the per-group partials (groups x h x C) are summed
              in a fixed order by colsum. Both products come from the same pass, so x is
              read once and grad_x written once, as SPEC 5.1 counts them.
No float atomics anywhere: every reduction runs in a fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common as cm


@triton.jit
def _rows(pid, R, HW, sn, sp, BM: tl.constexpr):
    q = pid * BM + tl.arange(0, BM).to(tl.int64)
    n = q // HW
    p = q - n * HW
    return q < R, n, p, n * sn + p * sp


@triton.jit
def _proj_fwd_kernel(x_ptr, w_ptr, b_ptr, z_ptr, u_ptr, psum_ptr, pm2_ptr,
                rm_ptr, rv_ptr, bnw_ptr, bnb_ptr, mean_ptr, var_ptr,
                R, C, h, HW, sn, sp, eps, train,
                BM: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rmask, n, p, xrow = _rows(pid, R, HW, sn, sp, BM)
    ch = tl.arange(0, BH)
    hmask = ch < h
    kk0 = tl.arange(0, BK)
    acc = tl.zeros((BM, BH), dtype=tl.float32)
    for k0 in range(0, C, BK):
        kk = k0 + kk0
        kmask = kk < C
        xt = tl.load(x_ptr + xrow[:, None] * C + kk[None, :],
                     mask=rmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        wt = tl.load(w_ptr + ch[None, :] * C + kk[:, None],
                     mask=kmask[:, None] & hmask[None, :], other=0.0)
        acc += tl.dot(xt, wt, input_precision="ieee")
    z = acc + tl.load(b_ptr + ch, mask=hmask, other=0.0)[None, :]
    m2d = rmask[:, None] & hmask[None, :]
    hid = (n * h * HW + p)[:, None] + ch[None, :].to(tl.int64) * HW
    if train != 0:
        # z goes to the xhat buffer, normalised in place by _apply_kernel.
        tl.store(z_ptr + hid, z, mask=m2d)
        cnt = tl.sum(rmask.to(tl.float32), axis=0)
        zs = tl.where(m2d, z, 0.0)
        s = tl.sum(zs, axis=0)
        d = tl.where(m2d, z - (s / cnt)[None, :], 0.0)
        tl.store(psum_ptr + pid * BH + ch, s)
        tl.store(pm2_ptr + pid * BH + ch, tl.sum(d * d, axis=0))
    else:
        mean = tl.load(rm_ptr + ch, mask=hmask, other=0.0)
        var = tl.load(rv_ptr + ch, mask=hmask, other=1.0)
        xhat = (z - mean[None, :]) * tl.rsqrt(var + eps)[None, :]
        u = xhat * tl.load(bnw_ptr + ch, mask=hmask, other=0.0)[None, :] \
            + tl.load(bnb_ptr + ch, mask=hmask, other=0.0)[None, :]
        tl.store(z_ptr + hid, xhat, mask=m2d)
        tl.store(u_ptr + hid, u, mask=m2d)
        if pid == 0:
            tl.store(mean_ptr + ch, mean, mask=hmask)
            tl.store(var_ptr + ch, var, mask=hmask)


@triton.jit
def _stats_kernel(psum_ptr, pm2_ptr, mean_ptr, var_ptr, nblocks, R, h,
                  BM: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr):
    """Batch mean and biased variance from per-block (sum, M2), in a fixed order:
    M2 = sum_b M2_b + sum_b n_b (mean_b - mean)^2."""
    ch = tl.arange(0, BH)
    rows0 = tl.arange(0, BR).to(tl.int64)
    acc = tl.zeros((BR, BH), dtype=tl.float32)
    for r0 in range(0, nblocks, BR):
        rr = r0 + rows0
        acc += tl.load(psum_ptr + rr[:, None] * BH + ch[None, :], mask=(rr < nblocks)[:, None], other=0.0)
    mean = tl.sum(acc, axis=0) / R
    acc = tl.zeros((BR, BH), dtype=tl.float32)
    for r0 in range(0, nblocks, BR):
        rr = r0 + rows0
        bmask = (rr < nblocks)[:, None]
        cnt = tl.minimum(R - rr * BM, BM).to(tl.float32)[:, None]
        s = tl.load(psum_ptr + rr[:, None] * BH + ch[None, :], mask=bmask, other=0.0)
        m2 = tl.load(pm2_ptr + rr[:, None] * BH + ch[None, :], mask=bmask, other=0.0)
        d = s / cnt - mean[None, :]
        acc += tl.where(bmask, m2 + cnt * d * d, 0.0)
    var = tl.sum(acc, axis=0) / R
    tl.store(mean_ptr + ch, mean, mask=ch < h)
    tl.store(var_ptr + ch, var, mask=ch < h)


@triton.jit
def _apply_kernel(z_ptr, u_ptr, mean_ptr, var_ptr, bnw_ptr, bnb_ptr, total, h, HW, eps,
                  BLOCK: tl.constexpr):
    """In place z -> xhat, and u = xhat * bn_weight + bn_bias, over (N, h, H, W)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    c = (i // HW) % h
    z = tl.load(z_ptr + i, mask=m, other=0.0)
    mean = tl.load(mean_ptr + c, mask=m, other=0.0)
    var = tl.load(var_ptr + c, mask=m, other=1.0)
    xhat = (z - mean) * tl.rsqrt(var + eps)
    tl.store(z_ptr + i, xhat, mask=m)
    tl.store(u_ptr + i, xhat * tl.load(bnw_ptr + c, mask=m, other=0.0) + tl.load(bnb_ptr + c, mask=m, other=0.0),
             mask=m)


@triton.jit
def _grad_partials_kernel(gu_ptr, xhat_ptr, part_ptr, R, h, HW,
                          BM: tl.constexpr, BH: tl.constexpr):
    """Row block b: part[b] = [sum grad_u | sum grad_u * xhat | sum xhat], h each."""
    pid = tl.program_id(0).to(tl.int64)
    q = pid * BM + tl.arange(0, BM).to(tl.int64)
    rmask = q < R
    n = q // HW
    p = q - n * HW
    ch = tl.arange(0, BH)
    hmask = ch < h
    m2d = rmask[:, None] & hmask[None, :]
    hid = (n * h * HW + p)[:, None] + ch[None, :].to(tl.int64) * HW
    gu = tl.load(gu_ptr + hid, mask=m2d, other=0.0)
    xh = tl.load(xhat_ptr + hid, mask=m2d, other=0.0)
    base = part_ptr + pid * (3 * h)
    tl.store(base + ch, tl.sum(gu, axis=0), mask=hmask)
    tl.store(base + h + ch, tl.sum(gu * xh, axis=0), mask=hmask)
    tl.store(base + 2 * h + ch, tl.sum(xh, axis=0), mask=hmask)


@triton.jit
def _proj_bwd_kernel(x_ptr, w_ptr, gu_ptr, xhat_ptr, gx_ptr, pw_ptr, gbias_ptr,
                gbb_ptr, gbw_ptr, sxh_ptr, bnw_ptr, var_ptr,
                R, C, h, HW, sn, sp, G, eps, train,
                BK: tl.constexpr, BH: tl.constexpr, RS: tl.constexpr):
    """Program (g, k): rows [g * G, (g + 1) * G) and columns [k * BK, (k + 1) * BK) of x."""
    g = tl.program_id(0).to(tl.int64)
    kc = tl.program_id(1).to(tl.int64)
    ch = tl.arange(0, BH)
    hmask = ch < h
    # grad_z = scale * grad_u + cb * xhat + cc per channel (BatchNorm backward).
    gbb = tl.load(gbb_ptr + ch, mask=hmask, other=0.0)
    gbw = tl.load(gbw_ptr + ch, mask=hmask, other=0.0)
    scale = tl.load(bnw_ptr + ch, mask=hmask, other=0.0) * tl.rsqrt(tl.load(var_ptr + ch, mask=hmask, other=1.0) + eps)
    if train != 0:
        inv_m = 1.0 / tl.cast(R, tl.float32)
        cb = -scale * gbw * inv_m
        cc = -scale * gbb * inv_m
    else:
        cb = tl.zeros((BH,), dtype=tl.float32)
        cc = tl.zeros((BH,), dtype=tl.float32)
    if (g == 0) & (kc == 0):
        # grad_bias = sum_rows grad_z = scale * gbb + cb * sum(xhat) + cc * R.
        sxh = tl.load(sxh_ptr + ch, mask=hmask, other=0.0)
        tl.store(gbias_ptr + ch, scale * gbb + cb * sxh + cc * tl.cast(R, tl.float32), mask=hmask)
    kk = kc * BK + tl.arange(0, BK)
    kmask = kk < C
    wt = tl.load(w_ptr + ch[:, None] * C + kk[None, :], mask=hmask[:, None] & kmask[None, :], other=0.0)
    acc = tl.zeros((BH, BK), dtype=tl.float32)
    r_end = tl.minimum(g * G + G, R)
    for r0 in range(g * G, r_end, RS):
        q = r0 + tl.arange(0, RS).to(tl.int64)
        rmask = q < r_end
        n = q // HW
        p = q - n * HW
        xrow = n * sn + p * sp
        m2d = rmask[:, None] & hmask[None, :]
        hid = (n * h * HW + p)[:, None] + ch[None, :].to(tl.int64) * HW
        gu = tl.load(gu_ptr + hid, mask=m2d, other=0.0)
        xh = tl.load(xhat_ptr + hid, mask=m2d, other=0.0)
        gz = tl.where(m2d, scale[None, :] * gu + cb[None, :] * xh + cc[None, :], 0.0)
        xm = rmask[:, None] & kmask[None, :]
        xoff = xrow[:, None] * C + kk[None, :]
        xt = tl.load(x_ptr + xoff, mask=xm, other=0.0).to(tl.float32)
        gx = tl.dot(gz, wt, input_precision="ieee")
        tl.store(gx_ptr + xoff, gx.to(gx_ptr.dtype.element_ty), mask=xm)
        acc = tl.dot(tl.trans(gz), xt, acc, input_precision="ieee")
    tl.store(pw_ptr + g * h * C + ch[:, None] * C + kk[None, :], acc, mask=hmask[:, None] & kmask[None, :])


# ---- launchers ---------------------------------------------------------------------


def _geometry(x, layout, H, W):
    C = x.shape[-1]
    HW = H * W
    if layout == "nhwc":
        if x.dim() != 4 or tuple(x.shape[1:3]) != (H, W):
            raise ValueError(f"project_in: x must have shape (N, {H}, {W}, C) in layout nhwc, got {tuple(x.shape)}")
        N = x.shape[0]
        sn, sp = HW, 1
    elif layout == "lnc":
        if x.dim() != 3 or x.shape[0] != HW:
            raise ValueError(f"project_in: x must have shape ({HW}, N, C) in layout lnc (H*W = {H}*{W}), "
                             f"got {tuple(x.shape)}")
        N = x.shape[1]
        sn, sp = 1, N
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return N, C, HW, sn, sp


def forward(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, eps, layout, H, W):
    x = cm.io(x, "x")
    weight, bias = cm.f32(weight, "weight"), cm.f32(bias, "bias")
    bn_weight, bn_bias = cm.f32(bn_weight, "bn_weight"), cm.f32(bn_bias, "bn_bias")
    running_mean, running_var = cm.f32(running_mean, "running_mean"), cm.f32(running_var, "running_var")
    N, C, HW, sn, sp = _geometry(x, layout, H, W)
    h = weight.shape[0]
    cm.check("project_in", x, weight=(weight, (None, C)), bias=(bias, h), bn_weight=(bn_weight, h),
             bn_bias=(bn_bias, h), running_mean=(running_mean, h), running_var=(running_var, h))
    BH = cm.hidden_block(h)
    R = N * HW
    dev = x.device
    xhat = cm.new((N, h, H, W), dev)
    u = cm.new((N, h, H, W), dev)
    mean = cm.new((h,), dev)
    var = cm.new((h,), dev)
    cfg = cm.PROJ_FWD_CONFIGS[BH]
    BM = cfg["BM"]
    nblocks = cm.cdiv(R, BM)
    if training:
        psum = cm.new((nblocks, BH), dev)
        pm2 = cm.new((nblocks, BH), dev)
    else:
        psum = pm2 = mean
    with cm.device_guard(x):
        _proj_fwd_kernel[(nblocks,)](
            x, weight, bias, xhat, u, psum, pm2, running_mean, running_var, bn_weight, bn_bias, mean, var,
            R, C, h, HW, sn, sp, float(eps), int(bool(training)),
            BM=BM, BK=cfg["BK"], BH=BH, **cm.opts(cfg))
        if training:
            scfg = cm.HROW_CONFIGS[BH]
            _stats_kernel[(1,)](psum, pm2, mean, var, nblocks, R, h,
                                BM=BM, BR=scfg["BM"], BH=BH, **cm.opts(scfg))
            total = xhat.numel()
            fc = cm.FLAT_CONFIG
            _apply_kernel[(cm.cdiv(total, fc["BLOCK"]),)](
                xhat, u, mean, var, bn_weight, bn_bias, total, h, HW, float(eps),
                BLOCK=fc["BLOCK"], **cm.opts(fc))
    return u, xhat, mean, var


def backward(grad_u, x, xhat, weight, bn_weight, var, training, eps, layout, H, W):
    x = cm.io(x, "x")
    grad_u, xhat = cm.f32(grad_u, "grad_u"), cm.f32(xhat, "xhat")
    weight, bn_weight, var = cm.f32(weight, "weight"), cm.f32(bn_weight, "bn_weight"), cm.f32(var, "var")
    N, C, HW, sn, sp = _geometry(x, layout, H, W)
    h = weight.shape[0]
    cm.check("project_in_backward", x, weight=(weight, (None, C)), grad_u=(grad_u, (N, h, H, W)),
             xhat=(xhat, (N, h, H, W)), bn_weight=(bn_weight, h), var=(var, h))
    BH = cm.hidden_block(h)
    R = N * HW
    dev = x.device
    hcfg = cm.HROW_CONFIGS[BH]
    nb_h = cm.cdiv(R, hcfg["BM"])
    cfg = cm.PROJ_BWD_CONFIGS[BH]
    nchunks = cm.cdiv(C, cfg["BK"])
    G, ngroups = cm.row_groups(R, nchunks, cfg["RS"], dev)
    part = cm.new((nb_h, 3 * h), dev)
    grad_bn_bias = cm.new((h,), dev)
    grad_bn_weight = cm.new((h,), dev)
    sum_xhat = cm.new((h,), dev)
    grad_x = cm.new(x.shape, dev, x.dtype)
    part_w = cm.new((ngroups, h * C), dev)
    grad_weight = cm.new((h, C), dev)
    grad_bias = cm.new((h,), dev)
    with cm.device_guard(x):
        _grad_partials_kernel[(nb_h,)](grad_u, xhat, part, R, h, HW,
                                       BM=hcfg["BM"], BH=BH, **cm.opts(hcfg))
        cm.colsum(part, [grad_bn_bias, grad_bn_weight, sum_xhat])
        _proj_bwd_kernel[(ngroups, nchunks)](
            x, weight, grad_u, xhat, grad_x, part_w, grad_bias, grad_bn_bias, grad_bn_weight, sum_xhat,
            bn_weight, var,
            R, C, h, HW, sn, sp, G, float(eps), int(bool(training)),
            BK=cfg["BK"], BH=BH, RS=cfg["RS"], **cm.opts(cfg))
        cm.colsum(part_w, [grad_weight])
    return grad_x, grad_weight, grad_bias, grad_bn_weight, grad_bn_bias


# ---- what the launchers can pick, for compile_check.py ------------------------------


def compile_specs():
    for BH in cm.HIDDEN_BLOCKS:
        cfg = cm.PROJ_FWD_CONFIGS[BH]
        bcfg = cm.PROJ_BWD_CONFIGS[BH]
        for dt in cm.IO_DTYPES:
            t = cm.TRITON_DTYPE[dt]
            sig = dict(x_ptr=f"*{t}", w_ptr="*fp32", b_ptr="*fp32", z_ptr="*fp32", u_ptr="*fp32",
                       psum_ptr="*fp32", pm2_ptr="*fp32", rm_ptr="*fp32", rv_ptr="*fp32", bnw_ptr="*fp32",
                       bnb_ptr="*fp32", mean_ptr="*fp32", var_ptr="*fp32", R="i32", C="i32", h="i32",
                       HW="i32", sn="i32", sp="i32", eps="fp32", train="i32")
            yield (f"project_in._proj_fwd_kernel[BH={BH},{t}]", _proj_fwd_kernel, sig,
                   dict(BM=cfg["BM"], BK=cfg["BK"], BH=BH), cm.opts(cfg))
            sig = dict(x_ptr=f"*{t}", w_ptr="*fp32", gu_ptr="*fp32", xhat_ptr="*fp32", gx_ptr=f"*{t}",
                       pw_ptr="*fp32", gbias_ptr="*fp32", gbb_ptr="*fp32", gbw_ptr="*fp32", sxh_ptr="*fp32",
                       bnw_ptr="*fp32", var_ptr="*fp32",
                       R="i32", C="i32", h="i32", HW="i32", sn="i32", sp="i32", G="i32", eps="fp32",
                       train="i32")
            yield (f"project_in._proj_bwd_kernel[BH={BH},{t}]", _proj_bwd_kernel, sig,
                   dict(BK=bcfg["BK"], BH=BH, RS=bcfg["RS"]), cm.opts(bcfg))
        hcfg = cm.HROW_CONFIGS[BH]
        sig = dict(psum_ptr="*fp32", pm2_ptr="*fp32", mean_ptr="*fp32", var_ptr="*fp32", nblocks="i32",
                   R="i32", h="i32")
        yield (f"project_in._stats_kernel[BH={BH}]", _stats_kernel, sig,
               dict(BM=cfg["BM"], BR=hcfg["BM"], BH=BH), cm.opts(hcfg))
        sig = dict(gu_ptr="*fp32", xhat_ptr="*fp32", part_ptr="*fp32", R="i32", h="i32", HW="i32")
        yield (f"project_in._grad_partials_kernel[BH={BH}]", _grad_partials_kernel, sig,
               dict(BM=hcfg["BM"], BH=BH), cm.opts(hcfg))
    fc = cm.FLAT_CONFIG
    sig = dict(z_ptr="*fp32", u_ptr="*fp32", mean_ptr="*fp32", var_ptr="*fp32", bnw_ptr="*fp32",
               bnb_ptr="*fp32", total="i32", h="i32", HW="i32", eps="fp32")
    yield ("project_in._apply_kernel", _apply_kernel, sig, dict(BLOCK=fc["BLOCK"]), cm.opts(fc))
