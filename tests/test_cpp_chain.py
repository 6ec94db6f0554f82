"""The C++ chain (adaptir_cpp::adaptir_chain, csrc/cpu/chain.cpp): the "cpp" backend's
whole adapter as one C++ operator with a C++ autograd node.

It composes the same operators as the Python chain (adaptir_kernels.module._AdaptIRChain)
in the same order, so the two must agree bit for bit in the output and every gradient
(the BN running statistics to rounding). Parity of either with the reference is tests/test_module.py's job (the module
takes the C++ chain there); this file checks that the two paths are the same computation,
that the C++ path is the one taken when it should be and not otherwise, and the op's own
contract (gradcheck, opcheck, errors).
"""

from __future__ import annotations

import copy

import pytest
import torch

import adaptir_kernels.module as fused
from adaptir_kernels import _alloc
from adaptir_kernels.backends import cpp_available
from adaptir_kernels.module import _PARAMETERS, AdaptIR
from helpers import make_input, randomize

pytestmark = pytest.mark.skipif(not cpp_available(), reason="C++ extension not built")

OPS = torch.ops.adaptir_cpp if cpp_available() else None
CHAIN_NODE = "ChainFunction"


def _step(mod, x, hw, grad_seed):
    """Forward and backward; returns (output, grad_fn name, {name: grad}, buffers)."""
    x = x.detach().clone().requires_grad_(True)
    mod.zero_grad(set_to_none=True)
    with _alloc.poisoned():
        out = mod(x, hw=hw)
        gen = torch.Generator().manual_seed(grad_seed)
        out.backward(torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype))
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in mod.named_parameters()})
    return out.detach(), out.grad_fn.name(), grads, {n: b.clone() for n, b in mod.named_buffers()}


def _both_paths(mod, x, hw, steps=2, monkeypatch=None):
    """The same module state stepped through the C++ chain and through the Python chain."""
    results = {}
    for flag in (True, False):
        m = copy.deepcopy(mod)
        monkeypatch.setattr(fused, "CPP_CHAIN", flag)
        results[flag] = [_step(m, x, hw, grad_seed=s) for s in range(steps)]
    return results[True], results[False]


def _assert_same_buffers(b_c, b_p):
    """num_batches_tracked equal; the running statistics up to rounding: the C++ update
    computes in double and rounds once, the Python path's in-place ops round twice, so an
    entry where (1 - f) running and f batch nearly cancel may differ by a few ulps of the
    terms, not of the result (the C++ one is the closer to the exact update there)."""
    assert b_c.keys() == b_p.keys()
    for name in b_c:
        if b_c[name].is_floating_point():
            eps = torch.finfo(b_c[name].dtype).eps
            scale = max(1.0, b_p[name].abs().max().item())
            torch.testing.assert_close(b_c[name], b_p[name], rtol=4 * eps, atol=4 * eps * scale, msg=name)
        else:
            assert torch.equal(b_c[name], b_p[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout,shape", [("nhwc", (2, 5, 7)), ("lnc", (2, 3, 4)), ("nhwc", (1, 6, 1)),
                                          ("lnc", (3, 1, 5)), ("nhwc", (2, 8, 8)),
                                          # several row tiles per sample (halo rows), W % 8 = 6
                                          ("nhwc", (1, 9, 1030))], ids=str)
def test_bitwise_equal_to_the_python_chain(dtype, training, layout, shape, monkeypatch):
    N, H, W = shape
    mod = randomize(AdaptIR(56, layout=layout, backend="cpp"), seed=N * 31 + H * 7 + W).to(dtype).train(training)
    x = make_input(layout, N, H, W, 56, dtype=dtype, seed=H * 10 + W)
    hw = (H, W) if layout == "lnc" else None
    cpp, py = _both_paths(mod, x, hw, monkeypatch=monkeypatch)
    for (out_c, node_c, g_c, b_c), (out_p, node_p, g_p, b_p) in zip(cpp, py):
        assert CHAIN_NODE in node_c and "_AdaptIRChain" in node_p
        assert not out_c.isnan().any()
        assert torch.equal(out_c, out_p)
        assert g_c.keys() == g_p.keys()
        for name in g_c:
            assert g_c[name] is not None and torch.equal(g_c[name], g_p[name]), name
        _assert_same_buffers(b_c, b_p)
    if training:  # the running statistics moved, and by the batch statistics
        assert int(cpp[-1][3]["BN.num_batches_tracked"]) == 2
        assert not torch.equal(cpp[-1][3]["BN.running_mean"], mod.BN.running_mean)


def test_cumulative_average_and_frozen_statistics(monkeypatch):
    """momentum=None (a cumulative average over the batches) and track_running_stats off
    (batch statistics, no update) follow the Python chain too."""
    mod = randomize(AdaptIR(56, backend="cpp"), seed=5).train()
    x = make_input("nhwc", 2, 4, 5, 56, seed=6)
    mod.BN.momentum = None
    cpp, py = _both_paths(mod, x, None, steps=3, monkeypatch=monkeypatch)
    _assert_same_buffers(cpp[-1][3], py[-1][3])
    assert int(cpp[-1][3]["BN.num_batches_tracked"]) == 3
    mod.BN.momentum = 0.1
    mod.BN.track_running_stats = False
    mod.eval()  # batch statistics even in eval mode, and no update
    cpp, py = _both_paths(mod, x, None, monkeypatch=monkeypatch)
    assert torch.equal(cpp[0][0], py[0][0])
    for name, b in cpp[-1][3].items():
        assert torch.equal(b, dict(mod.named_buffers())[name]), name


def test_which_path_runs(monkeypatch):
    """The C++ chain runs for the cpp backend in eager mode; float16 parameters (cast per
    call), autocast and CPP_CHAIN = False take the Python chain, and the torch backend
    never sees the C++ chain."""
    x = make_input("nhwc", 2, 3, 4, 56, seed=8).requires_grad_(True)
    mod = randomize(AdaptIR(56, backend="cpp"), seed=9)
    assert CHAIN_NODE in mod(x).grad_fn.name()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "_AdaptIRChain" in mod(x).grad_fn.name()
    monkeypatch.setattr(fused, "CPP_CHAIN", False)
    assert "_AdaptIRChain" in mod(x).grad_fn.name()
    monkeypatch.setattr(fused, "CPP_CHAIN", True)
    assert "_AdaptIRChain" in AdaptIR(56, backend="torch")(x).grad_fn.name()
    half = copy.deepcopy(mod).half()
    assert "_AdaptIRChain" in half(x).grad_fn.name()


def test_backend_choice_follows_the_module_and_the_environment(monkeypatch):
    """The module keeps its resolved backend per (backend, device, dtype, ADAPTIR_BACKEND):
    a new `backend` value or environment takes effect at the next call, and a choice that
    raised raises again."""
    monkeypatch.delenv("ADAPTIR_BACKEND", raising=False)
    x = make_input("nhwc", 2, 3, 4, 56, seed=8).requires_grad_(True)
    mod = randomize(AdaptIR(56, backend="auto"), seed=9)
    assert CHAIN_NODE in mod(x).grad_fn.name()
    monkeypatch.setenv("ADAPTIR_BACKEND", "torch")
    assert "_AdaptIRChain" in mod(x).grad_fn.name()
    monkeypatch.setenv("ADAPTIR_BACKEND", "nope")
    for _ in range(2):
        with pytest.raises(ValueError, match="ADAPTIR_BACKEND"):
            mod(x)
    monkeypatch.delenv("ADAPTIR_BACKEND")
    assert CHAIN_NODE in mod(x).grad_fn.name()
    mod.backend = "torch"
    assert "_AdaptIRChain" in mod(x).grad_fn.name()
    mod.backend = "cpp"
    assert CHAIN_NODE in mod(x).grad_fn.name()


def test_inference_mode_and_no_grad(monkeypatch):
    """Below autograd (inference_mode) the op's CPU kernel runs the forward alone."""
    mod = randomize(AdaptIR(56, backend="cpp"), seed=10).eval()
    x = make_input("nhwc", 2, 4, 3, 56, seed=11)
    monkeypatch.setattr(fused, "CPP_CHAIN", False)
    with torch.no_grad():
        expected = mod(x)
    monkeypatch.setattr(fused, "CPP_CHAIN", True)
    with torch.inference_mode():
        assert torch.equal(mod(x), expected)
    with torch.no_grad():
        out = mod(x)
    assert out.grad_fn is None and torch.equal(out, expected)


def test_inplace_change_before_backward_is_refused():
    mod = randomize(AdaptIR(56, backend="cpp"), seed=12)
    out = mod(make_input("nhwc", 2, 3, 3, 56, seed=13).requires_grad_(True)).sum()
    with torch.no_grad():
        mod.tail.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def _chain_args(dtype=torch.float64, layout="nhwc", N=2, H=3, W=4, seed=14):
    mod = randomize(AdaptIR(28, layout=layout, backend="cpp", hidden=4), seed=seed).to(dtype)
    params = [mod.get_parameter(name).detach().clone() for name, _ in _PARAMETERS]
    x = make_input(layout, N, H, W, 28, dtype=dtype, seed=seed + 1)
    rm, rv = mod.BN.running_mean.clone(), mod.BN.running_var.clone()
    return x, rm, rv, params, (layout, H, W)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
def test_gradcheck_chain_op(training, layout):
    x, rm, rv, params, (layout, H, W) = _chain_args(layout=layout)
    leaves = [x.requires_grad_(True)] + [p.requires_grad_(True) for p in params]

    def f(x, *ps):
        out, _, _ = OPS.adaptir_chain(x, rm, rv, list(ps), training, 1e-5, layout, H, W)
        return out

    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_opcheck_chain_and_running_update():
    x, rm, rv, params, (layout, H, W) = _chain_args(dtype=torch.float32)
    for training in (True, False):
        torch.library.opcheck(OPS.adaptir_chain.default,
                              (x, rm, rv, [p.requires_grad_(True) for p in params], training, 1e-5, layout, H, W))
    mean, var = torch.randn(4), torch.rand(4)
    for momentum in (0.1, None):
        torch.library.opcheck(OPS.bn_running_update_.default,
                              (rm.clone(), rv.clone(), torch.tensor(3), mean, var, momentum, 24))


def test_running_update_matches_batchnorm():
    bn = torch.nn.BatchNorm2d(5).train()
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    for momentum in (0.3, None):
        bn.momentum = momentum
        ref = copy.deepcopy(bn)
        x = torch.randn(2, 5, 3, 4, dtype=torch.float64).float()
        ref(x)
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        OPS.bn_running_update_(bn.running_mean, bn.running_var, bn.num_batches_tracked, mean, var, momentum, 24)
        torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
        assert torch.equal(bn.num_batches_tracked, ref.num_batches_tracked)
    versions = [t._version for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    OPS.bn_running_update_(bn.running_mean, bn.running_var, bn.num_batches_tracked, mean, var, 0.1, 24)
    assert all(t._version > v for t, v in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), versions))


def test_bad_arguments_are_named():
    x, rm, rv, params, (layout, H, W) = _chain_args(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="expected 24 parameters, got 23"):
        OPS.adaptir_chain(x, rm, rv, params[:-1], True, 1e-5, layout, H, W)
    with pytest.raises(RuntimeError, match="count > 1"):
        OPS.bn_running_update_(rm, rv, torch.tensor(0), rm, rv, 0.1, 1)
    with pytest.raises(RuntimeError, match="shape"):
        OPS.bn_running_update_(rm, rv, torch.tensor(0), rm[:2], rv, 0.1, 8)
    with pytest.raises(RuntimeError, match="vectors of one length"):  # never written past rv's end
        OPS.bn_running_update_(rm, rv[:1], torch.tensor(0), rm, rv[:1], 0.1, 8)
    with pytest.raises(RuntimeError, match="one int64"):
        OPS.bn_running_update_(rm, rv, torch.tensor(0.0), rm, rv, 0.1, 8)
    with pytest.raises(RuntimeError, match="share one dtype"):
        OPS.bn_running_update_(rm, rv, torch.tensor(0), rm.double(), rv, 0.1, 8)
