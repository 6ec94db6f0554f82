"""combine_out: every backend against the composite forward and autograd through it."""

import pytest
import torch

from adaptir_kernels.ops import combine_out as op
from op_cases import DEVICE, OP_SHAPES, OpCase, backend_params, randn, run_autograd, run_case


def make_case(N, H, W, layout, h=12, C=40, seed=0, out_dtype=torch.float32):
    inputs = [randn(N, h, H, W, seed=seed), randn(N, h, H, W, seed=seed + 1), torch.rand(N, H, W, dtype=torch.float64),
              torch.rand(N, h, dtype=torch.float64), randn(N, h, seed=seed + 2), randn(C, h, seed=seed + 3, std=0.3)]
    return OpCase(
        forward_op=op.combine_out, backward_op=op.combine_out_backward, oracle=op.forward_torch,
        inputs=inputs, consts=(layout, out_dtype), n_outputs_diff=1,
        backward_inputs=lambda ins, outs: ins, backward_consts=(layout,),
    )


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
@pytest.mark.parametrize("shape", OP_SHAPES, ids=str)
def test_parity(backend, layout, shape):
    case = make_case(*shape, layout)
    # The oracle runs in float64; ask it for float64 output.
    case.oracle = lambda *a: op.forward_torch(*a[:-1], torch.float64)
    run_case(case, backend)


# C = 256 makes the C++ kernels split the rows into blocks of at most 256 or 512 (by the
# L2 cache size: common.h, row_block_rows): of 31 x 37 = 1147 positions, 5 blocks of 230
# or 3 of 383 per sample in NHWC, the last one shorter, 9 of 128 or 5 of 230 in LNC, with
# both samples' rows interleaved; its row kernels run 8 positions at a time with a
# remainder.
@pytest.mark.parametrize("backend", [b for b in backend_params() if b.id in ("cpp", "torch")])
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
def test_parity_row_blocks(backend, layout):
    case = make_case(2, 31, 37, layout, C=256, seed=40)
    case.oracle = lambda *a: op.forward_torch(*a[:-1], torch.float64)
    run_case(case, backend)


# C = 1024 and N = 5 in (L, N, C): too few positions per sample in a row block for
# channel runs, so v, and grad_v's channel pass, take blocks of 64 positions of their own
# (common.h, run_blocks), here two of them, the last partial.
@pytest.mark.parametrize("backend", [b for b in backend_params() if b.id in ("cpp", "torch")])
def test_parity_short_runs(backend):
    case = make_case(5, 9, 13, "lnc", C=1024, seed=50)
    case.oracle = lambda *a: op.forward_torch(*a[:-1], torch.float64)
    run_case(case, backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("layout", ["nhwc", "lnc"])
def test_registered_autograd(backend, layout):
    case = make_case(2, 4, 5, layout, seed=20)
    case.oracle = lambda *a: op.forward_torch(*a[:-1], torch.float64)
    run_autograd(case, backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_output(backend, dtype):
    if backend == "triton" and DEVICE.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes bfloat16 incorrectly")
    case = make_case(2, 3, 5, "nhwc")
    ins = [t.float().to(DEVICE) for t in case.inputs]
    out = op.combine_out(*ins, "nhwc", dtype, backend)
    ref = op.forward_torch(*[t.cpu() for t in ins], "nhwc", torch.float32)
    assert out.dtype == dtype
    assert (out.float().cpu() - ref).norm() / ref.norm() < 1e-2


def test_opcheck():
    case = make_case(2, 3, 4, "lnc")
    args = [t.float() for t in case.inputs]
    torch.library.opcheck(op.combine_out, (*args, "lnc", torch.float32, "torch"))
    torch.library.opcheck(op.combine_out_backward, (torch.randn(12, 2, 40), *args, "lnc", "torch"))
