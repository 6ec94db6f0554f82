"""project_in: every backend against the composite forward and autograd through it."""

import pytest
import torch

from adaptir_kernels.ops import project_in as op
from op_cases import DEVICE, OP_SHAPES, OpCase, backend_params, randn, run_autograd, run_case

EPS = 1e-5


def make_case(N, H, W, layout, training, h=12, C=40, seed=0):
    shape = (N, H, W, C) if layout == "nhwc" else (H * W, N, C)
    inputs = [randn(*shape, seed=seed), randn(h, C, seed=seed + 1, std=0.3), randn(h, seed=seed + 2),
              1 + randn(h, seed=seed + 3, std=0.3), randn(h, seed=seed + 4), randn(h, seed=seed + 5, std=0.2),
              0.5 + torch.rand(h, dtype=torch.float64)]
    consts = (training, EPS, layout, H, W)

    def oracle(x, w, b, bw, bb, rm, rv, *c):
        return op.forward_torch(x, w, b, bw, bb, rm.detach(), rv.detach(), *c)

    def bwd_inputs(ins, outs):
        x, w, b, bw, bb, rm, rv = ins
        u, xhat, mean, var = outs
        return [x, xhat, w, bw, var]

    return OpCase(
        forward_op=op.project_in, backward_op=op.project_in_backward, oracle=oracle, inputs=inputs,
        consts=consts, n_outputs_diff=1, backward_inputs=bwd_inputs, backward_consts=consts,
        # backward returns grads for (x, w, b, bn_w, bn_b); running buffers get none
        grad_order=lambda g: (*g, torch.zeros(h, device=g[0].device), torch.zeros(h, device=g[0].device)),
    )


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
@pytest.mark.parametrize("shape", OP_SHAPES, ids=str)
def test_parity(backend, training, layout, shape):
    run_case(make_case(*shape, layout, training), backend)


# C = 1024 and N = 5 in (L, N, C): a row block of the C++ kernels holds 24 or 12
# positions per sample (by the L2 cache size: common.h, row_block_rows), too short for
# channel runs, so the h-wide passes (xhat and u; grad_z) take blocks of 64 positions of
# their own (common.h, run_blocks), here two of them, the last partial.
@pytest.mark.parametrize("backend", [b for b in backend_params() if b.id in ("cpp", "torch")])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_parity_short_runs(backend, training):
    run_case(make_case(5, 9, 13, "lnc", training, C=1024, seed=30), backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_registered_autograd(backend, training):
    run_autograd(make_case(2, 4, 5, "nhwc", training, seed=20), backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input(backend, dtype):
    if backend == "triton" and DEVICE.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes bfloat16 incorrectly")
    case = make_case(2, 3, 5, "lnc", True)
    x, *params = [t.float().to(DEVICE) for t in case.inputs]
    u, xhat, mean, var = op.project_in(x.to(dtype), *params, *case.consts, backend)
    u_ref = op.forward_torch(x.to(dtype).float().cpu(), *[p.cpu() for p in params], *case.consts)[0]
    assert u.dtype == torch.float32
    assert (u.cpu() - u_ref).norm() / u_ref.norm() < 1e-4
    gx = op.project_in_backward(torch.ones_like(u), x.to(dtype), xhat, params[0], params[2], var,
                                *case.consts, backend)[0]
    assert gx.dtype == dtype and gx.shape == x.shape


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_u_is_the_affine_of_xhat_the_backward_recomputes(backend, training):
    """The chain saves xhat, not u, and its backward recomputes u from xhat (the Python
    chain in adaptir_kernels.module, the C++ one in csrc/cpu/chain.cpp); the local
    branch's recomputed values are those of the forward only if that u is bit for bit the
    operator's. On the CPU the operators round a product, then a sum. On CUDA the Triton
    kernel may contract the two into one multiply-add, so there only agreement to an ulp
    is asserted."""
    case = make_case(3, 7, 5, "nhwc", training, seed=30)
    x, w, b, bw, bb, rm, rv = [t.float().to(DEVICE) for t in case.inputs]
    u, xhat, _, _ = op.project_in(x, w, b, bw, bb, rm, rv, *case.consts, backend)
    if DEVICE.type == "cuda":
        expected = torch.addcmul(bb[:, None, None], xhat, bw[:, None, None])
        torch.testing.assert_close(u, expected, rtol=2.5e-7, atol=1e-7)
    else:
        assert torch.equal(u, xhat * bw[:, None, None] + bb[:, None, None])


def test_opcheck():
    case = make_case(2, 3, 4, "nhwc", True)
    args = [t.float() for t in case.inputs]
    torch.library.opcheck(op.project_in, (*args, *case.consts, "torch"))
    u, xhat, mean, var = op.project_in(*args, *case.consts, "torch")
    torch.library.opcheck(op.project_in_backward,
                          (torch.randn_like(u), args[0], xhat, args[1], args[3], var, *case.consts, "torch"))
