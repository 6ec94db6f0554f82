"""The end-to-end fine-tuning step of EDT-B (benchmarks/bench_finetune_step.py): forward,
L1 loss, backward and AdamW on the adapters, per variant (no adapters, eager, fused).

run() times its own steps (median of `repeats` after `warmup`); the benchmark's own
timing covers the whole call, model construction included, so read the step time from
extra_info["step_ms"] (in --benchmark-json output). Default: the small EDT of the
script's --tiny on the CPU; EDT-B on CUDA or with --bench-full."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "bench_finetune_step.py")


def _load_run():
    if not os.path.exists(SCRIPT):
        pytest.skip("benchmarks/bench_finetune_step.py is not there")
    spec = importlib.util.spec_from_file_location("bench_finetune_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.run


@pytest.mark.parametrize("variant", ["none", "eager", "fused"])
def test_finetune_step(benchmark, pytestconfig, device, variant):
    run = _load_run()
    full = pytestconfig.getoption("--bench-full")
    tiny = device.type == "cpu" and not full
    repeats = 10 if full else 3
    benchmark.group = f"finetune step {'EDT-tiny' if tiny else 'EDT-B'}"
    res = benchmark.pedantic(run, kwargs=dict(device=str(device), variants=(variant,), repeats=repeats, warmup=1,
                                              tiny=tiny), rounds=1, iterations=1)
    if variant in res.get("skipped", {}):
        pytest.skip(f"{variant}: {res['skipped'][variant]}")
    benchmark.extra_info.update(
        step_ms=res["times_s"][variant] * 1e3,
        all_step_ms=[t * 1e3 for t in res["all_times_s"][variant]],
        model=res["model"], batch_size=res["batch_size"], fused_backend=res.get("fused_backend"))
