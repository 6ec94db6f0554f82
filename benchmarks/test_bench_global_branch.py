"""global_branch: rfft2, the amplitude/phase gate, irfft2, abs and the per-channel mean."""

import pytest

from adaptir_kernels.ops.global_branch import global_branch, global_branch_backward


def test_global_branch_forward(timed, state, backend):
    p = state["params"]
    timed(lambda: global_branch(state["u"], p["amp_w"], p["amp_b"], p["pha_w"], p["pha_b"], backend),
          f"global_branch forward {state['shape'].name}")


@pytest.mark.train_only
@pytest.mark.parametrize("signs", ["kept", "recomputed"])
def test_global_branch_backward(timed, state, backend, signs):
    """kept: with the g and packed signs this backend's own forward returns, as inside the
    fused module (a backend that keeps none recomputes y either way); recomputed: with an
    empty sign tensor, so y is recomputed (one more gate pass and inverse FFT)."""
    from adaptir_kernels.ops.global_branch import no_signs

    p = state["params"]
    g, _, sign = global_branch(state["u"], p["amp_w"], p["amp_b"], p["pha_w"], p["pha_b"], backend)
    if signs == "recomputed":
        sign = no_signs(g)
    timed(lambda: global_branch_backward(state["grad_g"], state["grad_gmean"], state["u"], g, sign,
                                         p["amp_w"], p["amp_b"], p["pha_w"], p["pha_b"], backend),
          f"global_branch backward ({signs} signs) {state['shape'].name}")
