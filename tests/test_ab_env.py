"""benchmarks/ab_env.py: the variable alternates unset / set step by step, warm-up steps
are dropped, the variable and the thread count are restored afterwards, ratios are on
over off, and a real module step runs end to end."""

import os

import pytest
import torch
from helpers import load_benchmark_script

VAR = "ADAPTIR_TEST_AB_ENV"


@pytest.fixture(scope="module")
def ab():
    return load_benchmark_script("ab_env.py")


def test_alternates_and_drops_warmup(ab, monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    seen = []

    def step():
        value = os.environ.get(VAR)
        seen.append(value)
        # the "on" side is twice as slow, so the sides cannot be mixed up unnoticed (ms)
        return (2.0, 4.0) if value == "yes" else (1.0, 2.0)

    samples = ab.alternate(step, pairs=3, var=VAR, value="yes", warmup=2)
    assert seen == [None, "yes"] * 4
    assert samples["off"]["fwd"] == pytest.approx([1.0] * 3)
    assert samples["on"]["bwd"] == pytest.approx([4.0] * 3)
    assert samples["on"]["step"] == pytest.approx([6.0] * 3)
    assert VAR not in os.environ
    lines = ab.summary(samples)
    assert [ln.split()[0] for ln in lines] == ["fwd", "bwd", "step"]
    assert "on/off min 2.000 med 2.000" in lines[0]


def test_restores_a_previous_value(ab, monkeypatch):
    monkeypatch.setenv(VAR, "before")
    ab.alternate(lambda: (0.001, 0.001), pairs=1, var=VAR, warmup=0)
    assert os.environ[VAR] == "before"


def test_restores_after_an_error(ab, monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return 0.001, 0.001

    with pytest.raises(RuntimeError, match="boom"):
        ab.alternate(step, pairs=2, var=VAR, warmup=0)
    assert VAR not in os.environ


@pytest.mark.parametrize("kw, msg", [({"pairs": 0}, "pairs"), ({"warmup": -1}, "warmup"),
                                     ({"var": ""}, "empty")])
def test_bad_arguments(ab, kw, msg):
    args = {"pairs": 1, "var": VAR, "warmup": 0}
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        ab.alternate(lambda: (0.0, 0.0), **args)


def test_main_runs_a_module_step(ab, capsys, monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    threads = torch.get_num_threads()
    backend = "cpp" if _has_cpp() else "torch"
    assert ab.main([VAR, "--shape", "edt-train", "--batch", "1", "--pairs", "2", "--warmup", "1",
                    "--threads", "1", "--backend", backend]) == 0
    out = capsys.readouterr().out
    assert f"{VAR}=1 against unset, 2 pairs" in out
    assert sum(ln.startswith(("fwd ", "bwd ", "step ")) for ln in out.splitlines()) == 3
    assert VAR not in os.environ
    assert torch.get_num_threads() == threads  # put back after --threads 1


def _has_cpp():
    from adaptir_kernels import backends

    return backends.cpp_available()
