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
