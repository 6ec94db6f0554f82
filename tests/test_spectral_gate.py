"""The spectral gate (SPEC 4 step 2): C++ op vs torch composite vs eager complex ops."""

from __future__ import annotations

import pytest
import torch

from adaptir_kernels import _ext
from adaptir_kernels.ops import spectral_gate as sg

HAS_CPP = _ext.available()
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")

# (N, h, H, Wf): N = 1, odd sizes, h = 3 and 12, Wf = 1, and planes of more than one
# 2048-element work chunk.
SHAPES = [(1, 3, 5, 3), (2, 12, 7, 4), (3, 3, 1, 1), (2, 3, 4, 1), (1, 12, 16, 9), (2, 3, 70, 36)]


def make_inputs(shape, dtype, seed=0, zeros=False):
    g = torch.Generator().manual_seed(seed)
    N, h, H, Wf = shape
    U = torch.randn(N, h, H, Wf, 2, generator=g, dtype=dtype)
    if zeros:
        U.view(-1, 2)[:: 3] = 0.0
    params = [torch.randn(h, generator=g, dtype=dtype) * 0.5 for _ in range(4)]
    grad_G = torch.randn(N, h, H, Wf, 2, generator=g, dtype=dtype)
    return U, params, grad_G


def eager(U, aw, ab, pw, pb):
    """The oracle: the gate written with torch complex ops, differentiated by autograd."""
    Uc = torch.view_as_complex(U)
    c = (1, -1, 1, 1)
    amp = aw.reshape(c) * Uc.abs() + ab.reshape(c)
    pha = pw.reshape(c) * Uc.angle() + pb.reshape(c)
    return torch.view_as_real(torch.complex(amp * torch.cos(pha), amp * torch.sin(pha)))


def eager_with_grads(U, params, grad_G):
    leaves = [t.detach().clone().requires_grad_() for t in (U, *params)]
    G = eager(*leaves)
    grads = torch.autograd.grad(G, leaves, grad_G)
    return G.detach(), grads


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-11)}


def assert_matches_eager(G, grads, U, params, grad_G):
    G_ref, grads_ref = eager_with_grads(U, params, grad_G)
    tol_out, tol_grad = TOL[U.dtype]
    assert torch.isfinite(G).all()
    assert rel(G, G_ref) < tol_out
    names = ("U", "amp_w", "amp_b", "pha_w", "pha_b")
    for name, g, r in zip(names, grads, grads_ref):
        assert torch.isfinite(g).all(), name
        assert g.shape == r.shape, name
        assert rel(g, r) < tol_grad, (name, rel(g, r))


# ---- torch composite (always runs) ------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_composite_matches_eager(shape, dtype):
    U, params, grad_G = make_inputs(shape, dtype)
    G = sg.spectral_gate(U, *params, backend="torch")
    grads = sg.spectral_gate_backward(grad_G, U, *params, backend="torch")
    assert_matches_eager(G, grads, U, params, grad_G)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_composite_zeros(dtype):
    U, params, grad_G = make_inputs((2, 3, 5, 3), dtype, zeros=True)
    G = sg.spectral_gate_torch(U, *params)
    grads = sg.spectral_gate_backward_torch(grad_G, U, *params)
    assert_matches_eager(G, grads, U, params, grad_G)
    zero = (U == 0).all(-1)
    assert (grads[0][zero] == 0).all()


def test_unknown_backend():
    U, params, grad_G = make_inputs((1, 3, 2, 2), torch.float32)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        sg.spectral_gate(U, *params, backend="nope")
    with pytest.raises(ValueError, match="unknown backend"):
        sg.spectral_gate_backward(grad_G, U, *params, backend="nope")


def test_cpp_backend_missing_extension_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_ext, "_tried", True)
    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "_error", ImportError("simulated"))
    assert not _ext.available()
    U, params, grad_G = make_inputs((1, 3, 2, 2), torch.float32)
    with pytest.raises(RuntimeError, match="not built; reinstall with"):
        sg.spectral_gate(U, *params, backend="cpp")
    with pytest.raises(RuntimeError, match="not built"):
        sg.spectral_gate_backward(grad_G, U, *params, backend="cpp")


# ---- the C++ op -------------------------------------------------------------------


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cpp_matches_eager_and_composite(shape, dtype):
    U, params, grad_G = make_inputs(shape, dtype, seed=1)
    G = sg.spectral_gate(U, *params, backend="cpp")
    grads = sg.spectral_gate_backward(grad_G, U, *params, backend="cpp")
    assert_matches_eager(G, grads, U, params, grad_G)
    tol_out, tol_grad = TOL[dtype]
    G_t = sg.spectral_gate_torch(U, *params)
    grads_t = sg.spectral_gate_backward_torch(grad_G, U, *params)
    assert rel(G, G_t) < tol_out
    for g, t in zip(grads, grads_t):
        assert rel(g, t) < tol_grad


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_autograd_matches_eager(dtype):
    U, params, grad_G = make_inputs((2, 12, 7, 4), dtype, seed=2)
    leaves = [t.clone().requires_grad_() for t in (U, *params)]
    G = torch.ops.adaptir_cpp.spectral_gate(*leaves)
    grads = torch.autograd.grad(G, leaves, grad_G)
    assert_matches_eager(G.detach(), grads, U, params, grad_G)


@needs_cpp
def test_cpp_conv_shaped_params_keep_their_shape():
    U, params, grad_G = make_inputs((2, 3, 5, 3), torch.float64, seed=3)
    conv = [p.reshape(3, 1, 1, 1).clone().requires_grad_() for p in params]
    G = torch.ops.adaptir_cpp.spectral_gate(U, *conv)
    grads = torch.autograd.grad(G, conv, grad_G)
    _, ref = eager_with_grads(U, params, grad_G)
    for g, r in zip(grads, ref[1:]):
        assert g.shape == (3, 1, 1, 1)
        assert rel(g.reshape(-1), r) < 1e-12


@needs_cpp
def test_cpp_gradcheck_float64():
    U, params, _ = make_inputs((2, 3, 3, 2), torch.float64, seed=4)
    # gradcheck needs a differentiable point: keep |U| away from 0.
    U = U + 0.3 * torch.sign(U)
    leaves = [t.clone().requires_grad_() for t in (U, *params)]
    assert torch.autograd.gradcheck(torch.ops.adaptir_cpp.spectral_gate, leaves)


@needs_cpp
def test_cpp_opcheck():
    U, params, grad_G = make_inputs((2, 3, 4, 3), torch.float32, seed=5)
    leaves = [t.clone().requires_grad_() for t in (U, *params)]
    torch.library.opcheck(torch.ops.adaptir_cpp.spectral_gate.default, tuple(leaves))
    torch.library.opcheck(torch.ops.adaptir_cpp.spectral_gate.default, (U, *params))
    torch.library.opcheck(torch.ops.adaptir_cpp.spectral_gate_backward.default, (grad_G, U, *params))


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_zeros_follow_torch_conventions(dtype):
    """SPEC 4.2: angle(0) = 0 in the forward; grad_U = 0 where U = 0."""
    U, params, grad_G = make_inputs((2, 3, 5, 3), dtype, seed=6, zeros=True)
    zero = (U == 0).all(-1)
    assert zero.any()
    leaves = [t.clone().requires_grad_() for t in (U, *params)]
    G = torch.ops.adaptir_cpp.spectral_gate(*leaves)
    grads = torch.autograd.grad(G, leaves, grad_G)
    assert_matches_eager(G.detach(), grads, U, params, grad_G)
    assert (grads[0][zero] == 0).all()
    # At U = 0: A' = amp_b, P' = pha_b.
    ab, pb = params[1].reshape(1, -1, 1, 1), params[3].reshape(1, -1, 1, 1)
    expect = torch.stack((ab * torch.cos(pb), ab * torch.sin(pb)), -1).expand_as(U)
    torch.testing.assert_close(G.detach()[zero], expect[zero])


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_thread_count_independent(dtype):
    U, params, grad_G = make_inputs((3, 12, 70, 36), dtype, seed=7)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        G1 = torch.ops.adaptir_cpp.spectral_gate(U, *params)
        b1 = torch.ops.adaptir_cpp.spectral_gate_backward(grad_G, U, *params)
        torch.set_num_threads(2)
        G2 = torch.ops.adaptir_cpp.spectral_gate(U, *params)
        b2 = torch.ops.adaptir_cpp.spectral_gate_backward(grad_G, U, *params)
    finally:
        torch.set_num_threads(saved)
    torch.testing.assert_close(G1, G2, rtol=0, atol=1e-6)
    for x, y in zip(b1, b2):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


@needs_cpp
def test_cpp_non_contiguous_inputs():
    U, params, grad_G = make_inputs((2, 3, 6, 4), torch.float64, seed=8)
    U_nc = U.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    grad_nc = grad_G.sum(0, keepdim=True).expand_as(grad_G)  # stride 0, like .sum()'s grad
    G = torch.ops.adaptir_cpp.spectral_gate(U_nc, *params)
    torch.testing.assert_close(G, sg.spectral_gate_torch(U, *params))
    got = torch.ops.adaptir_cpp.spectral_gate_backward(grad_nc, U_nc, *params)
    ref = sg.spectral_gate_backward_torch(grad_nc.contiguous(), U, *params)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


@needs_cpp
def test_cpp_empty_input():
    U, params, _ = make_inputs((0, 3, 4, 3), torch.float32)
    assert torch.ops.adaptir_cpp.spectral_gate(U, *params).shape == U.shape
    grads = torch.ops.adaptir_cpp.spectral_gate_backward(torch.zeros_like(U), U, *params)
    for g in grads[1:]:
        assert (g == 0).all()


@needs_cpp
def test_cpp_bad_inputs():
    op, bwd = torch.ops.adaptir_cpp.spectral_gate, torch.ops.adaptir_cpp.spectral_gate_backward
    U, params, grad_G = make_inputs((2, 3, 4, 3), torch.float32)
    with pytest.raises(RuntimeError, match="last dim of U must be 2"):
        op(torch.zeros(2, 3, 4, 3, 3), *params)
    with pytest.raises(RuntimeError, match=r"shape \(N, h, H, Wf, 2\), got 4 dims"):
        op(U[..., 0], *params)
    with pytest.raises(RuntimeError, match="amp_b must have 3 elements"):
        op(U, params[0], torch.zeros(4), *params[2:])
    with pytest.raises(RuntimeError, match="pha_w must have 3 elements"):
        bwd(grad_G, U, *params[:2], torch.zeros(2), params[3])
    with pytest.raises(RuntimeError, match="U must be float32 or float64, got Int"):
        op(U.to(torch.int32), *params)
    with pytest.raises(RuntimeError, match="amp_w has dtype Double but U has dtype Float"):
        op(U, params[0].double(), *params[1:])
    with pytest.raises(RuntimeError, match="grad_G has dtype Double"):
        bwd(grad_G.double(), U, *params)
    with pytest.raises(RuntimeError, match="grad_G must have U's shape"):
        bwd(grad_G[:1], U, *params)


@needs_cpp
def test_cpp_fake_kernels_on_meta():
    U, params, grad_G = make_inputs((2, 3, 4, 3), torch.float32)
    meta = [t.to("meta") for t in (grad_G, U, *params)]
    G = torch.ops.adaptir_cpp.spectral_gate(*meta[1:])
    assert G.device.type == "meta" and G.shape == U.shape
    grads = torch.ops.adaptir_cpp.spectral_gate_backward(*meta)
    assert [tuple(g.shape) for g in grads] == [tuple(U.shape)] + [(3,)] * 4
