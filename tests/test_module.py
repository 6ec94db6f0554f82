"""The fused module against the reference: every backend, both layouts, train and eval."""

import copy
import warnings

import pytest
import torch

from adaptir_kernels import _alloc
from adaptir_kernels.backends import available_backends, resolve_backend
from adaptir_kernels.module import AdaptIR
from adaptir_kernels.reference import AdaptIR as ReferenceAdaptIR
from helpers import (SHAPES, assert_close_rel, assert_same_results, compare_modules, make_input, make_pair,
                     randomize, regular_input, run_fwd_bwd)
from op_cases import DEVICE, backend_params


def fused(backend):
    return lambda *a, **k: AdaptIR(*a, backend=backend, **k)


def _assert_parity(ref, mod, x, hw):
    """mod (on DEVICE, outputs NaN-poisoned) against ref on the CPU: output, every
    gradient and the BN buffers."""
    out_r, g_r = run_fwd_bwd(ref, x, hw)
    with _alloc.poisoned():
        out_m, g_m = run_fwd_bwd(mod, x.to(DEVICE), hw)
    assert_same_results(out_m, g_m, out_r, g_r)
    for (name, b_r), (_, b_m) in zip(ref.named_buffers(), mod.named_buffers()):
        assert_close_rel(b_m.double(), b_r.double(), 1e-6, f"buffer {name}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_module_parity(backend, training, layout, shape):
    N, H, W = shape
    ref, mod = make_pair(fused(backend), layout=layout, seed=hash((N, H, W)) % 1000)
    ref.train(training)
    mod.to(DEVICE).train(training)
    x = make_input(layout, N, H, W, 56, seed=N * 100 + H * 10 + W)
    _assert_parity(ref, mod, x, (H, W) if layout == "lnc" else None)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_non_finite_input_like_the_reference(backend, value):
    """One inf, -inf or NaN in x, train mode: the BN running buffers take the reference's
    values (an infinite batch mean gives an infinite running_mean, as BatchNorm2d's sum
    over the count does) and the output is NaN at the same places."""
    ref, mod = make_pair(fused(backend), layout="nhwc", seed=3)
    mod.to(DEVICE)
    x = make_input("nhwc", 2, 5, 6, 56, seed=4)
    x[1, 2, 3, 4] = value
    out_r = ref(x)
    with _alloc.poisoned():
        out_m = mod(x.to(DEVICE)).cpu()
    assert torch.equal(torch.isnan(out_m), torch.isnan(out_r))
    if value == value:  # inf: the running mean is infinite in every channel, with the reference's signs
        assert torch.isinf(ref.BN.running_mean).all()
    for name in ("running_mean", "running_var"):
        b_r, b_m = getattr(ref.BN, name), getattr(mod.BN, name).cpu()
        assert torch.equal(torch.isnan(b_m), torch.isnan(b_r)), name
        finite = torch.isfinite(b_r)
        assert torch.equal(b_m[~finite].nan_to_num(), b_r[~finite].nan_to_num()), name
        assert_close_rel(b_m[finite].double(), b_r[finite].double(), 1e-6, f"buffer {name}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
@pytest.mark.parametrize("shape", [(2, 18, 24), (2, 24, 9)], ids=str)
def test_parity_where_fft_rounding_would_pick_the_phase(backend, layout, shape):
    """H = 18, 24 (an odd factor): the FFT leaves rounding-level imaginary parts of either
    sign on the exactly real bins (H/2, 0) and (H/2, W/2), so angle() there would be +pi
    or -pi by chance. Every implementation snaps them to +0 (adaptir_kernels.spectrum);
    without that, implementations differ by about 1e-3 on these shapes."""
    N, H, W = shape
    ref, mod = make_pair(fused(backend), d_model=168, layout=layout, seed=7)
    mod.to(DEVICE)
    x = make_input(layout, N, H, W, 168, seed=11)
    _assert_parity(ref, mod, x, (H, W) if layout == "lnc" else None)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("preset,d_model,layout", [("ipt", 192, "lnc"), ("edt", 180, "nhwc")])
def test_preset_widths(backend, preset, d_model, layout):
    ref, mod = make_pair(fused(backend), d_model=d_model, preset=preset, layout=layout, seed=11)
    mod.to(DEVICE)
    x = make_input(layout, 2, 4, 6, d_model, seed=12)
    hw = (4, 6) if layout == "lnc" else None
    out_r, g_r = run_fwd_bwd(ref, x, hw)
    out_m, g_m = run_fwd_bwd(mod, x.to(DEVICE), hw)
    assert_same_results(out_m, g_m, out_r, g_r)


@pytest.mark.parametrize("backend", [b for b in ("torch", "cpp") if b in [p.values[0] for p in backend_params()]])
def test_float64_module_matches_reference_tightly(backend):
    ref, mod = make_pair(fused(backend), seed=13)
    ref.double()
    mod.double()
    x = make_input("nhwc", 2, 5, 3, 56, dtype=torch.float64)
    compare_modules(ref, mod, x, out_tol=1e-11, grad_tol=1e-9)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(backend, dtype):
    if backend == "triton" and DEVICE.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes bfloat16 incorrectly")
    ref, mod = make_pair(fused(backend), seed=14)
    mod.to(DEVICE)
    # The float32 reference sees the same (rounded) input values: the phase gate amplifies
    # input rounding, so only the adapter's own arithmetic is compared.
    x = make_input("nhwc", 2, 4, 5, 56).to(dtype)
    out_r, g_r = run_fwd_bwd(ref, x.float())
    out_m, g_m = run_fwd_bwd(mod, x.to(DEVICE))
    assert out_m.dtype == dtype and g_m["x"].dtype == dtype
    assert_close_rel(out_m.float(), out_r, 1e-2, "output")
    for name in g_r:
        assert_close_rel(g_m[name].float(), g_r[name], 1e-2, f"grad {name}", floor=1e-2 * g_r["x"].norm().item())


@pytest.mark.parametrize("backend", backend_params())
def test_autocast(backend):
    ref, mod = make_pair(fused(backend), seed=15)
    mod.to(DEVICE)
    x = make_input("nhwc", 2, 4, 4, 56).to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = mod(x)
    assert out.dtype == torch.float32
    assert_close_rel(out.cpu(), ref(x.cpu()), 1e-5, "output under autocast")


def test_state_dict_round_trip():
    ref = randomize(ReferenceAdaptIR(180), seed=16)
    mod = AdaptIR(180, backend="torch")
    mod.load_state_dict(ref.state_dict(), strict=True)
    back = ReferenceAdaptIR(180)
    back.load_state_dict(mod.state_dict(), strict=True)
    for (k, a), (_, b) in zip(ref.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    assert list(mod.state_dict()) == list(ref.state_dict())


def test_replaced_submodules_and_parameters_are_used():
    """The fused module reads its parameters through cached slots: after a first call, a
    submodule assigned anew and a parameter replaced in its module must both be seen."""
    ref, mod = make_pair(fused("torch"), seed=21)
    x = make_input("nhwc", 2, 5, 6, 56, seed=22)
    ref(x), mod(x)  # the fused one finds its slots; both update their BN buffers
    gen = torch.Generator().manual_seed(23)
    new_tail = torch.nn.Conv2d(ref.hidden, 56, 1, bias=False)
    new_ci = torch.nn.Conv2d(ref.channel_interaction[1].in_channels, ref.channel_interaction[1].out_channels, 1)
    new_bias = torch.nn.Parameter(torch.randn(ref.head.bias.shape, generator=gen))
    with torch.no_grad():
        new_tail.weight.copy_(torch.randn(new_tail.weight.shape, generator=gen))
        new_ci.weight.copy_(torch.randn(new_ci.weight.shape, generator=gen))
    for m in (ref, mod):
        m.tail = copy.deepcopy(new_tail)
        m.channel_interaction[1] = copy.deepcopy(new_ci)
        m.head.bias = torch.nn.Parameter(new_bias.detach().clone())
    compare_modules(ref, mod, x)
    grads = torch.autograd.grad(mod(x).square().sum(), [mod.tail.weight, mod.head.bias, mod.channel_interaction[1].weight])
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("backend", [b for b in ("torch", "cpp") if b in available_backends("cpu")])
def test_kept_parameter_views_follow_the_parameters(backend):
    """The fused module keeps operator-shaped views of its parameters between calls. Values
    changed in place (an optimizer step, load_state_dict), a parameter given new data
    (.data =) and one replaced in its module must all be seen, and an in-place change
    between forward and backward is still refused."""
    ref, mod = make_pair(fused(backend), seed=31)
    x = make_input("nhwc", 2, 5, 6, 56, seed=32)
    compare_modules(ref, mod, x)  # the views are made here
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt_mod = torch.optim.SGD(mod.parameters(), lr=0.5)
    opt_ref.step(), opt_mod.step()  # gradients from compare_modules: every parameter moves in place
    compare_modules(ref, mod, x)
    gen = torch.Generator().manual_seed(33)
    new_w = torch.randn(ref.head.weight.shape, generator=gen)  # the 4-D conv weight, viewed as (h, C)
    for m in (ref, mod):
        m.head.weight.data = new_w.clone()
    compare_modules(ref, mod, x)
    new_a = torch.randn(ref.conv_weight_A.shape, generator=gen)
    for m in (ref, mod):
        m.conv_weight_A = torch.nn.Parameter(new_a.clone())
    compare_modules(ref, mod, x)
    ref.load_state_dict(randomize(copy.deepcopy(ref), seed=34).state_dict())
    mod.load_state_dict(ref.state_dict())
    compare_modules(ref, mod, x)
    out = mod(x).sum()
    with torch.no_grad():
        mod.head.weight.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("backend", [b for b in ("torch", "cpp") if b in available_backends("cpu")])
def test_batchnorm_without_running_statistics(backend):
    """A BN replaced by one without running statistics (its buffers are None) normalises
    with the batch's in train and eval mode, as the reference does."""
    ref, mod = make_pair(fused(backend), seed=41)
    for m in (ref, mod):
        m.BN = torch.nn.BatchNorm2d(m.hidden, track_running_stats=False)
        torch.nn.init.normal_(m.BN.weight, 1.0, 0.2), torch.nn.init.normal_(m.BN.bias, 0.0, 0.2)
    mod.BN.load_state_dict(ref.BN.state_dict())
    x = make_input("nhwc", 2, 4, 5, 56, seed=42)
    for training in (True, False):
        ref.train(training), mod.train(training)
        compare_modules(ref, mod, x)


@pytest.mark.parametrize("backend", [b for b in ("torch", "cpp") if b in available_backends("cpu")])
def test_batchnorm_tracking_turned_off(backend):
    """track_running_stats turned off after construction keeps the buffers: nn.BatchNorm2d
    then normalises with them in eval mode, with the batch's in train mode, and updates
    nothing."""
    ref, mod = make_pair(fused(backend), seed=43)
    x = make_input("nhwc", 2, 4, 5, 56, seed=44)
    for m in (ref, mod):
        m.BN.running_mean.normal_(0.0, 0.3), m.BN.running_var.uniform_(0.5, 2.0)
    mod.BN.load_state_dict(ref.BN.state_dict())
    for m in (ref, mod):
        m.BN.track_running_stats = False
    before = {k: v.clone() for k, v in mod.BN.state_dict().items()}
    for training in (False, True):
        ref.train(training), mod.train(training)
        compare_modules(ref, mod, x)
    assert all(torch.equal(v, before[k]) for k, v in mod.BN.state_dict().items())


@pytest.mark.parametrize("backend", [b for b in ("torch", "cpp") if b in available_backends("cpu")])
def test_batchnorm_without_affine_is_refused(backend):
    mod = AdaptIR(56, backend=backend)
    mod.BN = torch.nn.BatchNorm2d(mod.hidden, affine=False)
    with pytest.raises(ValueError, match="affine BN"):
        mod(torch.randn(2, 4, 5, 56))


@pytest.mark.parametrize("backend", [b for b in ("torch", "cpp") if b in available_backends("cpu")])
def test_submodule_hooks_take_the_reference_path(backend):
    """The hook form of weight_norm recomputes tail.weight in a forward pre-hook of tail,
    which the operators never call: the module runs the reference path instead (with a
    warning), so the result follows weight_g / weight_v."""
    ref, mod = make_pair(fused(backend), seed=45)
    for m in (ref, mod):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the hook form is deprecated
            torch.nn.utils.weight_norm(m.tail)
        with torch.no_grad():
            m.tail.weight_g.mul_(3.0)
    x = make_input("nhwc", 2, 4, 5, 56, seed=46)
    with pytest.warns(UserWarning, match="forward hooks"):
        compare_modules(ref, mod, x)
    compare_modules(ref, mod, x)  # warned once, still right


def test_backend_selection(monkeypatch):
    assert resolve_backend("torch", "cpu") == "torch"
    from adaptir_kernels.backends import TRITON_MAX_HIDDEN, triton_importable

    # "auto" on CUDA: Triton up to its widest hidden width, the torch composite beyond
    assert resolve_backend("auto", "cuda", hidden=TRITON_MAX_HIDDEN + 1) == "torch"
    if triton_importable():
        assert resolve_backend("auto", "cuda", hidden=TRITON_MAX_HIDDEN) == "triton"
        with pytest.raises(ValueError, match="hidden width up to 64, got 73"):
            resolve_backend("triton", "cuda", hidden=73)
    with pytest.raises(ValueError, match="unknown backend"):
        AdaptIR(180, backend="cuda")
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        resolve_backend("cpp", "cuda")
    monkeypatch.setenv("ADAPTIR_BACKEND", "torch")
    assert resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv("ADAPTIR_BACKEND", "nope")
    with pytest.raises(ValueError, match="ADAPTIR_BACKEND"):
        resolve_backend("auto", "cpu")
    monkeypatch.delenv("ADAPTIR_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend("triton", "cpu")
    with pytest.raises(TypeError, match="float64"):
        resolve_backend("triton", "cuda", torch.float64)


def test_single_value_batchnorm_is_refused():
    mod = AdaptIR(56, backend="torch").train()
    with pytest.raises(ValueError, match="more than one value"):
        mod(torch.randn(1, 1, 1, 56))
    mod.eval()
    assert mod(torch.randn(1, 1, 1, 56)).shape == (1, 1, 1, 56)


def test_bad_input_errors():
    mod = AdaptIR(56, layout="lnc", backend="torch")
    with pytest.raises(ValueError, match="H\\*W"):
        mod(torch.randn(12, 2, 56), hw=(3, 5))
    with pytest.raises(TypeError, match="floating-point"):
        mod(torch.ones(16, 2, 56, dtype=torch.int32))
    # hw: two positive whole numbers, or an error that says so (negative sizes whose
    # product matched L used to be reported as an H*W mismatch).
    x = torch.randn(64, 2, 56)
    for bad in [(-8, -8), (0, 64), (8,), (8, 8, 1)]:
        with pytest.raises(ValueError, match=r"hw must be a pair \(H, W\) of positive integers"):
            mod(x, hw=bad)
    for bad in [8, (8.5, 7.5), ("8", "8"), (True, 64)]:
        with pytest.raises(TypeError, match=r"hw must be a pair \(H, W\) of positive integers"):
            mod(x, hw=bad)
    assert mod(x, hw=(8.0, torch.tensor(8))).shape == x.shape
    nhwc = AdaptIR(56, layout="nhwc", backend="torch")
    with pytest.raises(ValueError, match="does not match"):
        nhwc(torch.randn(2, 4, 6, 56), hw=(6, 4))
    with pytest.raises(ValueError, match="positive integers"):
        nhwc(torch.randn(2, 4, 6, 56), hw=(-4, -6))


def _saved_hidden_units(mod, x, hidden, hw=None):
    """Activation bytes saved for backward beyond x, in units of one hidden-width float32
    tensor (parameters and buffers are not counted: they exist anyway)."""
    seen = {}
    owned = {t.untyped_storage().data_ptr() for t in list(mod.parameters()) + list(mod.buffers())}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mod(x.requires_grad_(True), hw=hw)
    n_hidden_bytes = x.numel() // x.shape[-1] * hidden * 4
    x_bytes = x.untyped_storage().nbytes()
    for ptr in owned:
        seen.pop(ptr, None)
    return (sum(seen.values()) - x_bytes) / n_hidden_bytes


def test_saved_tensors_budget():
    # Issue limit: at most 3 hidden-width tensors saved beyond x. The chain keeps xhat,
    # g and the packed signs of y (2 + 1/32) plus per-sample vectors.
    mod = randomize(AdaptIR(180, backend="torch"))
    units = _saved_hidden_units(mod, torch.randn(2, 16, 16, 180), mod.hidden)
    assert 2.03 <= units <= 2.1, units
    ref = randomize(ReferenceAdaptIR(180))
    assert _saved_hidden_units(ref, torch.randn(2, 16, 16, 180), ref.hidden) > 10


def test_torch_compile_fullgraph_forward_backward():
    mod = randomize(AdaptIR(56, backend="torch"), seed=17)
    ref = randomize(ReferenceAdaptIR(56), seed=17)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    x = make_input("nhwc", 2, 4, 5, 56)
    out_c, g_c = run_fwd_bwd(compiled, x)
    out_r, g_r = run_fwd_bwd(ref, x)
    assert_close_rel(out_c, out_r, 1e-5, "compiled output")
    for name in g_r:
        key = name if name in g_c else "_orig_mod." + name
        assert_close_rel(g_c[key], g_r[name], 1e-4, f"compiled grad {name}", floor=1e-2 * g_r["x"].norm().item())


@pytest.mark.parametrize("backend", [*backend_params(), pytest.param("cpp-ops", id="cpp-ops")])
def test_create_graph_gives_first_order_gradients_and_refuses_the_second(backend, monkeypatch):
    """torch.autograd.grad(..., create_graph=True) through the fused adapter gives the same
    first-order gradients as a plain backward; differentiating them again raises a clear
    error (the explicit backward has no derivative), instead of silently counting the
    adapter's second-order terms as zero. "cpp-ops": the cpp backend without its C++ chain."""
    import adaptir_kernels.module as module

    if backend == "cpp-ops":
        if "cpp" not in available_backends(DEVICE):
            pytest.skip(f"the C++ extension does not run on {DEVICE}")
        monkeypatch.setattr(module, "CPP_CHAIN", False)
        backend = "cpp"
    _, mod = make_pair(fused(backend), d_model=56, layout="nhwc", seed=5)
    mod.to(DEVICE)
    x = make_input("nhwc", 2, 5, 6, 56, seed=3).to(DEVICE).requires_grad_(True)
    target = torch.randn_like(x)
    params = [p for p in mod.parameters() if p.requires_grad]

    def loss():
        return ((mod(x) - target) ** 2).sum()

    plain = torch.autograd.grad(loss(), [x, *params])
    graphed = torch.autograd.grad(loss(), [x, *params], create_graph=True)
    for a, b in zip(graphed, plain):
        assert a.requires_grad
        assert torch.equal(a.detach(), b)
    penalty = graphed[0].pow(2).sum() + graphed[1].pow(2).sum()
    with pytest.raises(RuntimeError, match=r"not differentiable \(no double backward\)"):
        penalty.backward()


@pytest.mark.parametrize("backend", backend_params())
def test_parametrized_parameters_are_read_as_attributes(backend):
    """A parameter under torch.nn.utils.parametrize leaves its module's parameter dict
    (the attribute computes it): the fused module reads it as the reference does, before
    and after its first call, and the gradient reaches the parametrization's original."""
    import torch.nn.utils.parametrize as parametrize

    class Doubled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    ref, mod = make_pair(fused(backend), d_model=56, layout="nhwc", seed=9)
    mod.to(DEVICE)
    x = make_input("nhwc", 2, 5, 6, 56, seed=4)
    mod(x.to(DEVICE))  # the module's parameter slots are found here, before the change
    for m in (ref, mod):
        parametrize.register_parametrization(m.head, "weight", Doubled())
        parametrize.register_parametrization(m.tail, "weight", Doubled())
    out_r, g_r = run_fwd_bwd(ref, x, None)
    out_m, g_m = run_fwd_bwd(mod, x.to(DEVICE), None)
    assert_same_results(out_m, g_m, out_r, g_r)
    assert any("parametrizations.head.weight.original" in name or "head.parametrizations.weight.original" in name
               for name in g_m)


@pytest.mark.parametrize("backend", backend_params())
def test_torch_func_transforms_are_refused_clearly(backend):
    """torch.func.grad over the fused adapter is refused by autograd with its own message
    about functorch transforms, not a crash inside the module (a parameter wrapper has no
    storage to key the module's view cache on)."""
    from torch.func import functional_call, grad

    _, mod = make_pair(fused(backend), d_model=56, layout="nhwc", seed=2)
    mod.to(DEVICE)
    x = make_input("nhwc", 2, 5, 6, 56, seed=8).to(DEVICE)
    params = {k: v.detach() for k, v in mod.named_parameters()}
    buffers = {k: v.clone() for k, v in mod.named_buffers()}
    mod(x)  # the view cache holds the module's own parameters
    with pytest.raises(RuntimeError, match="functorch transforms"):
        grad(lambda p: functional_call(mod, {**p, **buffers}, (x,)).pow(2).sum())(params)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_activation_checkpointing(backend, reentrant):
    """Under torch.utils.checkpoint the output and every gradient match the reference's.
    The running statistics: a reentrant checkpoint runs the whole forward again, so the
    fused adapter, like nn.BatchNorm2d in the reference, updates them twice per step; the
    non-reentrant one (early stop, its default) stops recomputing once the adapter's saved
    tensors are back, before the fused adapter's update, so it updates them once, where
    the reference's BatchNorm, updating inside its own forward, is updated twice."""
    from torch.utils.checkpoint import checkpoint

    ref, mod = make_pair(fused(backend), d_model=56, layout="nhwc", seed=6)
    mod.to(DEVICE)
    x = make_input("nhwc", 2, 5, 6, 56, seed=12)
    xr = x.clone().requires_grad_(True)
    xm = x.to(DEVICE).requires_grad_(True)
    out_r = checkpoint(ref, xr, use_reentrant=reentrant)
    out_m = checkpoint(mod, xm, use_reentrant=reentrant)
    grad = torch.randn_like(out_r)
    out_r.backward(grad)
    out_m.backward(grad.to(DEVICE))
    assert_close_rel(out_m, out_r, 1e-5, "output")
    floor = 1e-2 * xr.grad.norm().item()
    assert_close_rel(xm.grad, xr.grad, 1e-4, "grad x", floor=floor)
    for (name, p_r), p_m in zip(ref.named_parameters(), mod.parameters()):
        assert_close_rel(p_m.grad, p_r.grad, 1e-4, f"grad {name}", floor=floor)
    assert int(ref.BN.num_batches_tracked) == 2
    assert int(mod.BN.num_batches_tracked) == (2 if reentrant else 1)


# C-wide tensors of at least 16 MiB (csrc/cpu/skinny_gemm.h: kStreamBytes): the C++
# products write out and grad_x with streaming stores there, and only there; the small
# shapes above never reach those paths. (N, H, W, C, preset, layout): the own FFT (sides
# up to 64 with factors 2, 3, 5) at both presets' widths, and ATen's FFT with a width that
# is not a multiple of 4 (streaming through the staging buffer instead of the registers).
_STREAMING_CASES = [
    (13, 48, 48, 180, "edt", "nhwc"),
    (7, 30, 36, 576, "ipt", "lnc"),
    (3, 77, 101, 181, "edt", "nhwc"),
]


@pytest.mark.parametrize("case", _STREAMING_CASES, ids=lambda c: "x".join(map(str, c[:4])) + "-" + c[5])
def test_cpp_parity_at_streaming_sizes(case):
    if "cpp" not in available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    N, H, W, C, preset, layout = case
    assert N * H * W * C * 4 >= 16 << 20
    ref, mod = make_pair(fused("cpp"), d_model=C, preset=preset, layout=layout, seed=C + N)
    # At these sizes (1e5 spectral bins and more) some bin always has |U| near 1e-4 of its
    # plane's RMS. With amp_fuse.bias != 0 the gate's output there stays finite while the
    # phase's gradient grows as 1 / |U|, and every float32 evaluation's gradients, the
    # reference's included, land 1e-4 to 5e-4 from float64 (measured over 12 draws at
    # 13x48x48x180). Zero, its initial value, keeps A' proportional to |U|, which cancels
    # that growth; every other parameter stays random, and the smaller shapes above
    # randomise it too.
    with torch.no_grad():
        for m in (ref, mod):
            m.amp_fuse.bias.zero_()
    ref64 = copy.deepcopy(ref).double()
    hw = (H, W) if layout == "lnc" else None
    x, _ = regular_input(ref, layout, N, H, W, C, seed=H + W)
    out_r, _ = run_fwd_bwd(ref, x, hw)
    out_64, g_64 = run_fwd_bwd(ref64, x.double(), hw)
    with _alloc.poisoned():
        out_m, g_m = run_fwd_bwd(mod, x, hw)
    assert_close_rel(out_m, out_r, 1e-5, "output")
    assert_close_rel(out_m, out_64, 1e-5, "output against float64")
    # Gradients against the float64 reference: on such draws the float32 one is itself up
    # to 1.4e-4 from it in its worst gradient, the C++ path within 6e-5 (12 draws).
    floor = 1e-2 * g_64["x"].norm().item()
    for name in g_64:
        assert_close_rel(g_m[name], g_64[name], 1e-4, f"grad {name} against float64", floor=floor)
    # The running statistics against a float64 reference: at about 30 000 values per
    # channel the float32 reference's own running_var is about 1e-6 off (the C++ one 3e-8).
    for (name, b64), (_, b_m) in zip(ref64.named_buffers(), mod.named_buffers()):
        assert_close_rel(b_m.double(), b64, 1e-6, f"buffer {name}")
    ref.eval()
    mod.eval()
    with torch.no_grad(), _alloc.poisoned():
        out_m = mod(x, hw=hw)
    assert_close_rel(out_m, ref(x, hw=hw), 1e-5, "eval output")


def test_cpp_module_is_thread_count_independent_at_streaming_size():
    # The whole adapter (the C++ chain), at a size with many row blocks per thread and
    # streamed outputs: 1 and 2 threads give bitwise the same output, gradients and buffers.
    if "cpp" not in available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    N, H, W, C, preset, layout = _STREAMING_CASES[0]
    _, mod = make_pair(fused("cpp"), d_model=C, preset=preset, layout=layout, seed=5)
    x = make_input(layout, N, H, W, C, seed=6)
    saved = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            m = copy.deepcopy(mod)
            out, grads = run_fwd_bwd(m, x)
            results.append((out, grads, [b.clone() for b in m.buffers()]))
    finally:
        torch.set_num_threads(saved)
    (o1, g1, b1), (o2, g2, b2) = results
    assert torch.equal(o1, o2)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), f"grad {name} differs between 1 and 2 threads"
    for a, b in zip(b1, b2):
        assert torch.equal(a, b)
