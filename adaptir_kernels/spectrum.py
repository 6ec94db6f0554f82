"""The adapter's 2-D spectrum of a real plane, with its exactly real bins made exact, and
the inverse transform of a gated (not Hermitian) half spectrum as SPEC 4.1 defines it.

For real u of size (H, W), the rfft2 bins (kh, kw) with kh in {0, H/2} and kw in {0, W/2}
(the halves only for even sizes) equal their own conjugate partner, so they are real.
FFT libraries compute them with rounding-level imaginary parts of either sign when a size
has an odd factor (H = 48 = 16 * 3, for instance): where such a bin's real part is
negative, angle() is then +pi or -pi by chance, and the phase gate's output on it differs
by O(amplitude) between two implementations, layouts or thread counts. Every
implementation here (reference, torch, C++, Triton) therefore sets those imaginary parts
to +0 after the transform, so angle() there is 0 or +pi exactly. This changes no
gradient: the imaginary parts of these bins are identically zero as functions of u.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def real_bins(H: int, W: int) -> Tuple[Tuple[int, int], ...]:
    """The (kh, kw) bins of an (H, W) real plane's rfft2 that are exactly real."""
    rows = (0, H // 2) if H % 2 == 0 and H > 1 else (0,)
    cols = (0, W // 2) if W % 2 == 0 and W > 1 else (0,)
    return tuple((r, c) for r in rows for c in cols)


def rfft2(u: Tensor) -> Tensor:
    """rfft2(u, norm="ortho") over the last two dimensions, complex (..., H, W//2+1), with
    the imaginary parts of the exactly real bins set to +0. Differentiable."""
    H, W = u.shape[-2:]
    U = torch.fft.rfft2(u, norm="ortho")
    wf = U.shape[-1]
    # Rows {0, H/2} and columns {0, W/2} as one strided view: a single fill, no index
    # tensor (so nothing is copied to the device, and CUDA-graph capture is unaffected).
    row_step = H // 2 if H % 2 == 0 and H > 1 else H
    col_step = W // 2 if W % 2 == 0 and W > 1 else wf
    torch.view_as_real(U)[..., 0:H:row_step, 0:wf:col_step, 1].zero_()
    return U


def irfft2(Y: Tensor, H: int, W: int) -> Tensor:
    """irfft2(Y, s=(H, W), norm="ortho") over the last two dimensions, as SPEC 4.1 defines
    it for any half spectrum, on every device. Differentiable.

    A gated spectrum is not the rfft2 of a real plane: its columns kw = 0 and (W even)
    kw = W/2 are not Hermitian along H. The CPU's FFT follows SPEC 4.1 there (an inverse
    FFT along H, then a real inverse along W that reads the real parts of those columns);
    cuFFT's two-dimensional complex-to-real transform assumes symmetry along H as well,
    and its result on such input is undefined. Replacing those columns by their Hermitian
    part along H, (Y[kh] + conj(Y[-kh])) / 2, leaves SPEC 4.1's result unchanged (it
    depends on them only through the real part of their inverse along H) and gives every
    library a valid half spectrum."""
    wf = Y.shape[-1]

    def hermitian(col: Tensor) -> Tensor:  # (..., H, 1): (z[kh] + conj(z[-kh mod H])) / 2
        return (col + torch.roll(col.flip(-2), 1, dims=-2).conj_physical()) / 2

    parts = [hermitian(Y[..., 0:1])]
    if W % 2 == 0 and wf > 1:
        parts += [Y[..., 1:wf - 1], hermitian(Y[..., wf - 1:wf])]
    else:
        parts.append(Y[..., 1:])
    return torch.fft.irfft2(torch.cat(parts, dim=-1), s=(H, W), norm="ortho")


def irfft2_parts(re: Tensor, im: Tensor, H: int, W: int) -> Tensor:
    """irfft2 (above) of the half spectrum re + i im, given as its real and imaginary
    parts. The Hermitian part of the columns kw = 0 and W/2 is formed in real arithmetic,
    ((re[kh] + re[-kh]) / 2, (im[kh] - im[-kh]) / 2), before the complex tensor is made:
    torch.compile's Inductor lowers complex arithmetic by viewing it as real pairs, which
    fails on the channels-last tensors its convolutions produce, and real arithmetic works
    in any layout. Differentiable; the reference adapter uses it."""
    wf = re.shape[-1]

    def hermitian(col: Tensor, sign: float) -> Tensor:  # (..., H, 1): (x[kh] + sign x[-kh mod H]) / 2
        return (col + sign * torch.roll(col.flip(-2), 1, dims=-2)) / 2

    def columns(x: Tensor, sign: float) -> Tensor:
        parts = [hermitian(x[..., 0:1], sign)]
        if W % 2 == 0 and wf > 1:
            parts += [x[..., 1:wf - 1], hermitian(x[..., wf - 1:wf], sign)]
        else:
            parts.append(x[..., 1:])
        return torch.cat(parts, dim=-1)

    Y = torch.complex(columns(re, 1.0), columns(im, -1.0))
    return torch.fft.irfft2(Y, s=(H, W), norm="ortho")


def rfft2_real(u: Tensor) -> Tensor:
    """rfft2 as a real (..., H, W//2+1, 2) tensor (view_as_real of `rfft2(u)`)."""
    return torch.view_as_real(rfft2(u))
