"""Test session setup.

Without a CUDA device, Triton kernels run in Triton's interpreter on CPU tensors; the
interpreter must be chosen before triton is first imported, hence here. Every test must
also leave the process's global state as it found it (`_global_state_unchanged`).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _state():
    """What one test must leave as it found it: the thread count (later tests compare
    results with fresh processes, and the backbones' convolutions are not bitwise equal
    at every thread count), the default dtype, grad mode, the package's and Triton's
    environment switches and the fused module's C++ chain switch."""
    from adaptir_kernels import module

    env = {k: v for k, v in os.environ.items() if k.startswith(("ADAPTIR_", "TRITON_"))}
    return {"thread count": torch.get_num_threads(), "default dtype": torch.get_default_dtype(),
            "grad mode": torch.is_grad_enabled(), "environment": env, "CPP_CHAIN": module.CPP_CHAIN}


def _restore(state):
    from adaptir_kernels import module

    torch.set_num_threads(state["thread count"])
    torch.set_default_dtype(state["default dtype"])
    torch.set_grad_enabled(state["grad mode"])
    for k in [k for k in os.environ if k.startswith(("ADAPTIR_", "TRITON_"))]:
        del os.environ[k]
    os.environ.update(state["environment"])
    module.CPP_CHAIN = state["CPP_CHAIN"]


@pytest.fixture(autouse=True)
def _global_state_unchanged():
    before = _state()
    yield
    after = _state()
    changed = [f"{k}: {before[k]!r} -> {after[k]!r}" for k in before if after[k] != before[k]]
    if changed:
        _restore(before)
        pytest.fail("the test changed global state and did not put it back: " + "; ".join(changed))
