"""The eager reference against an independent NumPy statement of the SPEC, plus its API."""

import numpy as np
import pytest
import torch

from adaptir_kernels.reference import AdaptIR
from helpers import make_input, randomize
from numpy_oracle import adaptir_forward, irfft2_ortho, rfft2_ortho

ORACLE_SHAPES = [(2, 5, 7), (1, 4, 4), (2, 1, 6), (1, 6, 1), (2, 3, 8)]


def _numpy_state(m):
    params = {k: v.detach().double().numpy() for k, v in m.named_parameters()}
    buffers = {k: v.detach().double().numpy().copy() for k, v in m.named_buffers()}
    return params, buffers


def test_dft_matches_torch_fft():
    # The oracle's transforms are the SPEC 4.1 formulas; torch.fft must agree with them.
    rng = np.random.default_rng(0)
    for H, W in [(6, 8), (5, 7), (3, 1), (1, 4)]:
        u = rng.standard_normal((2, H, W))
        U = rfft2_ortho(u)
        assert np.allclose(U, torch.fft.rfft2(torch.from_numpy(u), norm="ortho").numpy(), atol=1e-12)
        Y = rng.standard_normal(U.shape) + 1j * rng.standard_normal(U.shape)  # not Hermitian-consistent
        ref = torch.fft.irfft2(torch.from_numpy(Y), s=(H, W), norm="ortho").numpy()
        assert np.allclose(irfft2_ortho(Y, H, W), ref, atol=1e-12)


@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", ORACLE_SHAPES)
def test_reference_matches_numpy_oracle(layout, training, shape):
    N, H, W = shape
    m = randomize(AdaptIR(56, layout=layout), seed=3).double().train(training)
    params, buffers = _numpy_state(m)
    x = make_input(layout, N, H, W, 56, dtype=torch.float64, seed=4)
    out = m(x, hw=(H, W) if layout == "lnc" else None)
    x_nchw = x.permute(0, 3, 1, 2) if layout == "nhwc" else x.permute(1, 2, 0).reshape(N, 56, H, W)
    expected, new_buffers = adaptir_forward(params, buffers, x_nchw.numpy(), training)
    out_nchw = out.permute(0, 3, 1, 2) if layout == "nhwc" else out.permute(1, 2, 0).reshape(N, 56, H, W)
    err = np.linalg.norm(out_nchw.detach().numpy() - expected) / np.linalg.norm(expected)
    assert err < 1e-10, err
    for name, buf in m.named_buffers():
        want = new_buffers[name]
        got = buf.double().numpy()
        assert np.allclose(got, want, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize(
    "layout,shape,training,fast",
    [("nhwc", (2, 1, 3), True, False), ("lnc", (1, 3, 2), False, True), ("lnc", (2, 2, 3), True, True),
     ("nhwc", (1, 2, 3), False, True)],
)
def test_reference_gradcheck(layout, shape, training, fast):
    # One full Jacobian check; the others use gradcheck's fast (random projection) mode.
    N, H, W = shape
    m = randomize(AdaptIR(8, layout=layout, hidden=4, ci_hidden=2), seed=5).double().train(training)
    x = make_input(layout, N, H, W, 8, dtype=torch.float64, seed=6).requires_grad_(True)
    names = [n for n, _ in m.named_parameters()]
    params = [p for _, p in m.named_parameters()]
    buffers = {k: v.clone() for k, v in m.named_buffers()}

    def f(x, *ps):
        # Each evaluation starts from the same BN buffers, so train mode is a pure function.
        state = dict(zip(names, ps))
        state.update({k: v.clone() for k, v in buffers.items()})
        return torch.func.functional_call(m, state, (x,), {"hw": (H, W) if layout == "lnc" else None})

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast)


def test_parameter_names_shapes_and_init():
    m = AdaptIR(180)
    sd = m.state_dict()
    expected = {
        "conv_weight_A": (12, 6), "conv_weight_B": (6, 9), "conv_bias": (12,),
        "head.weight": (12, 180, 1, 1), "head.bias": (12,),
        "BN.weight": (12,), "BN.bias": (12,), "BN.running_mean": (12,), "BN.running_var": (12,),
        "BN.num_batches_tracked": (),
        "amp_fuse.weight": (12, 1, 1, 1), "amp_fuse.bias": (12,),
        "pha_fuse.weight": (12, 1, 1, 1), "pha_fuse.bias": (12,),
        "compress.weight": (1, 12, 1, 1), "compress.bias": (1,),
        "proj.0.weight": (6, 12), "proj.0.bias": (6,), "proj.2.weight": (12, 6), "proj.2.bias": (12,),
        "tail.weight": (180, 12, 1, 1),
        "channel_interaction.1.weight": (3, 12, 1, 1), "channel_interaction.1.bias": (3,),
        "channel_interaction.3.weight": (12, 3, 1, 1), "channel_interaction.3.bias": (12,),
        "spatial_interaction.weight": (1, 12, 1, 1), "spatial_interaction.bias": (1,),
    }
    assert list(sd.keys()) == list(expected.keys())
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert sum(p.numel() for p in m.parameters()) == 4817
    assert sum(p.numel() for p in AdaptIR(576, preset="ipt", layout="lnc").parameters()) == 29069
    # Published initial values: zero tail and gates, unit amplitude/phase weights.
    for name in ("tail.weight", "channel_interaction.3.weight", "channel_interaction.3.bias",
                 "spatial_interaction.weight", "spatial_interaction.bias", "conv_bias"):
        assert torch.count_nonzero(sd[name]) == 0, name
    assert torch.all(sd["amp_fuse.weight"] == 1) and torch.all(sd["pha_fuse.weight"] == 1)
    x = torch.randn(2, 4, 5, 180)
    assert torch.count_nonzero(m(x)) == 0
    # A fresh adapter's non-zero init actually is random (kaiming), not constant.
    assert sd["conv_weight_A"].std() > 0 and sd["head.weight"].std() > 0


def test_ipt_preset_widths():
    m = AdaptIR(576, preset="ipt", layout="lnc")
    assert (m.hidden, m.rank, m.ci_hidden, m.proj_hidden) == (24, 12, 3, 12)
    m = AdaptIR(180, preset="edt")
    assert (m.hidden, m.rank, m.ci_hidden, m.proj_hidden) == (12, 6, 3, 6)
    m = AdaptIR(180, hidden=16, rank=4, ci_hidden=2, proj_hidden=5)
    assert (m.hidden, m.rank, m.ci_hidden, m.proj_hidden) == (16, 4, 2, 5)


def test_rectangular_and_lnc_layouts_agree():
    m1 = randomize(AdaptIR(56, layout="nhwc"), seed=7).double()
    m2 = randomize(AdaptIR(56, layout="lnc"), seed=7).double()
    x = make_input("nhwc", 3, 5, 7, 56, dtype=torch.float64)
    out1 = m1(x)
    out2 = m2(x.reshape(3, 35, 56).transpose(0, 1).contiguous(), hw=(5, 7))
    assert torch.allclose(out1.reshape(3, 35, 56).transpose(0, 1), out2, atol=1e-12)


def test_output_dtype_follows_input():
    m = randomize(AdaptIR(56), seed=8)
    x = make_input("nhwc", 2, 4, 4, 56)
    ref = m(x)
    for dt in (torch.bfloat16, torch.float16):
        out = m(x.to(dt))
        assert out.dtype == dt and out.shape == x.shape
        assert (out.float() - ref).norm() / ref.norm() < 1e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.float32
    assert (out - ref).norm() / ref.norm() < 1e-6


@pytest.mark.parametrize(
    "kwargs,x,hw,exc,match",
    [
        ({}, torch.randn(2, 4, 4), None, ValueError, "expects x of shape"),
        ({}, torch.randn(2, 4, 4, 55), None, ValueError, "channels"),
        ({"layout": "lnc"}, torch.randn(15, 2, 56), None, ValueError, "perfect square"),
        ({"layout": "lnc"}, torch.randn(15, 2, 56), (4, 4), ValueError, "H\\*W=16"),
        ({}, torch.randint(0, 5, (1, 4, 4, 56)), None, TypeError, "floating-point"),
        ({}, torch.randn(1, 4, 4, 56), (3, 4), ValueError, "does not match"),
    ],
)
def test_bad_input_errors(kwargs, x, hw, exc, match):
    m = AdaptIR(56, **kwargs)
    with pytest.raises(exc, match=match):
        m(x, hw=hw)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        AdaptIR(180, preset="swin")
    with pytest.raises(ValueError, match="unknown layout"):
        AdaptIR(180, layout="nchw")
    with pytest.raises(ValueError, match="ci_hidden"):
        AdaptIR(28)
