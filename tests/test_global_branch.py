"""global_branch: every backend against the composite forward and autograd through it."""

import pytest
import torch

from adaptir_kernels.ops import global_branch as op
from op_cases import OP_SHAPES, OpCase, backend_params, randn, run_autograd, run_case


def make_case(N, H, W, h=12, seed=0):
    inputs = [randn(N, h, H, W, seed=seed), 1 + randn(h, seed=seed + 1, std=0.3), randn(h, seed=seed + 2, std=0.3),
              1 + randn(h, seed=seed + 3, std=0.3), randn(h, seed=seed + 4, std=0.3)]
    return OpCase(
        forward_op=op.global_branch, backward_op=op.global_branch_backward, oracle=op.forward_torch,
        inputs=inputs, backward_inputs=lambda ins, outs: ins,
    )


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", OP_SHAPES + [(1, 1, 1), (2, 2, 2)], ids=str)
def test_parity(backend, shape):
    run_case(make_case(*shape), backend)


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
    g, gm = op.global_branch(u, *p, backend)
    gg, ggm = torch.ones_like(g), torch.ones_like(gm)
    grads = op.global_branch_backward(gg, ggm, u, *p, backend)
    ref = op.global_branch_backward(gg.cpu(), ggm.cpu(), u.cpu(), *[t.cpu() for t in p], "torch")
    for a, b in zip(grads, ref):
        assert not torch.isnan(a).any()
        assert torch.allclose(a.cpu(), b, atol=1e-5)


def test_opcheck():
    case = make_case(2, 3, 4)
    args = [t.float() for t in case.inputs]
    torch.library.opcheck(op.global_branch, (*args, "torch"))
    torch.library.opcheck(op.global_branch_backward, (torch.randn(2, 12, 3, 4), torch.randn(2, 12), *args, "torch"))
