"""global_branch: every backend against the composite forward and autograd through it."""

import pytest
import torch

from adaptir_kernels.ops import global_branch as op
from helpers import assert_close_rel
from op_cases import OP_SHAPES, OpCase, backend_params, randn, run_autograd, run_case


def make_case(N, H, W, h=12, seed=0):
    inputs = [randn(N, h, H, W, seed=seed), 1 + randn(h, seed=seed + 1, std=0.3), randn(h, seed=seed + 2, std=0.3),
              1 + randn(h, seed=seed + 3, std=0.3), randn(h, seed=seed + 4, std=0.3)]
    return OpCase(
        forward_op=op.global_branch, backward_op=op.global_branch_backward,
        oracle=lambda *a: op.forward_torch(*a)[:2],  # g and gmean; the signs: test_signs_*
        inputs=inputs, backward_inputs=lambda ins, outs: [ins[0], outs[0], outs[2], *ins[1:]],
    )


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", OP_SHAPES + [(1, 1, 1), (2, 2, 2)], ids=str)
def test_parity(backend, shape):
    run_case(make_case(*shape), backend)


def _cpu_backends():
    from op_cases import backends

    return [b for b in ("cpp", "torch") if b in backends()]


# The C++ backend transforms float32 planes of up to 64 x 64 whose sides factor into 2, 3
# and 5 itself (csrc/cpu/small_fft.h, 8 planes per vector, 16 in the AVX-512 build, so
# N*h not a multiple of those leaves lanes empty); other sizes go through ATen's FFT. Both
# routes against the float64 oracle, with N*h chosen to fill blocks of 8 or 16 planes
# fully, partly, or not (21 = 16 + 5 = 8 + 8 + 5).
@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("shape,h", [((1, 48, 48), 12), ((2, 16, 16), 24), ((3, 16, 16), 7), ((3, 45, 64), 3),
                                     ((1, 9, 25), 11), ((2, 1, 60), 5), ((1, 14, 16), 12),
                                     ((1, 65, 8), 4)], ids=str)
def test_parity_at_transform_sizes(backend, shape, h):
    run_case(make_case(*shape, h=h, seed=sum(shape) + h), backend)


@pytest.mark.parametrize("backend", backend_params())
def test_registered_autograd(backend):
    run_autograd(make_case(2, 4, 5, seed=20), backend)


@pytest.mark.parametrize("backend", backend_params())
def test_constant_image_zero_spectrum(backend):
    # A constant plane has an all-zero spectrum except DC; zero channels have |U| = 0
    # everywhere. SPEC 4.2: gradients there are 0, never NaN.
    from op_cases import DEVICE

    u = torch.zeros(1, 3, 4, 5, device=DEVICE)
    u[0, 1] = 2.0
    p = [torch.full((3,), v, device=DEVICE) for v in (1.3, 0.2, 0.7, 0.1)]
    g, gm, sign = op.global_branch(u, *p, backend)
    gg, ggm = torch.ones_like(g), torch.ones_like(gm)
    grads = op.global_branch_backward(gg, ggm, u, g, sign, *p, backend)
    ref = op.global_branch_backward(gg.cpu(), ggm.cpu(), u.cpu(), g.cpu(), op.no_signs(u.cpu()),
                                    *[t.cpu() for t in p], "torch")
    for a, b in zip(grads, ref):
        assert not torch.isnan(a).any()
        assert torch.allclose(a.cpu(), b, atol=1e-5)


def test_opcheck():
    case = make_case(2, 3, 4)
    args = [t.float() for t in case.inputs]
    torch.library.opcheck(op.global_branch, (*args, "torch"))
    g, _, sign = op.global_branch(*args, "torch")
    torch.library.opcheck(op.global_branch_backward,
                          (torch.randn(2, 12, 3, 4), torch.randn(2, 12), args[0], g, sign, *args[1:], "torch"))


def _y64(u, p):
    """The inverse transform y before abs (g = |y|), in float64."""
    from adaptir_kernels.ops.spectral_gate import spectral_gate_torch

    H, W = u.shape[-2:]
    G = spectral_gate_torch(op._spectrum(u.double()), *[t.double() for t in p])
    return op._inverse(G, H, W)


@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 4, 4), (3, 1, 9), (1, 1, 1)], ids=str)
def test_pack_signs_layout(shape):
    N, H, W = shape
    y = torch.randn(N, 3, H, W, generator=torch.Generator().manual_seed(H * W))
    y[0, 0].view(-1)[0] = -0.0  # not negative: no bit
    bits = op.pack_signs(y)
    assert bits.dtype == torch.uint8 and bits.shape == (N, 3, (H * W + 7) // 8)
    flat = y.reshape(N, 3, -1)
    for i in range(H * W):
        assert torch.equal(((bits[:, :, i // 8] >> (i % 8)) & 1).bool(), flat[:, :, i] < 0)
    # padding bits beyond H*W stay clear
    if (H * W) % 8:
        assert (bits[:, :, -1] >> ((H * W) % 8)).eq(0).all()
    g = y.abs()
    g[1 % N, 2, 0, 0] = 0.0
    want = torch.sign(y) * (g > 0)
    assert torch.equal(op.unpack_signs(g, bits), want)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", [(2, 6, 8), (1, 5, 7), (2, 18, 24), (1, 23, 25)], ids=str)
def test_signs_kept_by_the_forward(backend, shape):
    """The forward's packed signs are those of y; the backward from them equals the
    backward that recomputes y (an empty sign), bit for bit."""
    from op_cases import DEVICE

    case = make_case(*shape, seed=5)
    u, *p = [t.float().to(DEVICE) for t in case.inputs]
    g, gm, sign = op.global_branch(u, *p, backend)
    assert sign.shape == op.sign_shape(u.shape) and sign.dtype == torch.uint8
    y = _y64(u.cpu(), [t.cpu() for t in p])
    clear = y.abs() > 1e-6  # away from zero, where float32 and float64 agree on the sign
    got = op.unpack_signs(torch.ones_like(y), sign.cpu())
    assert torch.equal(got[clear], torch.sign(y)[clear])
    gg, ggm = torch.randn_like(g), torch.randn_like(gm)
    with_signs = op.global_branch_backward(gg, ggm, u, g, sign, *p, backend)
    recomputed = op.global_branch_backward(gg, ggm, u, g, op.no_signs(u), *p, backend)
    for a, b in zip(with_signs, recomputed):
        assert torch.equal(a, b)
    # torch's composite on the CPU reads the same signs the same way (to the gradient
    # tolerance of SPEC section 6: the FFTs differ between devices and backends)
    via_torch = op.global_branch_backward(gg.cpu(), ggm.cpu(), u.cpu(), g.cpu(), sign.cpu(),
                                          *[t.cpu() for t in p], "torch")
    for i, (a, b) in enumerate(zip(with_signs, via_torch)):
        assert_close_rel(a.cpu(), b, 1e-4, name=f"gradient {i}")


@pytest.mark.parametrize("backend", backend_params())
def test_signs_where_y_is_zero(backend):
    """A zero amplitude gate makes y = 0: g = 0 and every gradient through |y| is 0, as
    sign(0) = 0, whatever the sign bits say."""
    from op_cases import DEVICE

    u = torch.randn(1, 2, 4, 6, device=DEVICE)
    p = [torch.tensor(v, device=DEVICE) for v in ([0.0, 1.0], [0.0, 0.3], [1.0, 1.0], [0.1, 0.2])]
    g, gm, sign = op.global_branch(u, *p, backend)
    assert (g[:, 0] == 0).all() and (g[:, 1] > 0).any()
    grads = op.global_branch_backward(torch.ones_like(g), torch.ones_like(gm), u, g, sign, *p, backend)
    ref = op.global_branch_backward(torch.ones_like(g), torch.ones_like(gm), u, g, op.no_signs(u), *p, backend)
    for a, b in zip(grads, ref):
        assert torch.equal(a, b)
    assert grads[1][0] == 0 and grads[3][0] == 0  # no gradient reaches channel 0's phase gate


@pytest.mark.parametrize("backend", backend_params())
def test_bad_signs_are_refused(backend):
    from op_cases import DEVICE

    u = torch.randn(2, 3, 5, 7, device=DEVICE)
    p = [torch.rand(3, device=DEVICE) + 0.5 for _ in range(4)]
    g, gm, sign = op.global_branch(u, *p, backend)
    gg, ggm = torch.randn_like(g), torch.randn_like(gm)
    with pytest.raises((RuntimeError, ValueError), match="sign must"):
        op.global_branch_backward(gg, ggm, u, g, sign.float(), *p, backend)
    with pytest.raises((RuntimeError, ValueError), match="sign must"):
        op.global_branch_backward(gg, ggm, u, g, sign[..., :-1], *p, backend)
    with pytest.raises((RuntimeError, ValueError), match="g must have u's shape"):
        op.global_branch_backward(gg, ggm, u, g[..., :-1], sign, *p, backend)


@pytest.mark.parametrize("N,H,W,h", [(1, 40, 36, 2), (1, 33, 47, 1), (2, 64, 20, 1)], ids=str)
def test_triton_split_planes(monkeypatch, N, H, W, h):
    """Planes split into chunks for the abs / mean / sign kernel (what a whole image at
    N = 1 gets on a GPU), forced here on small planes: g, the mean and every packed sign
    byte equal the unsplit kernel's, and the op matches the oracle."""
    from op_cases import DEVICE, backends

    if "triton" not in backends():
        pytest.skip("backend 'triton' does not run here")
    from adaptir_kernels.triton import global_branch as tg

    case = make_case(N, H, W, h=h, seed=H + W)
    u, *p = [t.float().to(DEVICE) for t in case.inputs]
    whole = op.global_branch(u, *p, "triton")
    monkeypatch.setattr(tg, "SPLIT_MIN_ITERS", 0)
    monkeypatch.setattr(tg, "CHUNK_ITERS", 1)
    C, CH = tg.cm.chunks(N * h, H * W, tg.cm.FLAT_CONFIG["BLOCK"], u.device, 0, 1, tg.MAX_CHUNKS)
    assert C > 1 and CH % 8 == 0 and (C - 1) * CH < H * W  # the split path runs, chunks whole bytes
    split = op.global_branch(u, *p, "triton")
    assert torch.equal(split[0], whole[0]) and torch.equal(split[2], whole[2])
    assert_close_rel(split[1], whole[1], 1e-6, "gmean")
    run_case(case, "triton")
