"""linear_rows, the product of the torch composites' hidden-width GEMMs."""

import pytest
import torch

from adaptir_kernels.ops._products import linear_rows


@pytest.mark.parametrize("R,K,N", [(37, 12, 40), (1, 12, 40), (29, 1, 7), (64, 24, 1), (5, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_rows_matches_the_product(R, K, N, dtype):
    gen = torch.Generator().manual_seed(R * 1000 + K * 10 + N)
    a = torch.randn(R, K, generator=gen, dtype=torch.float64)
    w = torch.randn(N, K, generator=gen, dtype=torch.float64)
    out = linear_rows(a.to(dtype), w.to(dtype))
    assert out.shape == (R, N) and out.dtype == dtype and out.is_contiguous()
    want = a @ w.t()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert (out.double() - want).norm() <= tol * want.norm()


def test_linear_rows_takes_views_and_the_fallback(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(40, 30, generator=gen)
    a = base[::2, 5:17]  # strided rows, offset columns
    w = torch.randn(12, 9, generator=gen).t()  # (9, 12), a transposed view
    want = a.double() @ w.double().t()
    assert (linear_rows(a, w).double() - want).norm() <= 1e-6 * want.norm()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    got = linear_rows(a, w)
    assert (got.double() - want).norm() <= 1e-6 * want.norm()
