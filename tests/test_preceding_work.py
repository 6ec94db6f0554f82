"""benchmarks/preceding_work.py: every (preceding workload, implementation, column) cell is
timed once per round, each forward inside its own forward+backward, the ratios are those
of the minima, the thread count is restored and bad arguments are refused."""

import json

import pytest
import torch
from helpers import load_benchmark_script

from adaptir_kernels.backends import cpp_available

pytestmark = pytest.mark.skipif(not cpp_available(), reason="C++ extension not built")


@pytest.fixture(scope="module")
def pw():
    return load_benchmark_script("preceding_work.py")


def test_every_cell_timed(pw, tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "preceding.json"
    assert pw.main(["--shape", "edt-train", "--batch", "1", "--threads", "1", "--repeats", "2",
                    "--warmup", "1", "--json", str(out)]) == 0
    assert torch.get_num_threads() == before
    res = json.loads(out.read_text())
    assert res["x_shape"] == [1, 48, 48, 180] and res["threads"] == 1 and res["repeats"] == 2
    assert res["command"].startswith("python benchmarks/preceding_work.py")
    assert list(res["modes"]) == list(pw.MODES)
    for mode, cell in res["modes"].items():
        for subject in pw.SUBJECTS:
            fwd, both = cell[subject]["fwd"], cell[subject]["fwd+bwd"]
            for c in (fwd, both):
                assert len(c["samples_ms"]) == 2, (mode, subject)
                assert 0 < c["min_ms"] <= c["median_ms"], (mode, subject)
            # The forward is the first part of its own forward+backward.
            assert all(f < b for f, b in zip(fwd["samples_ms"], both["samples_ms"])), (mode, subject)
        for col in pw.COLUMNS:
            assert cell["ratio_of_minima"][col] == pytest.approx(
                cell["reference"][col]["min_ms"] / cell["fused"][col]["min_ms"])


def test_some_modes(pw):
    res = pw.measure(pw.shape_by_name("edt-train", 1), threads=1, repeats=1, warmup=0,
                     modes=("flush", "other"))
    assert list(res["modes"]) == ["flush", "other"]
    assert "fused_operators_median_ms" not in res["modes"]["flush"]
    assert len(pw.table(res)) == 4


def test_operators_inside_the_fused_step(pw):
    import adaptir_kernels.module as fused

    chain, entry = fused.CPP_CHAIN, fused.project_in
    res = pw.measure(pw.shape_by_name("edt-train", 1), threads=1, repeats=2, warmup=0,
                     modes=("itself", "other"), operators=True)
    assert fused.CPP_CHAIN == chain and fused.project_in is entry
    names = {n + s for n in ("project_in", "local_branch", "global_branch", "router", "combine_out")
             for s in ("", "_backward")}
    for mode, cell in res["modes"].items():
        ops = cell["fused_operators_median_ms"]
        # Only the fused step's own calls: the reference's step before it ("other") adds none.
        assert set(ops) == names, mode
        assert all(t > 0 for t in ops.values()), mode
        # Each step contains its own calls (medians of two samples are their means), so the
        # preceding step's calls ("itself": the fused module's own) are not counted in.
        assert ops["project_in"] <= max(cell["fused"]["fwd"]["samples_ms"]), mode
        assert sum(ops.values()) <= max(cell["fused"]["fwd+bwd"]["samples_ms"]), mode
    assert len(pw.table(res)) == 4 + 2 + len(names)


def test_bad_arguments(pw):
    with pytest.raises(ValueError, match="unknown training shape"):
        pw.shape_by_name("edt-infer")
    shape = pw.shape_by_name("edt-train", 1)
    with pytest.raises(ValueError, match="repeats"):
        pw.measure(shape, threads=1, repeats=0, warmup=0)
    with pytest.raises(ValueError, match="unknown mode"):
        pw.measure(shape, threads=1, repeats=1, warmup=0, modes=("itself", "sleep"))
    with pytest.raises(ValueError, match="unknown mode"):
        pw.measure(shape, threads=1, repeats=1, warmup=0, modes=())
