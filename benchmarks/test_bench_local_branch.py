"""local_branch: the factorised depthwise 3x3 conv, its bias and the spatial gate."""

import pytest

from adaptir_kernels.ops.local_branch import local_branch, local_branch_backward


def test_local_branch_forward(timed, state, backend):
    p = state["params"]
    timed(lambda: local_branch(state["u"], p["conv_A"], p["conv_B"], p["conv_bias"], p["si_w"], p["si_b"], backend),
          f"local_branch forward {state['shape'].name}")


@pytest.mark.train_only
def test_local_branch_backward(timed, state, backend):
    p = state["params"]
    timed(lambda: local_branch_backward(state["grad_l"], state["grad_sg"], state["u"], p["conv_A"], p["conv_B"],
                                        p["conv_bias"], p["si_w"], p["si_b"], backend),
          f"local_branch backward {state['shape'].name}")
