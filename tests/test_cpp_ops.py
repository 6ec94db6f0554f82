"""C++-specific checks of the fused CPU kernels (torch.ops.adaptir_cpp.*).

The shared parity tests (tests/test_<op>.py, tests/test_module.py) already run every
operator against the eager oracle with backend "cpp"; this file adds what only the
C++ backend has: float64 gradcheck through the registered custom-op autograd, opcheck
of the raw C++ ops and their fake kernels, results independent of the thread count,
clear errors for bad inputs, NaN poisoning of C++-allocated outputs, and
torch.compile(fullgraph=True) of the fused module.
"""

from __future__ import annotations

import os

import pytest
import torch

from adaptir_kernels import _alloc
from adaptir_kernels.backends import cpp_available, resolve_backend
from adaptir_kernels.module import AdaptIR
from adaptir_kernels.ops import combine_out as co
from adaptir_kernels.ops import global_branch as gb
from adaptir_kernels.ops import local_branch as lb
from adaptir_kernels.ops import project_in as pi
from adaptir_kernels.ops import router as rt
from helpers import assert_close_rel, make_input, make_pair, randomize, run_fwd_bwd

pytestmark = pytest.mark.skipif(not cpp_available(), reason="C++ extension not built")

OPS = torch.ops.adaptir_cpp if cpp_available() else None
EPS = 1e-5


def _rand(*shape, seed, std=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * std).to(dtype)


def _x_shape(layout, N, H, W, C):
    return (N, H, W, C) if layout == "nhwc" else (H * W, N, C)


# ---- argument sets ------------------------------------------------------------------


def project_in_args(N=2, H=3, W=4, C=5, h=3, layout="nhwc", training=True, dtype=torch.float64, seed=0):
    x = _rand(*_x_shape(layout, N, H, W, C), seed=seed, dtype=dtype)
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    params = [_rand(h, C, seed=seed + 1, std=0.4, dtype=cd), _rand(h, seed=seed + 2, dtype=cd),
              1 + _rand(h, seed=seed + 3, std=0.3, dtype=cd), _rand(h, seed=seed + 4, dtype=cd),
              _rand(h, seed=seed + 5, std=0.2, dtype=cd), (0.5 + torch.rand(h, dtype=torch.float64)).to(cd)]
    return [x, *params], (training, EPS, layout, H, W)


def local_args(N=2, h=3, H=4, W=5, r=2, dtype=torch.float64, seed=0):
    return [_rand(N, h, H, W, seed=seed, dtype=dtype), _rand(h, r, seed=seed + 1, std=0.5, dtype=dtype),
            _rand(r, 9, seed=seed + 2, std=0.5, dtype=dtype), _rand(h, seed=seed + 3, std=0.3, dtype=dtype),
            _rand(h, seed=seed + 4, std=0.5, dtype=dtype), _rand(1, seed=seed + 5, std=0.5, dtype=dtype)]


def global_args(N=2, h=3, H=4, W=5, dtype=torch.float64, seed=0):
    return [_rand(N, h, H, W, seed=seed, dtype=dtype), 1 + _rand(h, seed=seed + 1, std=0.3, dtype=dtype),
            _rand(h, seed=seed + 2, std=0.3, dtype=dtype), 1 + _rand(h, seed=seed + 3, std=0.3, dtype=dtype),
            _rand(h, seed=seed + 4, std=0.3, dtype=dtype)]


def combine_args(N=2, h=3, H=4, W=5, C=6, dtype=torch.float64, seed=0):
    return [_rand(N, h, H, W, seed=seed, dtype=dtype), _rand(N, h, H, W, seed=seed + 1, dtype=dtype),
            torch.rand(N, H, W, dtype=torch.float64).to(dtype), torch.rand(N, h, dtype=torch.float64).to(dtype),
            _rand(N, h, seed=seed + 2, dtype=dtype), _rand(C, h, seed=seed + 3, std=0.3, dtype=dtype)]


def router_args(N=3, h=5, H=4, W=6, p=3, q=2, dtype=torch.float64, seed=0):
    shapes = [(N, h, H, W), (h,), (1,), (p, h), (p,), (h, p), (h,), (N, h), (q, h), (q,), (h, q), (h,)]
    return [_rand(*s, seed=seed + i, std=0.7, dtype=dtype) for i, s in enumerate(shapes)]


# ---- float64 gradcheck through the registered autograd of adaptir::<op> -------------


@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_project_in(layout, training):
    tensors, consts = project_in_args(layout=layout, training=training)
    x, w, b, bw, bb, rm, rv = tensors
    leaves = [t.clone().requires_grad_() for t in (x, w, b, bw, bb)]

    def fn(x, w, b, bw, bb):
        return pi.project_in(x, w, b, bw, bb, rm, rv, *consts, "cpp")[0]

    assert torch.autograd.gradcheck(fn, leaves)


def test_gradcheck_local_branch():
    leaves = [t.clone().requires_grad_() for t in local_args()]
    assert torch.autograd.gradcheck(lambda *a: lb.local_branch(*a, "cpp"), leaves)


def test_gradcheck_global_branch():
    leaves = [t.clone().requires_grad_() for t in global_args()]
    # g and gmean (the packed signs are not differentiable); the backward reads the signs
    assert torch.autograd.gradcheck(lambda *a: gb.global_branch(*a, "cpp")[:2], leaves)


def test_gradcheck_router():
    leaves = [t.clone().requires_grad_() for t in router_args()]
    assert torch.autograd.gradcheck(lambda *a: rt.router(*a, "cpp"), leaves)


def test_router_cpp_is_its_own_kernel():
    assert rt.TABLE.get("cpp")[0] is OPS.router and rt.TABLE.get("cpp")[1] is OPS.router_backward


@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
def test_gradcheck_combine_out(layout):
    leaves = [t.clone().requires_grad_() for t in combine_args()]
    assert torch.autograd.gradcheck(lambda *a: co.combine_out(*a, layout, torch.float64, "cpp"), leaves)


def test_gradcheck_module_float64():
    ref, mod = make_pair(lambda *a, **k: AdaptIR(*a, backend="cpp", **k), d_model=56, seed=3)
    mod.double()
    x = make_input("nhwc", 2, 3, 4, 56, dtype=torch.float64).requires_grad_()
    params = [p for p in mod.parameters()]
    assert torch.autograd.gradcheck(lambda x, *p: mod(x), (x, *params), fast_mode=True)


# ---- opcheck of the raw C++ ops (schemas, fake kernels, aot dispatch) ----------------


def _f32(ts):
    return [t.float() for t in ts]


def test_opcheck_project_in():
    for layout, training in (("nhwc", True), ("lnc", False)):
        tensors, consts = project_in_args(layout=layout, training=training, dtype=torch.float32)
        torch.library.opcheck(OPS.project_in.default, (*tensors, *consts))
        u, xhat, mean, var = OPS.project_in(*tensors, *consts)
        x, w, b, bw = tensors[:4]
        torch.library.opcheck(OPS.project_in_backward.default, (torch.randn_like(u), x, xhat, w, bw, var, *consts))


def test_opcheck_local_branch():
    args = _f32(local_args())
    torch.library.opcheck(OPS.local_branch.default, tuple(args))
    l, sg = OPS.local_branch(*args)
    torch.library.opcheck(OPS.local_branch_backward.default, (torch.randn_like(l), torch.randn_like(sg), *args))


def test_opcheck_router():
    args = _f32(router_args())
    torch.library.opcheck(OPS.router.default, tuple(args))
    cs, cg = OPS.router(*args)
    torch.library.opcheck(OPS.router_backward.default, (torch.randn_like(cs), torch.randn_like(cg), *args))


def test_opcheck_global_branch():
    args = _f32(global_args())
    torch.library.opcheck(OPS.global_branch.default, tuple(args))
    g, gm, sign = OPS.global_branch(*args)
    for s in (sign, gb.no_signs(g)):  # signs from the forward, or none (y recomputed)
        torch.library.opcheck(OPS.global_branch_backward.default,
                              (torch.randn_like(g), torch.randn_like(gm), args[0], g, s, *args[1:]))


@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
def test_opcheck_combine_out(layout):
    args = _f32(combine_args())
    for dt in (torch.float32, torch.bfloat16):
        torch.library.opcheck(OPS.combine_out.default, (*args, layout, dt))
    out = OPS.combine_out(*args, layout, torch.float32)
    torch.library.opcheck(OPS.combine_out_backward.default, (torch.randn_like(out), *args, layout))


# ---- thread-count independence -------------------------------------------------------


def _run_all_ops():
    """Forward and backward of every C++ operator on sizes with several work items
    (row blocks, row tiles and plane groups), float32."""
    outs = []
    # the last: blocks of their own for the h-wide passes (common.h, run_blocks)
    for layout, N, C in (("nhwc", 3, 256), ("lnc", 3, 256), ("lnc", 5, 1024)):
        tensors, consts = project_in_args(N=N, H=13, W=17, C=C, h=12, layout=layout, dtype=torch.float32, seed=1)
        u, xhat, mean, var = OPS.project_in(*tensors, *consts)
        x, w, b, bw = tensors[:4]
        outs += [u, xhat, mean, var]
        outs += list(OPS.project_in_backward(torch.randn_like(u), x, xhat, w, bw, var, *consts))
        cargs = _f32(combine_args(N=N, h=12, H=13, W=17, C=C, seed=2))
        out = OPS.combine_out(*cargs, layout, torch.float32)
        outs += [out, *OPS.combine_out_backward(torch.randn_like(out), *cargs, layout)]
    largs = _f32(local_args(N=2, h=5, H=70, W=90, r=3, seed=3))
    l, sg = OPS.local_branch(*largs)
    outs += [l, sg, *OPS.local_branch_backward(torch.randn_like(l), torch.randn_like(sg), *largs)]
    gargs = _f32(global_args(N=3, h=12, H=20, W=18, seed=4))
    g, gm, sign = OPS.global_branch(*gargs)
    gg, ggm = torch.randn_like(g), torch.randn_like(gm)
    outs += [g, gm, sign, *OPS.global_branch_backward(gg, ggm, gargs[0], g, sign, *gargs[1:])]
    outs += list(OPS.global_branch_backward(gg, ggm, gargs[0], g, gb.no_signs(g), *gargs[1:]))
    rargs = _f32(router_args(N=5, h=12, H=20, W=18, p=6, q=3, seed=5))
    cs, cg = OPS.router(*rargs)
    outs += [cs, cg, *OPS.router_backward(torch.randn_like(cs), torch.randn_like(cg), *rargs)]
    return outs


def test_thread_count_independent():
    saved = torch.get_num_threads()
    try:
        torch.manual_seed(0)
        torch.set_num_threads(1)
        one = _run_all_ops()
        torch.manual_seed(0)
        torch.set_num_threads(2)
        two = _run_all_ops()
    finally:
        torch.set_num_threads(saved)
    assert len(one) == len(two)
    for i, (a, b) in enumerate(zip(one, two)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"output {i}")


# ---- bad inputs ----------------------------------------------------------------------


def test_bad_inputs_project_in():
    tensors, consts = project_in_args(dtype=torch.float32)
    x, w, b, bw, bb, rm, rv = tensors
    training, eps, layout, H, W = consts
    with pytest.raises(RuntimeError, match="layout must be 'nhwc' or 'lnc', got 'nchw'"):
        OPS.project_in(*tensors, training, eps, "nchw", H, W)
    with pytest.raises(RuntimeError, match=r"does not match H=5, W=4"):
        OPS.project_in(*tensors, training, eps, layout, 5, W)
    with pytest.raises(RuntimeError, match=r"layout 'lnc' expects x of shape \(L, N, C\)"):
        OPS.project_in(*tensors, training, eps, "lnc", H, W)
    with pytest.raises(RuntimeError, match="x must be float32, float64, float16 or bfloat16, got Int"):
        OPS.project_in(x.to(torch.int32), *tensors[1:], *consts)
    with pytest.raises(RuntimeError, match="weight must have the compute dtype Float, got Double"):
        OPS.project_in(x, w.double(), *tensors[2:], *consts)
    with pytest.raises(RuntimeError, match=r"weight must have shape \(h, C\) with C=5"):
        OPS.project_in(x, w[:, :4], *tensors[2:], *consts)
    with pytest.raises(RuntimeError, match=r"running_var must have shape \(3\)"):
        OPS.project_in(x, w, b, bw, bb, rm, rv[:2], *consts)
    u, xhat, mean, var = OPS.project_in(*tensors, *consts)
    with pytest.raises(RuntimeError, match=r"grad_u must have shape \(N, h, H, W\)"):
        OPS.project_in_backward(u[:1], x, xhat, w, bw, var, *consts)


def test_bad_inputs_local_branch():
    u, A, B, cb, siw, sib = _f32(local_args())
    with pytest.raises(RuntimeError, match=r"u must have shape \(N, h, H, W\)"):
        OPS.local_branch(u[0], A, B, cb, siw, sib)
    with pytest.raises(RuntimeError, match=r"conv_B must have shape \(r, 9\)"):
        OPS.local_branch(u, A, B[:, :8], cb, siw, sib)
    with pytest.raises(RuntimeError, match="conv_bias has dtype Double but u has dtype Float"):
        OPS.local_branch(u, A, B, cb.double(), siw, sib)
    with pytest.raises(RuntimeError, match="u must be float32 or float64, got BFloat16"):
        OPS.local_branch(u.bfloat16(), A, B, cb, siw, sib)
    with pytest.raises(RuntimeError, match=r"grad_sg must have shape \(N, H, W\)"):
        OPS.local_branch_backward(u, u, u, A, B, cb, siw, sib)


def test_bad_inputs_global_branch():
    u, *p = _f32(global_args())
    with pytest.raises(RuntimeError, match="pha_w must have 3 elements"):
        OPS.global_branch(u, p[0], p[1], p[2][:2], p[3])
    g, gm, sign = OPS.global_branch(u, *p)
    with pytest.raises(RuntimeError, match=r"grad_gmean must have shape \(N, h\)"):
        OPS.global_branch_backward(u, u, u, g, sign, *p)
    with pytest.raises(RuntimeError, match="sign must be uint8"):
        OPS.global_branch_backward(g, gm, u, g, sign.float(), *p)
    with pytest.raises(RuntimeError, match=r"sign must have shape \(N, h, ceil\(H\*W/8\)\)"):
        OPS.global_branch_backward(g, gm, u, g, sign[:, :, :-1], *p)
    with pytest.raises(RuntimeError, match="g must have u's shape"):
        OPS.global_branch_backward(g, gm, u, g[:, :, :-1], sign, *p)


def test_bad_inputs_router():
    args = _f32(router_args())
    with pytest.raises(RuntimeError, match=r"u must have shape \(N, h, H, W\)"):
        OPS.router(args[0][0], *args[1:])
    bad = list(args)
    bad[5] = bad[5][:, :2]
    with pytest.raises(RuntimeError, match=r"proj2_w must have shape \(5, 3\)"):
        OPS.router(*bad)
    bad = list(args)
    bad[7] = bad[7].double()
    with pytest.raises(RuntimeError, match="gmean has dtype Double but u has dtype Float"):
        OPS.router(*bad)
    with pytest.raises(RuntimeError, match=r"grad_cs must have shape \(3, 5\)"):
        OPS.router_backward(args[7][:2], args[7], *args)


def test_bad_inputs_combine_out():
    args = _f32(combine_args())
    l, g, sg, cg, cs, tw = args
    with pytest.raises(RuntimeError, match="layout must be 'nhwc' or 'lnc', got 'nlc'"):
        OPS.combine_out(*args, "nlc", torch.float32)
    with pytest.raises(RuntimeError, match="out_dtype must be float32, float64, float16 or bfloat16, got Int"):
        OPS.combine_out(*args, "nhwc", torch.int32)
    with pytest.raises(RuntimeError, match=r"tail_w must have shape \(C, h\) with h=3"):
        OPS.combine_out(l, g, sg, cg, cs, tw[:, :2], "nhwc", torch.float32)
    with pytest.raises(RuntimeError, match=r"sg must have shape \(N, H, W\)"):
        OPS.combine_out(l, g, sg[0], cg, cs, tw, "nhwc", torch.float32)
    out = OPS.combine_out(*args, "nhwc", torch.float32)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \[20, 2, 6\] for layout 'lnc'"):
        OPS.combine_out_backward(out, *args, "lnc")


def test_cpu_only():
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        resolve_backend("cpp", "cuda")


# ---- poisoning of C++-allocated outputs ----------------------------------------------


def test_poison_flag_reaches_cpp(monkeypatch):
    calls = []
    real = OPS.set_poison

    class Spy:
        def __call__(self, on):
            calls.append(on)
            real(on)

    monkeypatch.setattr(torch.ops.adaptir_cpp, "set_poison", Spy(), raising=False)
    with _alloc.poisoned():
        with _alloc.poisoned(False):
            pass
    assert calls == [True, False, True, False]


def test_poisoned_outputs_are_fully_written():
    # Every output of every op is NaN-filled before the kernel runs; none may survive.
    with _alloc.poisoned():
        outs = _run_all_ops()
    for i, t in enumerate(outs):
        assert not torch.isnan(t).any(), f"output {i} has unwritten (NaN) elements"


# ---- the module: auto picks cpp; torch.compile ----------------------------------------


def test_auto_picks_cpp(monkeypatch):
    monkeypatch.delenv("ADAPTIR_BACKEND", raising=False)
    assert resolve_backend("auto", "cpu") == "cpp"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
def test_torch_compile_fullgraph_inductor(layout):
    torch._dynamo.reset()
    ref, mod = make_pair(lambda *a, **k: AdaptIR(*a, backend="cpp", **k), layout=layout, seed=21)
    compiled = torch.compile(mod, fullgraph=True)
    x = make_input(layout, 2, 4, 6, 56, seed=22)
    hw = (4, 6) if layout == "lnc" else None
    out_c, g_c = run_fwd_bwd(compiled, x, hw)
    out_r, g_r = run_fwd_bwd(ref, x, hw)
    assert_close_rel(out_c, out_r, 1e-5, "compiled output")
    floor = 1e-2 * g_r["x"].norm().item()
    for name in g_r:
        key = name if name in g_c else "_orig_mod." + name
        assert_close_rel(g_c[key], g_r[name], 1e-4, f"compiled grad {name}", floor=floor)
    for (name, b_r), (_, b_c) in zip(ref.named_buffers(), mod.named_buffers()):
        assert_close_rel(b_c.double(), b_r.double(), 1e-6, f"buffer {name}")


def test_large_pha_weight_takes_exact_path():
    # |pha_w * angle + pha_b| beyond the vector sin/cos range falls back to libm.
    u, aw, ab, pw, pb = _f32(global_args(N=1, h=3, H=5, W=6, seed=7))
    pw = torch.tensor([1.0, 5000.0, -9000.0])
    g, gm, _ = OPS.global_branch(u, aw, ab, pw, pb)
    g_ref, gm_ref, _ = gb.forward_torch(u.double(), aw.double(), ab.double(), pw.double(), pb.double())
    assert torch.isfinite(g).all()
    # float32 angles times |pha_w| ~ 1e4 are only good to ~1e-3; the check is that the
    # path is taken and correct to that conditioning.
    assert_close_rel(g, g_ref, 2e-2, "g")


def test_saved_tensors_budget_cpp():
    # Saved for backward beyond x (parameters excluded): xhat, g and the packed signs of
    # y, 2 + 1/32 hidden-width tensors, plus per-sample vectors (issue limit: 3).
    from test_module import _saved_hidden_units

    mod = randomize(AdaptIR(180, backend="cpp"))
    units = _saved_hidden_units(mod, torch.randn(2, 16, 16, 180), mod.hidden)
    assert 2.03 <= units <= 2.1, units


def test_large_outputs_are_ordinary_resizable_tensors():
    # Large outputs come from the extension's output cache; they must still behave like
    # any CPU tensor (resizable storage, shareable, freed buffers reused).
    u, *p = _f32(global_args(N=4, h=8, H=128, W=128, seed=9))  # 2 MB outputs
    g, gm, _ = OPS.global_branch(u, *p)
    assert g.untyped_storage().resizable() and g.is_contiguous()
    ptr = g.data_ptr()
    del g
    g2, _, _ = OPS.global_branch(u, *p)
    if os.environ.get("ADAPTIR_OUTPUT_CACHE_MB", "256").strip() != "0":
        assert g2.data_ptr() == ptr  # the freed buffer was reused
    g2.resize_(g2.numel() * 2)
    g2.fill_(1.0)
    assert g2.sum().item() == g2.numel()


def test_hidden_width_outputs_of_ipt_size_come_from_the_cache():
    # ipt-train's hidden-width tensors are 384 KiB; glibc's malloc returned such freed
    # blocks to the OS, and every training step page-faulted them in again.
    if os.environ.get("ADAPTIR_OUTPUT_CACHE_MB", "256").strip() == "0":
        pytest.skip("ADAPTIR_OUTPUT_CACHE_MB=0 turns the output cache off")
    u, *p = _f32(global_args(N=2, h=3, H=64, W=64, seed=10))  # 96 KiB outputs
    g, _, _ = OPS.global_branch(u, *p)
    ptr = g.data_ptr()
    del g
    g2, _, _ = OPS.global_branch(u, *p)
    assert g2.data_ptr() == ptr
