"""router: softmax pooling + proj MLP (cs) and the channel gate (cg). "torch" (the
composite in ops/router.py) and the compiled backends' own kernels are timed."""

import pytest

from adaptir_kernels.ops.router import router, router_backward


def _params(p):
    return (p["compress_w"], p["compress_b"], p["proj0_w"], p["proj0_b"], p["proj2_w"], p["proj2_b"])


def _gate(p):
    return (p["ci1_w"], p["ci1_b"], p["ci3_w"], p["ci3_b"])


def test_router_forward(timed, state, backend):
    p = state["params"]
    timed(lambda: router(state["u"], *_params(p), state["gmean"], *_gate(p), backend),
          f"router forward {state['shape'].name}")


@pytest.mark.train_only
def test_router_backward(timed, state, backend):
    p = state["params"]
    timed(lambda: router_backward(state["grad_cs"], state["grad_cg"], state["u"], *_params(p), state["gmean"],
                                  *_gate(p), backend),
          f"router backward {state['shape'].name}")
