"""adaptir_kernels.spectrum: the exactly real bins of a real plane's spectrum are exact, and the
inverse of a gated half spectrum is SPEC 4.1's on every library."""

import math

import pytest
import torch

from adaptir_kernels.spectrum import irfft2, irfft2_parts, real_bins, rfft2, rfft2_real


@pytest.mark.parametrize("H, W, expected", [
    (18, 24, ((0, 0), (0, 12), (9, 0), (9, 12))),
    (7, 10, ((0, 0), (0, 5))),
    (6, 1, ((0, 0), (3, 0))),
    (1, 1, ((0, 0),)),
])
def test_real_bins(H, W, expected):
    assert real_bins(H, W) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_library_leaves_some_real_bins_inexact(dtype):
    """The case rfft2 exists for: torch's own FFT returns values with a nonzero imaginary
    part at some bins that are exactly real in exact arithmetic (which ones depends on the
    shape and on the FFT code the CPU runs)."""
    found = []
    for H, W in [(18, 24), (24, 9), (30, 20), (36, 48), (48, 48)]:
        gen = torch.Generator().manual_seed(H * 100 + W)
        plain = torch.fft.rfft2(torch.randn(64, H, W, generator=gen, dtype=dtype), norm="ortho")
        found += [(H, W, r, c) for r, c in real_bins(H, W) if (plain[:, r, c].imag != 0).any()]
    if not found:
        pytest.skip("torch's FFT on this CPU returns exactly real values at every real bin of the "
                    "shapes tried, so snapping changes nothing here (the snapping itself is tested below)")
    assert all(r in (0, H // 2) and c in (0, W // 2) for H, W, r, c in found)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("H, W", [(18, 24), (24, 9), (30, 20), (48, 48)])
def test_real_bins_are_snapped_and_nothing_else_changes(dtype, H, W):
    gen = torch.Generator().manual_seed(H * 100 + W)
    u = torch.randn(64, H, W, generator=gen, dtype=dtype)
    plain = torch.fft.rfft2(u, norm="ortho")
    bins = real_bins(H, W)
    U = rfft2(u)
    for r, c in bins:
        im = U[:, r, c].imag
        assert torch.equal(im, torch.zeros_like(im)) and not torch.signbit(im).any()
        neg = U[:, r, c].real < 0
        assert neg.any()
        assert torch.equal(U[:, r, c].angle()[neg], torch.full_like(im[neg], math.pi))
    mask = torch.ones(plain.shape[-2:], dtype=torch.bool)
    for r, c in bins:
        mask[r, c] = False
    assert torch.equal(U[:, mask], plain[:, mask])
    assert torch.equal(U.real, plain.real)
    assert torch.equal(rfft2_real(u), torch.view_as_real(U))


def test_gradient_is_that_of_the_plain_transform():
    """The snapped imaginary parts are identically zero functions of u, so a loss that
    reads every part of the spectrum has the same gradient either way."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(3, 18, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, 18, 6, 2, generator=gen, dtype=torch.float64)

    def loss(spec):
        return (torch.view_as_real(spec) * a).sum()

    (g_snap,) = torch.autograd.grad(loss(rfft2(u)), u)
    (g_plain,) = torch.autograd.grad(loss(torch.fft.rfft2(u, norm="ortho")), u)
    # They differ by the plain transform's gradient of the (mathematically zero) imaginary
    # parts: rounding level.
    torch.testing.assert_close(g_snap, g_plain, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: torch.view_as_real(rfft2(t)), (u,))


@pytest.mark.parametrize("H, W", [(1, 1), (2, 2), (1, 6), (5, 1), (2, 7), (3, 3), (18, 24), (9, 10)])
def test_exactly_the_real_bins_are_touched(monkeypatch, H, W):
    """Every imaginary part is nonzero in the stand-in transform; afterwards exactly the
    bins of real_bins(H, W) must be zero, and nothing else changed."""
    wf = W // 2 + 1
    monkeypatch.setattr(torch.fft, "rfft2", lambda u, norm=None: torch.full(
        (*u.shape[:-2], H, wf), 1 + 1j, dtype=torch.complex64))
    U = rfft2(torch.zeros(2, H, W))
    zero = set(map(tuple, (U.imag == 0)[0].nonzero().tolist()))
    assert zero == set(real_bins(H, W))
    assert torch.equal(U.real, torch.ones_like(U.real))


def _spec41(Y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """SPEC 4.1 written out: Re(sum_kh sum_kw c[kw] Y[kh, kw] e^{2 pi i (kh y / H + kw x / W)}) / sqrt(HW)."""
    wf = Y.shape[-1]
    c = torch.full((wf,), 2.0, dtype=torch.float64)
    c[0] = 1.0
    if W % 2 == 0:
        c[-1] = 1.0
    eh = torch.exp(2j * torch.pi * torch.outer(torch.arange(H), torch.arange(H)).double() / H)  # (kh, y)
    ew = torch.exp(2j * torch.pi * torch.outer(torch.arange(wf), torch.arange(W)).double() / W)  # (kw, x)
    return torch.einsum("...ab,ay,bx->...yx", Y.to(torch.complex128) * c, eh, ew).real / math.sqrt(H * W)


@pytest.mark.parametrize("H,W", [(6, 8), (5, 7), (3, 1), (1, 4), (2, 2), (4, 3), (48, 48), (7, 10)])
def test_inverse_of_a_gated_spectrum_is_spec_4_1_and_library_independent(H, W):
    gen = torch.Generator().manual_seed(H * 100 + W)
    wf = W // 2 + 1
    Y = torch.complex(torch.randn(2, 3, H, wf, generator=gen, dtype=torch.float64),
                      torch.randn(2, 3, H, wf, generator=gen, dtype=torch.float64))  # not Hermitian anywhere
    want = _spec41(Y, H, W)
    got = irfft2(Y, H, W)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.fft.irfft2(Y, s=(H, W), norm="ortho"), want, rtol=1e-10, atol=1e-10)
    # What irfft2 hands the library is a valid half spectrum: extended by Hermitian symmetry
    # to the full (H, W) spectrum, its complex inverse is real and equals SPEC 4.1 (a
    # complex-to-real transform that assumes symmetry on both axes, as cuFFT's does, then
    # computes the same).
    handed = {}
    real_irfft2 = torch.fft.irfft2

    def spy(inp, *a, **k):
        handed["Y"] = inp
        return real_irfft2(inp, *a, **k)

    torch.fft.irfft2 = spy
    try:
        irfft2(Y, H, W)
    finally:
        torch.fft.irfft2 = real_irfft2
    half = handed["Y"]
    full = torch.zeros(2, 3, H, W, dtype=torch.complex128)
    full[..., :wf] = half
    kh = (-torch.arange(H)) % H
    for kw in range(wf, W):
        full[..., kw] = half[..., kh, W - kw].conj()
    inv = torch.fft.ifft2(full, norm="ortho")
    assert inv.imag.abs().max() < 1e-10
    torch.testing.assert_close(inv.real, want, rtol=1e-10, atol=1e-10)


def test_inverse_of_a_gated_spectrum_has_the_plain_gradient():
    gen = torch.Generator().manual_seed(3)
    Y = torch.complex(torch.randn(5, 4, generator=gen, dtype=torch.float64),
                      torch.randn(5, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    g = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    (a,) = torch.autograd.grad((irfft2(Y, 5, 6) * g).sum(), Y)
    (b,) = torch.autograd.grad((torch.fft.irfft2(Y, s=(5, 6), norm="ortho") * g).sum(), Y)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("H,W", [(6, 8), (5, 7), (3, 1), (1, 4), (1, 1), (48, 48), (7, 10), (18, 24)])
def test_irfft2_from_parts_is_irfft2(H, W, dtype):
    """The real-arithmetic form the reference uses: the same values as irfft2 of the complex
    spectrum, bit for bit, and the same gradients."""
    gen = torch.Generator().manual_seed(H * 10 + W)
    wf = W // 2 + 1
    re = torch.randn(2, 3, H, wf, generator=gen, dtype=dtype, requires_grad=True)
    im = torch.randn(2, 3, H, wf, generator=gen, dtype=dtype, requires_grad=True)
    g = torch.randn(2, 3, H, W, generator=gen, dtype=dtype)
    a = irfft2_parts(re, im, H, W)
    b = irfft2(torch.complex(re, im), H, W)
    assert torch.equal(a, b)
    ga = torch.autograd.grad((a * g).sum(), (re, im))
    gb = torch.autograd.grad((b * g).sum(), (re, im))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_reference_forward_compiles_with_inductor():
    """torch.compile of the reference adapter's forward (what `adaptir bench` compares the
    fused forward with) builds and runs; complex arithmetic on the channels-last spectrum
    made Inductor fail ("self.stride(-1) must be 1 to view ComplexFloat as Float")."""
    from adaptir_kernels import ReferenceAdaptIR

    torch.manual_seed(0)
    m = ReferenceAdaptIR(180).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 10, 12, 180)
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            got = torch.compile(m, dynamic=False)(x)
    finally:
        torch._dynamo.reset()
    with torch.no_grad():
        want = m(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks cuFFT's complex-to-real transform")
@pytest.mark.parametrize("H,W", [(48, 48), (16, 16), (5, 7), (256, 256), (8192, 2)])
def test_inverse_of_a_gated_spectrum_on_cuda(H, W):
    gen = torch.Generator().manual_seed(H + W)
    wf = W // 2 + 1
    Y = torch.complex(torch.randn(2, H, wf, generator=gen), torch.randn(2, H, wf, generator=gen))
    want = irfft2(Y.double(), H, W)
    torch.testing.assert_close(irfft2(Y.cuda(), H, W).cpu().double(), want, rtol=1e-4, atol=1e-4)
    parts = irfft2_parts(Y.real.cuda(), Y.imag.cuda(), H, W)
    torch.testing.assert_close(parts.cpu().double(), want, rtol=1e-4, atol=1e-4)
