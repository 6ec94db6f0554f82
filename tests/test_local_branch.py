"""local_branch: every backend against the composite forward and autograd through it."""

import pytest
import torch

from adaptir_kernels.ops import local_branch as op
from op_cases import OP_SHAPES, OpCase, backend_params, randn, run_autograd, run_case


def make_case(N, H, W, h=12, r=6, seed=0):
    inputs = [randn(N, h, H, W, seed=seed), randn(h, r, seed=seed + 1, std=0.4), randn(r, 9, seed=seed + 2, std=0.4),
              randn(h, seed=seed + 3, std=0.3), randn(h, seed=seed + 4, std=0.5), randn(1, seed=seed + 5, std=0.5)]
    return OpCase(
        forward_op=op.local_branch, backward_op=op.local_branch_backward, oracle=op.forward_torch,
        inputs=inputs, backward_inputs=lambda ins, outs: ins,
    )


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", OP_SHAPES, ids=str)
def test_parity(backend, shape):
    run_case(make_case(*shape), backend)


# The C++ float32 kernels run over columns in 8-lane chunks and split a sample into row
# tiles of at most about 4096 positions, rows shared out evenly, each tile recomputing
# one halo row on either side: widths of exactly one and two chunks, a last chunk of 1-7
# columns, two or three tiles per sample (70 x 90: 35 and 35 rows; 130 x 64: 44, 44, 42),
# a single sample in two tiles (9 x 50: 5 and 4; 3 x 8: 2 and 1, a tile of one row),
# halo rows at the tile edges.
WIDE_SHAPES = [(2, 13, 19), (1, 9, 50), (1, 5, 8), (2, 4, 16), (2, 70, 90), (1, 130, 64), (1, 3, 8)]


@pytest.mark.parametrize("backend", [b for b in backend_params() if b.id in ("cpp", "torch")])
@pytest.mark.parametrize("shape", WIDE_SHAPES, ids=str)
def test_parity_wide(backend, shape):
    run_case(make_case(*shape, seed=30), backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("h,r", [(24, 12), (3, 1)])
def test_widths(backend, h, r):
    run_case(make_case(2, 5, 6, h=h, r=r, seed=10), backend)


@pytest.mark.parametrize("backend", backend_params())
def test_registered_autograd(backend):
    run_autograd(make_case(2, 4, 5, seed=20), backend)


def test_opcheck():
    case = make_case(2, 3, 4)
    args = [t.float() for t in case.inputs]
    torch.library.opcheck(op.local_branch, (*args, "torch"))
    grads = [torch.randn(2, 12, 3, 4), torch.randn(2, 3, 4)]
    torch.library.opcheck(op.local_branch_backward, (*grads, *args, "torch"))


@pytest.mark.parametrize("backend", [b for b in backend_params() if b.id in ("cpp", "torch")])
def test_spatial_gate_extremes(backend):
    """The gate's sigmoid (the C++ tiles compute it in vectors, exp by a polynomial) over
    pre-activations from -100 to 100, with every width of last chunk, stays within a few
    ulps of float64's; saturates to 1 and to (nearly) 0 at +-inf; keeps NaN."""
    N, h, H, W = 1, 1, 41, 1023
    u = torch.linspace(-100.0, 100.0, N * h * H * W).view(N, h, H, W)
    A, B = torch.ones(1, 1), torch.zeros(1, 9)
    B[0, 4] = 1.0  # l = u: the gate's pre-activation is u itself
    zero, one = torch.zeros(1), torch.ones(1)
    l, sg = op.local_branch(u, A, B, zero, one, zero, backend)
    assert torch.equal(l, u)
    ref = torch.sigmoid(u.double()).view(N, H, W)
    torch.testing.assert_close(sg.double(), ref, rtol=3e-7, atol=1e-37)
    for sib, expect in [(float("inf"), 1.0), (-float("inf"), 0.0)]:
        _, s = op.local_branch(torch.zeros(1, 1, 3, 9), A, B, zero, one, torch.tensor([sib]), backend)
        torch.testing.assert_close(s, torch.full_like(s, expect), rtol=0, atol=1e-37)
    _, s = op.local_branch(torch.zeros(1, 1, 3, 9), A, B, zero, one, torch.tensor([float("nan")]), backend)
    assert s.isnan().all()
