"""global_branch in Triton: the transforms stay torch.fft calls (cuFFT on GPUs), the gate
between them is one kernel each way (spectral_gate.py), and abs with its per-channel mean
is one more. Signatures and adjoints: adaptir_kernels/ops/global_branch.py. The gate
kernels store the half spectrum's columns kw = 0 and W / 2 as their Hermitian part along
H, so the inverse transforms are plain torch.fft.irfft2 calls that follow SPEC 4.1 on
cuFFT too (what adaptir_kernels.spectrum.irfft2 does with ATen ops for the other paths).

Forward:  rfft2 -> _gate_fwd_kernel -> irfft2 -> _abs_mean_kernel (g = |y|, mean of g,
          the signs of y packed 8 to a byte; planes of a whole image are split into
          chunks, whose sums _row_mean_kernel adds).
Backward: the spectrum is recomputed from u (rfft2);
          _sign_bits_kernel: grad_y = (grad_g + grad_gmean / HW) * sign(y), sign(y) from g
          and the packed signs (without them, y is recomputed: gate, irfft2, _sign_kernel);
          rfft2 -> _gate_bwd_kernel with the c[kw] weights applied on the way in and 1 / c
          on the way out, plus per-program parameter-gradient partials -> colsum;
          irfft2 -> grad_u.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops.global_branch import check_signs
from ..spectrum import rfft2_real
from . import _common as cm
from .spectral_gate import gate_backward_into, gate_forward


@triton.jit
def _abs_mean_kernel(y_ptr, g_ptr, out_ptr, sign_ptr, HW, NB, CH, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    """Chunk program_id(1) (elements CH k .. CH k + CH - 1; CH a multiple of BLOCK) of plane
    program_id(0): g = |y|, the signs of y packed 8 to a byte (bit k of byte i set where
    y[8 i + k] < 0; BLOCK is a multiple of 8), and the plane's mean of g into out, or
    (SPLIT) the chunk's sum into out[plane, k] for _row_mean_kernel."""
    plane = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    base = plane * HW
    lo = k * CH
    hi = tl.minimum(lo + CH, HW)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    weights = (1 << tl.arange(0, 8)).to(tl.int32)
    for s0 in range(lo, hi, BLOCK):
        e = s0 + tl.arange(0, BLOCK)
        m = e < hi
        y = tl.load(y_ptr + base + e, mask=m, other=0.0)
        v = tl.abs(y)
        tl.store(g_ptr + base + e, v, mask=m)
        acc += v
        neg = tl.reshape((y < 0.0).to(tl.int32), (BLOCK // 8, 8))
        packed = tl.sum(neg * weights[None, :], axis=1)
        b = s0 // 8 + tl.arange(0, BLOCK // 8)
        tl.store(sign_ptr + plane * NB + b, packed.to(tl.uint8), mask=b < NB)
    if SPLIT:
        tl.store(out_ptr + plane * tl.num_programs(1) + k, tl.sum(acc, axis=0))
    else:
        tl.store(out_ptr + plane, tl.sum(acc, axis=0) / tl.cast(HW, tl.float32))


@triton.jit
def _row_mean_kernel(part_ptr, out_ptr, C, HW, BC: tl.constexpr):
    """out[plane] = the sum of part[plane, :C] (C <= BC chunk sums) / HW."""
    plane = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BC)
    v = tl.load(part_ptr + plane * C + i, mask=i < C, other=0.0)
    tl.store(out_ptr + plane, tl.sum(v, axis=0) / tl.cast(HW, tl.float32))


@triton.jit
def _sign_kernel(gg_ptr, ggm_ptr, y_ptr, out_ptr, total, HW, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    y = tl.load(y_ptr + i, mask=m, other=0.0)
    gy = tl.load(gg_ptr + i, mask=m, other=0.0)
    gy += tl.load(ggm_ptr + i // HW, mask=m, other=0.0) / tl.cast(HW, tl.float32)
    sgn = tl.where(y > 0.0, 1.0, tl.where(y < 0.0, -1.0, 0.0))
    tl.store(out_ptr + i, gy * sgn, mask=m)


@triton.jit
def _sign_bits_kernel(gg_ptr, ggm_ptr, g_ptr, sign_ptr, out_ptr, total, HW, NB, BLOCK: tl.constexpr):
    """grad_y = (grad_g + grad_gmean / HW) * sign(y), sign(y) from g = |y| (0 where g is
    not positive) and the forward's packed signs."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    plane = i // HW
    e = i - plane * HW
    byte = tl.load(sign_ptr + plane * NB + e // 8, mask=m, other=0).to(tl.int32)
    bit = (byte >> (e % 8).to(tl.int32)) & 1
    g = tl.load(g_ptr + i, mask=m, other=0.0)
    gy = tl.load(gg_ptr + i, mask=m, other=0.0) + tl.load(ggm_ptr + plane, mask=m, other=0.0) / tl.cast(HW, tl.float32)
    sgn = tl.where(g > 0.0, tl.where(bit != 0, -1.0, 1.0), 0.0)
    tl.store(out_ptr + i, gy * sgn, mask=m)


# Planes of more than SPLIT_MIN_ITERS blocks (a whole image at N = 1) are cut into chunks
# of CHUNK_ITERS blocks, at most MAX_CHUNKS per plane and about two programs per SM in all.
SPLIT_MIN_ITERS = 32
CHUNK_ITERS = 16
MAX_CHUNKS = 64
_ROW_MEAN_CONFIG = dict(num_warps=1)


def _spectrum(u):
    return rfft2_real(u)


def _inverse(G, H, W):
    """irfft2 of a half spectrum whose columns kw = 0 and W / 2 the gate kernels made
    Hermitian along H (hermitian_width / hermitian): SPEC 4.1 on cuFFT too, as
    adaptir_kernels.spectrum.irfft2 makes it, without its dozen extra ATen calls."""
    return torch.fft.irfft2(torch.view_as_complex(G), s=(H, W), norm="ortho")


def _params(amp_w, amp_b, pha_w, pha_b):
    return [cm.f32(t, name) for t, name in
            ((amp_w, "amp_w"), (amp_b, "amp_b"), (pha_w, "pha_w"), (pha_b, "pha_b"))]


def forward(u, amp_w, amp_b, pha_w, pha_b):
    u = cm.f32(u, "u")
    params = _params(amp_w, amp_b, pha_w, pha_b)
    N, h, H, W = cm.hidden_input("global_branch", u)
    cm.check("global_branch", u, **{n: (t, h) for n, t in zip(("amp_w", "amp_b", "pha_w", "pha_b"), params)})
    y = _inverse(gate_forward(_spectrum(u), *params, hermitian_width=W), H, W)
    g = cm.new(u.shape, u.device)
    gmean = cm.new((N, h), u.device)
    nb = (H * W + 7) // 8
    sign = cm.new((N, h, nb), u.device, dtype=torch.uint8)
    fc = cm.FLAT_CONFIG
    C, CH = cm.chunks(N * h, H * W, fc["BLOCK"], u.device, SPLIT_MIN_ITERS, CHUNK_ITERS, MAX_CHUNKS)
    with cm.device_guard(u):
        if C == 1:
            _abs_mean_kernel[(N * h, 1)](y, g, gmean, sign, H * W, nb, CH, SPLIT=False, BLOCK=fc["BLOCK"],
                                         **cm.opts(fc))
        else:
            part = cm.new((N * h, C), u.device)
            _abs_mean_kernel[(N * h, C)](y, g, part, sign, H * W, nb, CH, SPLIT=True, BLOCK=fc["BLOCK"],
                                         **cm.opts(fc))
            _row_mean_kernel[(N * h,)](part, gmean, C, H * W, BC=MAX_CHUNKS, **cm.opts(_ROW_MEAN_CONFIG))
    return g, gmean, sign


def backward(grad_g, grad_gmean, u, g, sign, amp_w, amp_b, pha_w, pha_b):
    u = cm.f32(u, "u")
    grad_g, grad_gmean = cm.f32(grad_g, "grad_g"), cm.f32(grad_gmean, "grad_gmean")
    params = _params(amp_w, amp_b, pha_w, pha_b)
    N, h, H, W = cm.hidden_input("global_branch_backward", u)
    cm.check("global_branch_backward", u, grad_g=(grad_g, (N, h, H, W)), grad_gmean=(grad_gmean, (N, h)),
             **{n: (t, h) for n, t in zip(("amp_w", "amp_b", "pha_w", "pha_b"), params)})  # g, sign: check_signs
    U = _spectrum(u)
    grad_y = cm.new(u.shape, u.device)
    total = grad_y.numel()
    fc = cm.FLAT_CONFIG
    grid = (cm.cdiv(total, fc["BLOCK"]),)
    if sign.numel():
        check_signs(u, g, sign)
        g, sign = cm.f32(g, "g"), sign.contiguous()
        with cm.device_guard(u):
            _sign_bits_kernel[grid](grad_g, grad_gmean, g, sign, grad_y, total, H * W, sign.shape[-1],
                                    BLOCK=fc["BLOCK"], **cm.opts(fc))
    else:  # an empty sign tensor: recompute y
        y = _inverse(gate_forward(U, *params, hermitian_width=W), H, W)
        with cm.device_guard(u):
            _sign_kernel[grid](grad_g, grad_gmean, y, grad_y, total, H * W, BLOCK=fc["BLOCK"], **cm.opts(fc))
    grad_Uc, gaw, gab, gpw, gpb = gate_backward_into(_spectrum(grad_y), U, *params, weights_of_width=W,
                                                           hermitian=True)
    grad_u = _inverse(grad_Uc, H, W)
    return grad_u, gaw, gab, gpw, gpb


# ---- what the launchers can pick, for compile_check.py ------------------------------


def compile_specs():
    fc = cm.FLAT_CONFIG
    sig = dict(y_ptr="*fp32", g_ptr="*fp32", out_ptr="*fp32", sign_ptr="*u8", HW="i32", NB="i32", CH="i32")
    for split in (False, True):
        yield (f"global_branch._abs_mean_kernel[SPLIT={split}]", _abs_mean_kernel, sig,
               dict(SPLIT=split, BLOCK=fc["BLOCK"]), cm.opts(fc))
    sig = dict(part_ptr="*fp32", out_ptr="*fp32", C="i32", HW="i32")
    yield ("global_branch._row_mean_kernel", _row_mean_kernel, sig, dict(BC=MAX_CHUNKS), cm.opts(_ROW_MEAN_CONFIG))
    sig = dict(gg_ptr="*fp32", ggm_ptr="*fp32", g_ptr="*fp32", sign_ptr="*u8", out_ptr="*fp32", total="i32",
               HW="i32", NB="i32")
    yield ("global_branch._sign_bits_kernel", _sign_bits_kernel, sig, dict(BLOCK=fc["BLOCK"]), cm.opts(fc))
    sig = dict(gg_ptr="*fp32", ggm_ptr="*fp32", y_ptr="*fp32", out_ptr="*fp32", total="i32", HW="i32")
    yield ("global_branch._sign_kernel", _sign_kernel, sig, dict(BLOCK=fc["BLOCK"]), cm.opts(fc))
