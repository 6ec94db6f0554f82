"""global_branch: rfft2, the amplitude/phase gate, irfft2, abs and the per-channel mean."""

import pytest

from adaptir_kernels.ops.global_branch import global_branch, global_branch_backward


def test_global_branch_forward(timed, state, backend):
    p = state["params"]
    timed(lambda: global_branch(state["u"], p["amp_w"], p["amp_b"], p["pha_w"], p["pha_b"], backend),
          f"global_branch forward {state['shape'].name}")


@pytest.mark.train_only
def test_global_branch_backward(timed, state, backend):
    """With the g and packed signs this backend's own forward returns (where it keeps
    none, y is recomputed), as inside the fused module."""
    p = state["params"]
    g, _, sign = global_branch(state["u"], p["amp_w"], p["amp_b"], p["pha_w"], p["pha_b"], backend)
    timed(lambda: global_branch_backward(state["grad_g"], state["grad_gmean"], state["u"], g, sign,
                                         p["amp_w"], p["amp_b"], p["pha_w"], p["pha_b"], backend),
          f"global_branch backward {state['shape'].name}")
