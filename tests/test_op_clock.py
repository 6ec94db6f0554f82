"""benchmarks/op_clock.py: every operator of the fused module is clocked inside a
forward+backward step, local_branch twice (forward, and recomputed in the backward), the
clocked calls fit inside the step, and the module is left as it was."""

import json

import pytest
from helpers import load_benchmark_script

from adaptir_kernels.backends import cpp_available

pytestmark = pytest.mark.skipif(not cpp_available(), reason="C++ extension not built")


@pytest.fixture(scope="module")
def oc():
    return load_benchmark_script("op_clock.py")


def test_every_operator_inside_the_step(oc, tmp_path):
    import adaptir_kernels.module as fused

    chain, entry = fused.CPP_CHAIN, fused.project_in
    out = tmp_path / "clock.json"
    assert oc.main(["--shape", "edt-train", "--batch", "1", "--threads", "1", "--repeats", "2",
                    "--warmup", "1", "--json", str(out)]) == 0
    assert fused.CPP_CHAIN == chain and fused.project_in is entry
    run = json.loads(out.read_text())["runs"][0]
    assert run["x_shape"] == [1, 48, 48, 180] and run["threads"] == 1 and run["repeats"] == 2
    ops = run["operators"]
    names = {n + s for n in ("project_in", "local_branch", "global_branch", "router", "combine_out")
             for s in ("", "_backward")}
    assert set(ops) == names
    for name, o in ops.items():
        assert o["calls_per_step"] == (2 if name == "local_branch" else 1), name
        assert 0 < o["min_ms"] <= o["median_ms"], name
    # Each step contains its operator calls, so the per-operator minima fit in the fastest step.
    assert sum(o["min_ms"] for o in ops.values()) <= run["step_min_ms"]


def test_bad_arguments(oc):
    with pytest.raises(ValueError, match="unknown training shape"):
        oc.shape_by_name("edt-infer")
    with pytest.raises(ValueError, match="repeats"):
        oc.clock(oc.shape_by_name("edt-train", 1), threads=1, repeats=0, warmup=0)
