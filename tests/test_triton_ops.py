"""Triton-specific checks the shared per-operator tests do not make: the atan2 built from
basic operations, mixed-precision inputs, determinism of the fixed-order reductions, the
spectral gate's "triton" table entry, multi-block paths, and (on CUDA) offsets past 2**31.

Runs on CUDA when a GPU is present (ADAPTIR_TEST_DEVICE=cuda or any visible GPU), else on
CPU tensors in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from adaptir_kernels import _alloc
from adaptir_kernels.backends import available_backends
from helpers import assert_close_rel, make_input, make_pair, run_fwd_bwd

DEVICE = torch.device(os.environ.get("ADAPTIR_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
pytestmark = pytest.mark.skipif("triton" not in available_backends(DEVICE),
                                reason=f"backend 'triton' does not run on {DEVICE} here")

if "triton" in available_backends(DEVICE):
    import triton
    import triton.language as tl

    from adaptir_kernels.triton import _common as cm

    @triton.jit
    def _atan2_kernel(y_ptr, x_ptr, o_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        tl.store(o_ptr + i, cm.atan2(tl.load(y_ptr + i, mask=m, other=1.0), tl.load(x_ptr + i, mask=m, other=1.0)),
                 mask=m)


def _atan2(y, x):
    y, x = y.to(DEVICE).contiguous(), x.to(DEVICE).contiguous()
    out = torch.empty_like(y)
    block = 1 << 14
    _atan2_kernel[(triton.cdiv(y.numel(), block),)](y, x, out, y.numel(), BLOCK=block)
    return out.cpu()


def test_atan2_accuracy():
    gen = torch.Generator().manual_seed(0)
    n = 1 << 18 if DEVICE.type == "cpu" else 1 << 22
    ang = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    rad = torch.exp(torch.randn(n, generator=gen, dtype=torch.float64) * 3)
    y, x = (rad * torch.sin(ang)).float(), (rad * torch.cos(ang)).float()
    # Points on and next to the octant boundaries, where the argument reduction switches.
    t = torch.linspace(-4, 4, 4097, dtype=torch.float64)
    y = torch.cat([y, torch.sin(t * math.pi / 4).float(), torch.full_like(t, 0.5).float()])
    below_one = torch.nextafter(torch.ones_like(t), torch.zeros_like(t))
    x = torch.cat([x, torch.cos(t * math.pi / 4).float(), below_one.float()])
    out = _atan2(y, x).double()
    truth = torch.atan2(y.double(), x.double())
    err = (out - truth).abs()
    assert err.max().item() < 1.8e-7, err.max().item()  # about 0.7 ulp of float32 near pi
    small = truth.abs() < 1
    assert err[small].max().item() < 1e-7, err[small].max().item()


def test_atan2_signed_zeros_match_torch():
    vals = [0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 1e-30, -1e-30, 1e30, -1e30]
    y = torch.tensor([a for a in vals for _ in vals])
    x = torch.tensor([b for _ in vals for b in vals])
    out = _atan2(y, x)
    ref = torch.atan2(y, x)
    assert torch.equal(torch.signbit(out), torch.signbit(ref))
    assert (out - ref).abs().max().item() < 2.5e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
def test_mixed_precision_io(dtype, layout):
    """x and out in half precision, everything inside in float32: output and grad x come
    back in x's dtype, within 1e-2 of the float32 reference fed the same rounded x."""
    if dtype == torch.bfloat16 and DEVICE.type == "cpu":
        pytest.skip("Triton's interpreter computes bfloat16 incorrectly")
    from adaptir_kernels.module import AdaptIR

    ref, mod = make_pair(lambda *a, **k: AdaptIR(*a, backend="triton", **k), d_model=180, layout=layout, seed=3)
    mod.to(DEVICE)
    N, H, W = 2, 5, 6
    x = make_input(layout, N, H, W, 180, seed=4).to(dtype)
    hw = (H, W) if layout == "lnc" else None
    out_r, g_r = run_fwd_bwd(ref, x.float(), hw)
    with _alloc.poisoned():
        out_m, g_m = run_fwd_bwd(mod, x.to(DEVICE), hw)
    assert out_m.dtype == dtype and g_m["x"].dtype == dtype
    assert_close_rel(out_m.float(), out_r, 1e-2, "output")
    floor = 1e-2 * g_r["x"].norm().item()
    for name in g_r:
        assert_close_rel(g_m[name].float(), g_r[name], 1e-2, f"grad {name}", floor=floor)


def test_backward_is_deterministic():
    """No float atomics: two backward passes give bitwise identical gradients."""
    from adaptir_kernels.module import AdaptIR

    _, mod = make_pair(lambda *a, **k: AdaptIR(*a, backend="triton", **k), d_model=56, seed=5)
    mod.to(DEVICE)
    x = make_input("nhwc", 3, 7, 9, 56, seed=6).to(DEVICE)
    _, g1 = run_fwd_bwd(mod, x)
    _, g2 = run_fwd_bwd(mod, x)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


def test_spectral_gate_triton_entry():
    import adaptir_kernels.triton.spectral_gate  # noqa: F401 - adds the "triton" entry to the table
    from adaptir_kernels.ops import spectral_gate as sg

    gen = torch.Generator().manual_seed(7)
    U = torch.randn(2, 3, 5, 4, 2, generator=gen)
    U.view(-1, 2)[::4] = 0.0
    U.view(-1)[1::9] = -0.0
    U.view(-1)[0::11] = -0.0
    params = [torch.randn(3, 1, 1, 1, generator=gen) * 0.5 for _ in range(4)]
    grad_G = torch.randn(U.shape, generator=gen)
    dev = [t.to(DEVICE) for t in (U, *params, grad_G)]
    with _alloc.poisoned():
        G = sg.spectral_gate(*dev[:5], backend="triton")
        grads = sg.spectral_gate_backward(dev[5], *dev[:5], backend="triton")
    G_r = sg.spectral_gate(U, *params, backend="torch")
    grads_r = sg.spectral_gate_backward(grad_G, U, *params, backend="torch")
    assert_close_rel(G, G_r, 1e-5, "G")
    for name, g, r in zip(("U", "amp_w", "amp_b", "pha_w", "pha_b"), grads, grads_r):
        assert g.shape == r.shape, name
        assert_close_rel(g, r, 1e-4, f"grad {name}")


def _hermitian_part(Y: torch.Tensor, W: int) -> torch.Tensor:
    """Y (..., H, Wf, 2) with its columns kw = 0 and (W even) W / 2 replaced by their
    Hermitian part along H, (Y[kh] + conj(Y[-kh mod H])) / 2, written out index by index."""
    out = Y.clone()
    H, Wf = Y.shape[-3], Y.shape[-2]
    for kw in sorted({0, Wf - 1} if W % 2 == 0 else {0}):
        for kh in range(H):
            km = (H - kh) % H
            out[..., kh, kw, 0] = (Y[..., kh, kw, 0] + Y[..., km, kw, 0]) / 2
            out[..., kh, kw, 1] = (Y[..., kh, kw, 1] - Y[..., km, kw, 1]) / 2
    return out


@pytest.mark.parametrize("H,W", [(5, 7), (6, 8), (1, 4), (4, 1), (7, 2), (1, 1), (8, 9)])
def test_gate_kernels_store_hermitian_columns(H, W):
    """hermitian_width / hermitian: the gate kernels store the half spectrum's columns kw = 0
    and W / 2 as their Hermitian part along H (what the inverse transform then needs on
    cuFFT), every other value and every parameter gradient exactly as without; and
    SPEC 4.1's inverse of the result is unchanged."""
    from adaptir_kernels.spectrum import irfft2
    from adaptir_kernels.triton.spectral_gate import gate_backward_into, gate_forward

    gen = torch.Generator().manual_seed(H * 31 + W)
    Wf = W // 2 + 1
    U = torch.randn(2, 3, H, Wf, 2, generator=gen)
    U.view(-1, 2)[::5] = 0.0
    params = [torch.randn(3, generator=gen) * 0.5 for _ in range(4)]
    grad_G = torch.randn(U.shape, generator=gen)
    dev = [t.to(DEVICE) for t in (U, *params, grad_G)]
    with _alloc.poisoned():
        G = gate_forward(*dev[:5]).cpu()
        G_h = gate_forward(*dev[:5], hermitian_width=W).cpu()
        plain = [t.cpu() for t in gate_backward_into(dev[5], *dev[:5], weights_of_width=W)]
        herm = [t.cpu() for t in gate_backward_into(dev[5], *dev[:5], weights_of_width=W, hermitian=True)]
    torch.testing.assert_close(G_h, _hermitian_part(G, W), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(herm[0], _hermitian_part(plain[0], W), rtol=1e-6, atol=1e-6)
    for a, b in zip(herm[1:], plain[1:]):
        assert torch.equal(a, b)
    assert not torch.equal(_hermitian_part(G, W), G)  # the test can fail
    as_complex = lambda t: torch.view_as_complex(t.double().contiguous())  # noqa: E731
    torch.testing.assert_close(torch.fft.irfft2(as_complex(G_h), s=(H, W), norm="ortho"),
                               irfft2(as_complex(G), H, W), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=f"not that of a plane {W + 2} wide"):
        gate_forward(*dev[:5], hermitian_width=W + 2)
    with pytest.raises(ValueError, match="hermitian needs weights_of_width"):
        gate_backward_into(dev[5], *dev[:5], hermitian=True)


@pytest.mark.parametrize("N,H,W,C,hidden", [(2, 9, 15, 180, 12), (1, 6, 11, 100, 40)])
def test_many_blocks(N, H, W, C, hidden):
    """Shapes spanning several row blocks, pixel blocks and column chunks per program."""
    from adaptir_kernels.module import AdaptIR

    ref, mod = make_pair(lambda *a, **k: AdaptIR(*a, backend="triton", **k), d_model=C, hidden=hidden,
                         layout="lnc", seed=8)
    mod.to(DEVICE)
    x = make_input("lnc", N, H, W, C, seed=9)
    out_r, g_r = run_fwd_bwd(ref, x, (H, W))
    with _alloc.poisoned():
        out_m, g_m = run_fwd_bwd(mod, x.to(DEVICE), (H, W))
    assert_close_rel(out_m, out_r, 1e-5, "output")
    floor = 1e-2 * g_r["x"].norm().item()
    for name in g_r:
        assert_close_rel(g_m[name], g_r[name], 1e-4, f"grad {name}", floor=floor)


def test_hidden_width_limit():
    with pytest.raises(ValueError, match="hidden width up to"):
        cm.hidden_block(cm.MAX_HIDDEN + 1)
    assert [cm.hidden_block(h) for h in (1, 16, 17, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]


def test_launchers_refuse_geometry_that_does_not_fit():
    """The kernels trust the sizes they are given: every launcher checks shapes (and
    devices) first, so a mismatch raises instead of reading past a buffer."""
    from adaptir_kernels.triton import combine_out, global_branch, local_branch, project_in, router

    dev = DEVICE
    N, h, H, W, C, r, p, q = 1, 4, 3, 3, 8, 2, 2, 1
    t = lambda *shape: torch.randn(*shape, device=dev)  # noqa: E731
    u = t(N, h, H, W)
    hv = [t(h) for _ in range(4)]
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, 3, C\) in layout nhwc, got \(1, 2, 2, 8\)"):
        project_in.forward(t(1, 2, 2, C), t(h, C), *hv, t(h), False, 1e-5, "nhwc", H, W)
    with pytest.raises(ValueError, match=r"x must have shape \(9, N, C\) in layout lnc"):
        project_in.forward(t(8, 1, C), t(h, C), *hv, t(h), False, 1e-5, "lnc", H, W)
    with pytest.raises(ValueError, match=r"weight must have shape \(\*, 8\), got \(4, 6\)"):
        project_in.forward(t(N, H, W, C), t(h, 6), *hv, t(h), False, 1e-5, "nhwc", H, W)
    with pytest.raises(ValueError, match="running_var must have 4 element"):
        project_in.forward(t(N, H, W, C), t(h, C), *hv, t(h + 1), True, 1e-5, "nhwc", H, W)
    with pytest.raises(ValueError, match=r"grad_u must have shape \(1, 4, 3, 3\)"):
        project_in.backward(t(N, h, H, W + 1), t(N, H, W, C), u, t(h, C), t(h), t(h), True, 1e-5, "nhwc", H, W)
    with pytest.raises(ValueError, match=r"conv_B must have shape \(2, 9\)"):
        local_branch.forward(u, t(h, r), t(r + 1, 9), t(h), t(h), t(1))
    with pytest.raises(ValueError, match=r"grad_sg must have shape \(1, 3, 3\)"):
        local_branch.backward(u, t(N, 1, H, W), u, t(h, r), t(r, 9), t(h), t(h), t(1))
    with pytest.raises(ValueError, match="pha_b must have 4 element"):
        global_branch.forward(u, t(h), t(h), t(h), t(h - 1))
    with pytest.raises(ValueError, match=r"u must have shape \(N, h, H, W\)"):
        global_branch.forward(t(h, H, W), *hv)
    rp = [t(h), t(1), t(p, h), t(p), t(h, p), t(h), t(N, h), t(q, h), t(q), t(h, q), t(h)]
    bad = list(rp)
    bad[4] = t(h, p + 1)
    with pytest.raises(ValueError, match=r"proj2_w must have shape \(4, 2\)"):
        router.forward(u, *bad)
    with pytest.raises(ValueError, match=r"grad_cg must have shape \(1, 4\)"):
        router.backward(t(N, h), t(N, h + 1), u, *rp)
    co = [u, u.abs(), t(N, H, W), t(N, h), t(N, h), t(C, h)]
    with pytest.raises(ValueError, match=r"sg must have shape \(1, 3, 3\)"):
        combine_out.forward(*co[:2], t(N, H * W), *co[3:], "nhwc", torch.float32)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(9, 1, 8\)"):
        combine_out.backward(t(N, H, W, C), *co, "lnc")


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU with about 20 GB free")
def test_offsets_past_int32():
    """Backbone tensors of more than 2**31 elements: the row and column offsets in the
    C-wide kernels must be 64-bit. Checks the last rows of project_in and combine_out
    (forward and backward) against torch on the same rows."""
    from adaptir_kernels.triton import combine_out as tco, project_in as tpi

    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("not enough free GPU memory")
    C, h, N, H, W = 576, 24, 1, 2048, 1900  # N*H*W*C = 2.24e9 > 2**31
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((N, H, W, C), device="cuda", dtype=torch.bfloat16, generator=gen)
    w = torch.randn((h, C), device="cuda", generator=gen) * 0.05
    b, bw, bb = (torch.randn(h, device="cuda", generator=gen) for _ in range(3))
    rm, rv = torch.zeros(h, device="cuda"), torch.ones(h, device="cuda")
    u, xhat, mean, var = tpi.forward(x, w, b, bw, bb, rm, rv, False, 1e-5, "nhwc", H, W)
    tail = slice(H * W - 64, H * W)
    x_last = x.view(-1, C)[tail].float()
    z = x_last @ w.t() + b
    assert_close_rel(xhat.view(h, -1)[:, tail].t(), (z - rm) / torch.sqrt(rv + 1e-5), 1e-5, "xhat tail")
    del u, mean
    gx, gw, gb, gbw, gbb = tpi.backward(xhat, x, xhat, w, bw, var, False, 1e-5, "nhwc", H, W)
    gz = (xhat.view(h, -1)[:, tail].t() * (bw * torch.rsqrt(var + 1e-5)))
    assert_close_rel(gx.view(-1, C)[tail].float(), gz @ w, 1e-2, "grad_x tail")
    del gx, gw, gb, gbw, gbb
    l, g = xhat, xhat.abs()
    sg = torch.rand((N, H, W), device="cuda", generator=gen)
    cg, cs = torch.rand((N, h), device="cuda", generator=gen), torch.randn((N, h), device="cuda", generator=gen)
    tw = torch.randn((C, h), device="cuda", generator=gen) * 0.1
    out = tco.forward(l, g, sg, cg, cs, tw, "nhwc", torch.bfloat16)
    v = cs[0] * (cg[0] * l.view(h, -1)[:, tail].t() + sg.view(-1)[tail, None] * g.view(h, -1)[:, tail].t())
    assert_close_rel(out.view(-1, C)[tail].float(), v @ tw.t(), 1e-2, "out tail")
    grads = tco.backward(out, l, g, sg, cg, cs, tw, "nhwc")
    gv = out.view(-1, C)[tail].float() @ tw
    assert_close_rel(grads[0].view(h, -1)[:, tail].t(), gv * cs[0] * cg[0], 1e-5, "grad_l tail")


def test_torch_compile_fullgraph():
    """The Triton-backed custom ops are opaque to torch.compile: the fused module traces
    with fullgraph=True, forward and backward, and matches the reference."""
    from adaptir_kernels.module import AdaptIR
    from adaptir_kernels.reference import AdaptIR as Reference
    from helpers import randomize

    torch._dynamo.reset()
    mod = randomize(AdaptIR(56, backend="triton"), seed=17).to(DEVICE)
    ref = randomize(Reference(56), seed=17)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    x = make_input("nhwc", 2, 4, 5, 56)
    out_c, g_c = run_fwd_bwd(compiled, x.to(DEVICE))
    out_r, g_r = run_fwd_bwd(ref, x)
    assert_close_rel(out_c, out_r, 1e-5, "compiled output")
    for name in g_r:
        key = name if name in g_c else "_orig_mod." + name
        assert_close_rel(g_c[key], g_r[name], 1e-4, f"compiled grad {name}", floor=1e-2 * g_r["x"].norm().item())
