"""benchmarks/bench_finetune_step.py on a small EDT: every variant runs, and the clock
inside the step sees every adapter once forward and once backward, also the first
adapter, whose input needs no gradient (everything before it is frozen)."""

import pytest
from helpers import load_benchmark_script


@pytest.fixture(scope="module")
def bench():
    return load_benchmark_script("bench_finetune_step.py")


def test_adapter_clock_inside_the_step(bench):
    res = bench.run(device="cpu", tiny=True, repeats=2, warmup=1, batch_size=1, backend="auto")
    assert set(res["times_s"]) == {"none", "eager", "fused"}, res["skipped"]
    adapters = 4  # the small EDT: two stages of two blocks
    for v in ("eager", "fused"):
        assert res["adapter_calls"][v] == [adapters, adapters]
        parts = res["step_parts_s"][v]
        assert parts["adapter_fwd"] > 0 and parts["adapter_bwd"] > 0 and parts["opt"] > 0
        # the adapters' share cannot exceed the step that contains it
        assert parts["adapter_fwd"] + parts["adapter_bwd"] + parts["opt"] < min(res["all_times_s"][v])
    assert "adapter_fwd" not in res["step_parts_s"]["none"]
    assert res["adapter_overhead_ratio_fused_over_eager"] == pytest.approx(
        res["adapter_overhead_direct_s"]["fused"] / res["adapter_overhead_direct_s"]["eager"])
    # round by round: each round's own (fwd + bwd + optimizer step, less none's step) ratio
    parts = res["step_parts_all_s"]
    own = {v: [f + b + o for f, b, o in zip(parts[v]["adapter_fwd"], parts[v]["adapter_bwd"], parts[v]["opt"])]
           for v in ("eager", "fused")}
    expected = [(f - n) / (e - n) for f, e, n in zip(own["fused"], own["eager"], parts["none"]["opt"])]
    assert res["adapter_overhead_ratio_fused_over_eager_by_round"] == pytest.approx(expected)
    assert len(expected) == 2
    assert res["adapter_overhead_ratio_fused_over_eager_median_of_rounds"] == pytest.approx(sorted(expected)[0] / 2 + sorted(expected)[1] / 2)


def test_adapter_clock_refuses_other_devices(bench):
    # the adapter clock: CPU (host clock) and CUDA (events); the operator clock: CPU only
    with pytest.raises(ValueError, match="adapter_clock needs the CPU"):
        bench.run(device="meta", tiny=True, repeats=1, warmup=0, adapter_clock=True)
    with pytest.raises(ValueError, match="op_clock needs the CPU"):
        bench.run(device="meta", tiny=True, repeats=1, warmup=0, adapter_clock=False, op_clock=True)


class _FakeEvent:
    """Stands in for torch.cuda.Event: a host-clock reading taken at record()."""

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def elapsed_time(self, end):  # milliseconds, as CUDA events give them
        return (end.t - self.t) * 1e3


def test_adapter_clock_with_events(bench, monkeypatch):
    """On CUDA the clock's marks are events, read once the step has synchronised: checked
    on the CPU with stand-in events that read the host clock, against a host-clock clock
    hooked to the same adapters in the same step."""
    import torch

    from adaptir_kernels.adapters import inject
    from adaptir_kernels.backbones import EDT

    synced = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: synced.append(len(events.intervals)))
    torch.manual_seed(0)
    model = inject(EDT("sr_2", **bench.TINY), backend="reference")
    bench._randomize_adapters(model, seed=3)
    x, target = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 48, 48)
    events, host = bench.AdapterClock(model, "cuda"), bench.AdapterClock(model, "cpu")
    assert events.timer.cuda and not host.timer.cuda
    parts = {}
    step = bench._make_step(model, x, target, events, parts)
    for _ in range(2):
        host.start_step()
        step()
        host.collect()
        # synchronised with all 8 intervals (4 adapters, forward and backward) recorded,
        # before they were read
        assert synced[-1] == 8 and not events.intervals
        assert parts["adapter_calls"] == [4, 4] == host.calls
        assert parts["adapter_fwd"] == events.fwd > 0 and parts["adapter_bwd"] == events.bwd > 0
        assert parts["opt"] > 0
        # the two clocks mark the same spans, a few hook calls apart
        assert events.fwd == pytest.approx(host.fwd, rel=0.5)
        assert events.bwd == pytest.approx(host.bwd, rel=0.5)
    events.remove(), host.remove()


def test_adapter_clock_leaves_the_model_unchanged(bench):
    """Hooks and identity marks change no value: loss and gradients with the clock on
    equal those without it."""
    import torch
    import torch.nn.functional as F

    from adaptir_kernels.adapters import inject
    from adaptir_kernels.backbones import EDT

    torch.manual_seed(0)
    model = inject(EDT("sr_2", **bench.TINY), backend="reference")
    bench._randomize_adapters(model, seed=3)
    x = torch.rand(1, 3, 24, 24)

    def grads():
        model.zero_grad(set_to_none=True)
        F.l1_loss(model(x), torch.zeros(1, 3, 48, 48)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    clock = bench.AdapterClock(model)
    clocked = grads()
    assert clock.calls == [4, 4]
    clock.remove()
    assert plain.keys() == clocked.keys()
    for n in plain:
        assert torch.equal(plain[n], clocked[n]), n


def test_operator_clock_inside_the_step(bench):
    """Every fused operator is timed once per adapter call (local_branch twice: forward and
    recomputed in the backward), inside the adapters' own time; the wrappers are removed."""
    import adaptir_kernels.module as fused

    before = {n: getattr(fused, n) for n in ("project_in", "router_backward")}
    res = bench.run(device="cpu", tiny=True, repeats=2, warmup=1, batch_size=1, backend="auto",
                    variants=("fused",), op_clock=True)
    ops = res["operator_ms_per_adapter_call"]
    assert set(ops) == {f"{b}{s}" for b in bench.OperatorClock.NAMES for s in ("", "_backward")}
    assert all(v > 0 for v in ops.values())
    parts = res["step_parts_s"]["fused"]
    per_call_ms = 1e3 * (parts["adapter_fwd"] + parts["adapter_bwd"]) / res["adapter_calls"]["fused"][0]
    assert sum(ops.values()) < per_call_ms
    assert all(getattr(fused, n) is f for n, f in before.items())
    assert fused.CPP_CHAIN is True  # the clock turned the C++ chain off while it ran


def test_operator_by_operator_variant(bench):
    """fused:cpp-ops runs the cpp backend through the Python chain (module.CPP_CHAIN off
    during its steps only, also when a step raises) beside the C++ chain; every round's
    clocked parts are kept."""
    import adaptir_kernels.module as fused
    from adaptir_kernels.backends import cpp_available

    seen = []

    def step():
        seen.append(fused.CPP_CHAIN)
        if len(seen) == 2:
            raise RuntimeError("a failing step")

    wrapped = bench._operator_by_operator(step)
    wrapped()
    with pytest.raises(RuntimeError, match="a failing step"):
        wrapped()
    assert seen == [False, False] and fused.CPP_CHAIN is True
    if not cpp_available():
        pytest.skip("the C++ extension is not built: no cpp variants to run")
    res = bench.run(device="cpu", tiny=True, repeats=2, warmup=1, batch_size=1, backend="cpp",
                    variants=("none", "fused", "fused:cpp-ops"))
    assert set(res["times_s"]) == {"none", "fused", "fused:cpp-ops"}, res["skipped"]
    for v in ("fused", "fused:cpp-ops"):
        assert res["adapter_calls"][v] == [4, 4]
        assert len(res["step_parts_all_s"][v]["adapter_bwd"]) == 2
        assert res["adapter_overhead_direct_s"][v] > 0
    assert fused.CPP_CHAIN is True
