"""project_in: x (backbone layout) -> u = BN(head(x)); its backward reads x and grad_u,
writes grad_x."""

import pytest

from adaptir_kernels.ops.project_in import project_in, project_in_backward


def test_project_in_forward(timed, state, backend):
    s, p = state["shape"], state["params"]
    timed(lambda: project_in(state["x"], p["head_w"], p["head_b"], p["bn_w"], p["bn_b"], p["running_mean"],
                             p["running_var"], state["training"], state["eps"], s.layout, s.H, s.W, backend),
          f"project_in forward {s.name}")


@pytest.mark.train_only
def test_project_in_backward(timed, state, backend):
    s, p = state["shape"], state["params"]
    timed(lambda: project_in_backward(state["grad_u"], state["x"], state["xhat"], p["head_w"], p["bn_w"],
                                      state["var"], state["training"], state["eps"], s.layout, s.H, s.W, backend),
          f"project_in backward {s.name}")
