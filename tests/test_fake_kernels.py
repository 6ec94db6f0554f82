"""The adaptir:: custom ops' fake kernels describe what the real kernels return (shapes,
dtypes and the contiguous strides every backend gives its outputs), also for inputs that
are not contiguous: torch.compile's Inductor plans its buffers from the fakes, and a
stride that differs from the real one fails there ("incorrect fake kernel"), or worse.

Backends torch and cpp (the Triton launchers allocate contiguous outputs too; their
kernels cannot run here outside the interpreter)."""

from __future__ import annotations

import pytest
import torch

from adaptir_kernels.backends import available_backends
from adaptir_kernels.ops import combine_out as CO
from adaptir_kernels.ops import global_branch as G
from adaptir_kernels.ops import local_branch as L
from adaptir_kernels.ops import project_in as P
from adaptir_kernels.ops import router as R

BACKENDS = [b for b in ("torch", "cpp") if b in available_backends("cpu")]
N, h, H, W, C, r, p, q = 2, 4, 3, 5, 8, 2, 2, 2


def fake_ok(op, args):
    torch.library.opcheck(op, args, test_utils=("test_faketensor",))


def hidden_t():
    """(N, h, H, W) with its H and W strides swapped: not contiguous."""
    t = torch.randn(N, h, W, H).transpose(2, 3)
    assert not t.is_contiguous()
    return t


@pytest.mark.parametrize("backend", BACKENDS)
def test_fakes_match_real_outputs_for_non_contiguous_inputs(backend):
    torch.manual_seed(0)
    u = hidden_t()
    for layout, x in (("nhwc", torch.randn(N, W, H, C).transpose(1, 2)),
                      ("lnc", torch.randn(N, H * W, C).transpose(0, 1))):
        assert not x.is_contiguous()
        w, b, bw, bb = torch.randn(h, C), torch.randn(h), torch.randn(h), torch.randn(h)
        rm, rv = torch.zeros(h), torch.ones(h)
        fake_ok(P.project_in, (x, w, b, bw, bb, rm, rv, True, 1e-5, layout, H, W, backend))
        _, xhat, _, var = P.project_in(x, w, b, bw, bb, rm, rv, True, 1e-5, layout, H, W, backend)
        fake_ok(P.project_in_backward, (hidden_t(), x, xhat, w, bw, var, True, 1e-5, layout, H, W, backend))

    A, B, cb, siw, sib = torch.randn(h, r), torch.randn(r, 9), torch.randn(h), torch.randn(h), torch.randn(1)
    fake_ok(L.local_branch, (u, A, B, cb, siw, sib, backend))
    loc, sg = L.local_branch(u, A, B, cb, siw, sib, backend)
    fake_ok(L.local_branch_backward, (hidden_t(), torch.randn(N, H, W), u, A, B, cb, siw, sib, backend))

    aw, ab, pw, pb = (torch.randn(h) for _ in range(4))
    fake_ok(G.global_branch, (u, aw, ab, pw, pb, backend))
    g, gmean, sign = G.global_branch(u, aw, ab, pw, pb, backend)
    fake_ok(G.global_branch_backward, (hidden_t(), torch.randn(N, h), u, g, sign, aw, ab, pw, pb, backend))

    rp = (torch.randn(h), torch.randn(1), torch.randn(p, h), torch.randn(p), torch.randn(h, p), torch.randn(h),
          gmean, torch.randn(q, h), torch.randn(q), torch.randn(h, q), torch.randn(h))
    fake_ok(R.router, (u, *rp, backend))
    fake_ok(R.router_backward, (torch.randn(N, h), torch.randn(N, h), u, *rp, backend))

    cg, cs, tw = torch.rand(N, h), torch.randn(N, h), torch.randn(C, h)
    fake_ok(CO.combine_out, (hidden_t(), g, sg, cg, cs, tw, "nhwc", torch.float32, backend))
    fake_ok(CO.combine_out_backward, (torch.randn(N, H, W, C), hidden_t(), g, sg, cg, cs, tw, "nhwc", backend))
