"""combine_out: v = cs * (cg * l + sg * g), out = tail(v) written in the backbone's layout;
its backward reads grad_out once."""

import pytest
import torch

from adaptir_kernels.ops.combine_out import combine_out, combine_out_backward


def test_combine_out_forward(timed, state, backend):
    s, p = state["shape"], state["params"]
    timed(lambda: combine_out(state["loc"], state["g"], state["sg"], state["cg"], state["cs"], p["tail_w"],
                              s.layout, torch.float32, backend),
          f"combine_out forward {s.name}")


@pytest.mark.train_only
def test_combine_out_backward(timed, state, backend):
    s, p = state["shape"], state["params"]
    timed(lambda: combine_out_backward(state["grad_out"], state["loc"], state["g"], state["sg"], state["cg"],
                                       state["cs"], p["tail_w"], s.layout, backend),
          f"combine_out backward {s.name}")
