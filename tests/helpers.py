"""Shared test utilities: randomised adapters, relative errors, verbose comparisons."""

from __future__ import annotations

import importlib.util
import os

import torch

from adaptir_kernels.reference import AdaptIR as ReferenceAdaptIR
from adaptir_kernels.testing import randomize  # noqa: F401  (re-exported for the tests)

# (N, H, W): odd and unequal sizes, H or W = 1, N = 1.
SHAPES = [(2, 5, 7), (1, 4, 4), (3, 1, 6), (2, 6, 1), (1, 3, 8), (2, 8, 5)]



def load_benchmark_script(filename: str):
    """A script of benchmarks/ (not a package) imported as a module, for its tests."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", filename)
    spec = importlib.util.spec_from_file_location(os.path.splitext(filename)[0], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_pair(cls, d_model=56, preset="edt", layout="nhwc", seed=0, **kw):
    """A reference adapter and an adapter of class `cls` sharing the same random state."""
    ref = randomize(ReferenceAdaptIR(d_model, preset=preset, layout=layout, hidden=kw.pop("hidden", None)), seed)
    other = cls(d_model, preset=preset, layout=layout, hidden=ref.hidden, **kw)
    other.load_state_dict(ref.state_dict(), strict=True)
    return ref, other


def make_input(layout: str, N: int, H: int, W: int, C: int, dtype=torch.float32, seed: int = 1, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shape = (N, H, W, C) if layout == "nhwc" else (H * W, N, C)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """||a - b|| / max(||b||, floor); `floor` keeps a gradient that is zero in exact
    arithmetic (e.g. the head bias under training-mode BN) from dividing by rounding noise."""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    denom = max(b.norm().item(), floor)
    diff = (a - b).norm().item()
    if denom == 0.0:
        return diff
    return diff / denom


def assert_close_rel(actual, expected, tol: float, name: str = "tensor", floor: float = 0.0) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    assert not torch.isnan(a).any(), f"{name}: {int(torch.isnan(a).sum())} NaN values"
    err = rel_err(a, e, floor)
    if not (err < tol):
        bad = (a - e).abs() > tol * max(e.abs().max().item(), 1e-30)
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{name}: relative error {err:.3e} >= {tol:.0e}; {int(bad.sum())}/{a.numel()} elements off, "
            f"first at {idx}; max |diff| {(a - e).abs().max().item():.3e}, max |expected| {e.abs().max().item():.3e}"
        )


def run_fwd_bwd(module, x, hw=None, seed=2):
    """Forward and backward with a fixed random upstream gradient; returns output and grads."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x, hw=hw)
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype).to(out.device)
    module.zero_grad(set_to_none=True)
    out.backward(grad)
    grads = {"x": x.grad.detach().clone()}
    for name, p in module.named_parameters():
        grads[name] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    return out.detach(), grads


def spectral_margins(ref: ReferenceAdaptIR, x: torch.Tensor, hw=None) -> dict:
    """How close the adapter's input x lies to the points where its math is singular, from a
    float64 evaluation of the reference's parameters (its buffers untouched): u = BN(head(x))
    with batch statistics, U = rfft2(u), y = irfft2(gate(U)), per plane relative to its RMS.

    - "cut": the smallest |Im U| over bins with Re U < 0 (outside the exactly real bins).
      angle() jumps from pi to -pi across the negative real axis, and with pha_fuse.weight
      not an integer the gated spectrum jumps with it: two float32 evaluations whose
      rounding puts such a bin on different sides disagree by O(1) there.
    - "amp": the smallest |U|. The phase's gradient grows as 1 / |U| (and with
      amp_fuse.bias != 0 the gate stays finite at U = 0, where the phase is undefined).
    - "y": the smallest |y|, where g = |y| has its kink (sign(y) flips the gradient).
    """
    from adaptir_kernels.spectrum import irfft2, rfft2

    m = ref
    x = x.detach().double()
    if m.layout == "lnc":
        H, W = hw
        t = x.permute(1, 2, 0).reshape(x.shape[1], x.shape[2], H, W)
    else:
        H, W = x.shape[1], x.shape[2]
        t = x.permute(0, 3, 1, 2)
    with torch.no_grad():
        z = torch.nn.functional.conv2d(t, m.head.weight.double(), m.head.bias.double())
        u = torch.nn.functional.batch_norm(z, None, None, m.BN.weight.double(), m.BN.bias.double(),
                                           training=True, eps=m.BN.eps)
        U = rfft2(u)
        rms = U.abs().pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        real_bin = torch.zeros(U.shape[-2:], dtype=torch.bool)
        for kh in {0, H // 2 if H % 2 == 0 else 0}:
            for kw in {0, W // 2 if W % 2 == 0 else 0}:
                real_bin[kh, kw] = True
        rel_im = (U.imag.abs() / rms).masked_fill(real_bin | (U.real >= 0), float("inf"))
        A = m.amp_fuse.weight.double().view(1, -1, 1, 1) * U.abs() + m.amp_fuse.bias.double().view(1, -1, 1, 1)
        P = m.pha_fuse.weight.double().view(1, -1, 1, 1) * U.angle() + m.pha_fuse.bias.double().view(1, -1, 1, 1)
        y = irfft2(torch.complex(A * torch.cos(P), A * torch.sin(P)), H, W)
        y_rms = y.pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return {"cut": rel_im.min().item(), "amp": (U.abs() / rms).min().item(),
                "y": (y.abs() / y_rms).min().item()}


# Margins (spectral_margins) beyond which float32 rounding, about 1e-7 relative per step,
# does not move an input across a discontinuity of the adapter's math: the branch cut and
# the kink. (Small amplitudes make gradients ill-conditioned, not discontinuous; a test
# that needs them well-conditioned sets amp_fuse.bias to zero instead.)
REGULAR_MARGINS = {"cut": 1e-6, "y": 1e-7}


def regular_input(ref: ReferenceAdaptIR, layout: str, N: int, H: int, W: int, C: int, seed: int,
                  tries: int = 24):
    """make_input(..., seed=seed + k) for the first k whose draw lies at least REGULAR_MARGINS
    from the discontinuities of the reference's math (spectral_margins). On large inputs (a
    hundred thousand spectral bins and more) a draw often has a bin within float32 rounding
    of the branch cut, and there any two float32 implementations, the reference among them,
    disagree by up to 1e-2 (a bin 1e-8 from it: gradients 4e-2 apart, at 13x48x48x180);
    parity is only meaningful away from them. Returns (x, k)."""
    hw = (H, W) if layout == "lnc" else None
    for k in range(tries):
        x = make_input(layout, N, H, W, C, seed=seed + k)
        margins = spectral_margins(ref, x, hw)
        if all(margins[key] >= REGULAR_MARGINS[key] for key in REGULAR_MARGINS):
            return x, k
    raise AssertionError(f"no draw of {tries} at ({N}, {H}, {W}, {C}) lies {REGULAR_MARGINS} away from the "
                         f"adapter's singular points (last: {margins})")


def assert_same_results(out_o, g_o, out_r, g_r, out_tol=1e-5, grad_tol=1e-4):
    """run_fwd_bwd's results of a module (o) against the reference's (r): the output, and
    every gradient relative to the larger of its own norm and 1% of the input gradient's."""
    assert_close_rel(out_o, out_r, out_tol, "output")
    assert set(g_r) == set(g_o)
    floor = 1e-2 * g_r["x"].double().norm().item()
    for name in g_r:
        assert_close_rel(g_o[name], g_r[name], grad_tol, f"grad {name}", floor=floor)


def compare_modules(ref, other, x, hw=None, out_tol=1e-5, grad_tol=1e-4):
    out_r, g_r = run_fwd_bwd(ref, x, hw)
    out_o, g_o = run_fwd_bwd(other, x, hw)
    assert_same_results(out_o, g_o, out_r, g_r, out_tol, grad_tol)
    for (name, b_r), (_, b_o) in zip(ref.named_buffers(), other.named_buffers()):
        assert_close_rel(b_o.double(), b_r.double(), 1e-6, f"buffer {name}")
