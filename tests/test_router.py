"""router: shared by every backend; explicit backward against autograd through the forward."""

import pytest
import torch

from adaptir_kernels.ops import router as op
from op_cases import OP_SHAPES, OpCase, backend_params, randn, run_autograd, run_case


def make_case(N, H, W, h=12, p=6, q=3, seed=0):
    shapes = [(N, h, H, W), (h,), (1,), (p, h), (p,), (h, p), (h,), (N, h), (q, h), (q,), (h, q), (h,)]
    inputs = [randn(*s, seed=seed + i, std=0.5) for i, s in enumerate(shapes)]
    return OpCase(
        forward_op=op.router, backward_op=op.router_backward, oracle=op.forward_torch,
        inputs=inputs, backward_inputs=lambda ins, outs: ins,
        # backward returns (grad_u, grad_gmean, 6 params, 4 params); reorder to the inputs'
        grad_order=lambda g: (g[0], *g[2:8], g[1], *g[8:]),
        zero_grads=(2,),  # compress_b
    )


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", OP_SHAPES, ids=str)
def test_parity(backend, shape):
    run_case(make_case(*shape), backend)


@pytest.mark.parametrize("backend", backend_params())
def test_registered_autograd(backend):
    run_autograd(make_case(2, 4, 5, seed=20), backend)


def test_opcheck():
    case = make_case(2, 3, 4)
    args = [t.float() for t in case.inputs]
    torch.library.opcheck(op.router, (*args, "torch"))
    torch.library.opcheck(op.router_backward, (torch.randn(2, 12), torch.randn(2, 12), *args, "torch"))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("widths", [(16, 8, 4), (24, 12, 2), (40, 20, 13), (64, 32, 32), (20, 40, 5)], ids=str)
def test_parity_at_block_widths(backend, widths):
    """Hidden widths at and between the padded blocks (16, 32, 64), MLP widths up to the
    Triton kernels' 32 and past it (p = 40: the composite runs), and more pixels than one
    tile holds (13 x 11 = 143)."""
    h, p, q = widths
    run_case(make_case(2, 13, 11, h=h, p=p, q=q, seed=3), backend)


@pytest.mark.parametrize("backend", backend_params())
def test_parity_single_pixel(backend):
    run_case(make_case(1, 1, 1, seed=4), backend)


@pytest.mark.parametrize("N,H,W,h", [(1, 15, 20, 12), (2, 13, 23, 12), (1, 9, 17, 24), (3, 7, 11, 40)], ids=str)
def test_triton_split_samples(monkeypatch, N, H, W, h):
    """Samples split into pixel chunks (what a whole image at N = 1 gets on a GPU), forced
    here on small planes: chunks of whole tiles, the last one partial, 1-3 samples."""
    from op_cases import DEVICE, backends

    if "triton" not in backends():
        pytest.skip("backend 'triton' does not run here")
    from adaptir_kernels.triton import _common as cm
    from adaptir_kernels.triton import router as tr

    monkeypatch.setattr(tr, "SPLIT_MIN_ITERS", 0)
    monkeypatch.setattr(tr, "CHUNK_ITERS", 1)
    BP = cm.ROUTER_CONFIGS[cm.hidden_block(h)]["BP"]
    S, CH = cm.chunks(N, H * W, BP, DEVICE, tr.SPLIT_MIN_ITERS, tr.CHUNK_ITERS)
    assert S > 1 and CH % BP == 0 and (S - 1) * CH < H * W <= S * CH  # the test runs the split path
    seen = []
    for name in ("_router_part_kernel", "_router_gu_kernel"):
        kernel = getattr(tr, name)
        monkeypatch.setattr(tr, name, _Recorded(kernel, name, seen))
    run_case(make_case(N, H, W, h=h, p=max(2, h // 2), q=3, seed=N + H), "triton")
    assert "_router_part_kernel" in seen and "_router_gu_kernel" in seen


class _Recorded:
    """A Triton kernel whose launches are noted by name."""

    def __init__(self, kernel, name, seen):
        self.kernel, self.name, self.seen = kernel, name, seen

    def __getitem__(self, grid):
        self.seen.append(self.name)
        return self.kernel[grid]


@pytest.mark.parametrize("backend", [b for b in backend_params() if b.id == "cpp"])
def test_softmax_over_a_wide_score_range(backend):
    """Scores spanning about 300 (the C++ float32 softmax's exp is a polynomial that
    clamps its argument at -87: those weights are below 2e-38 either way), with last
    8-lane chunks of 7 and 4 positions: outputs and gradients as float64's. (The torch
    backend's float32 sums miss the 1e-4 gradient tolerance at this spread: 3e-4 on
    compress_w; the C++ kernels sum over positions in double.)"""
    for N, H, W in [(2, 13, 19), (1, 3, 4)]:
        case = make_case(N, H, W, seed=40)
        case.inputs[0].mul_(60.0)  # scores = compress_w . u: spread by u's scale
        scores = torch.einsum("nchw,c->nhw", case.inputs[0], case.inputs[1])
        assert (scores.amax((1, 2)) - scores.amin((1, 2))).min() > 100  # past the clamp
        run_case(case, backend)


@pytest.mark.parametrize("backend", [b for b in backend_params() if b.id in ("cpp", "torch")])
def test_nan_reaches_the_outputs(backend):
    case = make_case(2, 5, 6, seed=41)
    args = [t.float().clone() for t in case.inputs]
    args[0][1, 3, 2, 4] = float("nan")
    cs, cg = op.router(*args, backend)
    assert cs[1].isnan().all() and not cs[0].isnan().any() and not cg.isnan().any()
