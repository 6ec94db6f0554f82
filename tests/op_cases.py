"""Per-operator parity harness shared by tests/test_<op>.py.

For one operator: draw random inputs in float64, take the torch composite's forward as
the forward oracle and autograd through it (not the explicit backward) as the gradient
oracle, then run every available backend's forward and backward custom op in float32 on
the test device with outputs poisoned, and compare everything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import pytest
import torch

from adaptir_kernels import _alloc
from adaptir_kernels.backends import available_backends
from helpers import assert_close_rel

DEVICE = torch.device(os.environ.get("ADAPTIR_TEST_DEVICE", "cpu"))

# (N, H, W): odd and unequal sizes, H or W = 1, N = 1.
OP_SHAPES = [(2, 5, 7), (1, 4, 4), (3, 1, 6), (2, 6, 1), (1, 3, 8)]


def backends() -> List[str]:
    return available_backends(DEVICE)


def backend_params():
    return [pytest.param(b, id=b) for b in backends()]


@dataclass
class OpCase:
    """inputs: differentiable tensors; consts: trailing non-tensor arguments."""

    forward_op: Callable
    backward_op: Callable
    oracle: Callable  # the composite forward, differentiable by autograd
    inputs: Sequence[torch.Tensor]
    consts: Sequence = ()
    n_outputs_diff: int = 2  # leading forward outputs that carry gradients
    # backward op positional layout: (grads of outputs..., *inputs_for_backward, *backward_consts)
    backward_inputs: Callable = None  # (inputs, outputs) -> list of tensors after the output grads
    backward_consts: Sequence = ()
    grad_order: Callable = None  # maps backward op results to the order of `inputs`
    # inputs whose gradient is zero in exact arithmetic, a float32 sum of many cancelling
    # terms (router's compress_b: softmax is shift invariant); held to a floor of 1e-2
    # of the largest gradient's norm instead of 1e-3
    zero_grads: Sequence[int] = ()


def run_case(case: OpCase, backend: str, out_tol=1e-5, grad_tol=1e-4, seed=0) -> None:
    gen = torch.Generator().manual_seed(seed)
    ins64 = [t.detach().double().requires_grad_(t.is_floating_point()) for t in case.inputs]
    outs64 = case.oracle(*ins64, *case.consts)
    outs64 = outs64 if isinstance(outs64, (tuple, list)) else (outs64,)
    douts = outs64[: case.n_outputs_diff]
    grads_out64 = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in douts]
    diff_ins = [t for t in ins64 if t.requires_grad]
    expected_grads = torch.autograd.grad(douts, diff_ins, grads_out64, allow_unused=True)
    expected_grads = [torch.zeros_like(t) if g is None else g for t, g in zip(diff_ins, expected_grads)]

    dev = lambda t: t.detach().float().to(DEVICE).contiguous()  # noqa: E731
    ins32 = [dev(t) for t in case.inputs]
    with _alloc.poisoned():
        outs = case.forward_op(*ins32, *case.consts, backend)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        for i, (o, e) in enumerate(zip(outs, outs64)):
            assert o.device.type == DEVICE.type, f"output {i} on {o.device}"
            assert_close_rel(o, e, out_tol, f"{backend} forward output {i}")
        bwd_in = case.backward_inputs(ins32, outs)
        grads = case.backward_op(*[dev(g) for g in grads_out64], *bwd_in, *case.backward_consts, backend)
    grads = case.grad_order(grads) if case.grad_order else grads
    assert len(grads) == len(expected_grads)
    floor = 1e-3 * max(g.norm().item() for g in expected_grads)
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        assert g.dtype == ins32[i].dtype and g.shape == e.shape, f"grad {i}: {g.dtype} {tuple(g.shape)}"
        scale = 10 if i in case.zero_grads else 1
        assert_close_rel(g, e, grad_tol, f"{backend} grad of input {i}", floor=floor * scale)


def run_autograd(case: OpCase, backend: str, tol=1e-4) -> None:
    """The registered autograd of the forward custom op gives the same grads as the oracle."""
    gen = torch.Generator().manual_seed(1)
    ins = [t.detach().float().to(DEVICE).contiguous().requires_grad_(True) for t in case.inputs]
    outs = case.forward_op(*ins, *case.consts, backend)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    gos = [torch.randn(o.shape, generator=gen).to(DEVICE) for o in outs[: case.n_outputs_diff]]
    got = torch.autograd.grad(outs[: case.n_outputs_diff], ins, gos, allow_unused=True)
    ins64 = [t.detach().double().cpu().requires_grad_(True) for t in case.inputs]
    ref = case.oracle(*ins64, *case.consts)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    want = torch.autograd.grad(ref[: case.n_outputs_diff], ins64, [g.double().cpu() for g in gos], allow_unused=True)
    floor = 1e-3 * max(w.norm().item() for w in want if w is not None)
    for i, (g, w) in enumerate(zip(got, want)):
        g = torch.zeros_like(ins[i]) if g is None else g
        w = torch.zeros_like(ins64[i]) if w is None else w
        assert_close_rel(g, w, tol, f"{backend} autograd grad {i}", floor=floor)


def randn(*shape, seed, std=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std
