"""benchmarks/targets.py: each target's value per run, at-least and at-most thresholds,
rows that are missing or not ok left out of the count, the times behind each speed-up,
and unreadable files an error."""

import json

import pytest
from helpers import load_benchmark_script


@pytest.fixture(scope="module")
def targets():
    return load_benchmark_script("targets.py")


def _run(path, fwdbwd, fwd, saved, infer=None, compile_infer=None, status="ok", floor_fraction=None,
         ref_ms=None):
    fused = {"impl": "fused:cpp", "status": status, "saved_hidden_units": saved,
             "speedup": {"fwd+bwd": fwdbwd, "fwd": fwd, "infer": infer}}
    reference = {"impl": "reference", "status": "ok", "speedup": {"fwd+bwd": 1.0, "fwd": 1.0}}
    if ref_ms is not None:  # times consistent with the speed-ups
        reference["times_ms"] = {"fwd+bwd": 3 * ref_ms, "fwd": ref_ms}
        fused["times_ms"] = {"fwd+bwd": 3 * ref_ms / fwdbwd, "fwd": ref_ms / fwd}
    if floor_fraction is not None:
        reference["floor_fraction"] = floor_fraction
    rows = [reference, fused]
    if compile_infer is not None:
        rows.append({"impl": "compile:fwd", "status": "ok", "speedup": {"infer": compile_infer}})
    path.write_text(json.dumps({"shapes": [{"name": "edt-train", "results": rows}]}))
    return str(path)


def _row(rows, target, shape):
    return next(r for r in rows if r["target"].startswith(target) and r["shape"] == shape)


def test_values_and_counts(targets, tmp_path):
    runs = [targets.load_rows(_run(tmp_path / "a.json", 4.0, 5.5, 2.0, infer=6.0, compile_infer=2.0)),
            targets.load_rows(_run(tmp_path / "b.json", 3.9, 4.9, 3.2)),
            targets.load_rows(_run(tmp_path / "c.json", 9.0, 9.0, 1.0, status="compile failed: x"))]
    rows = targets.evaluate(runs, "fused:cpp")
    r = _row(rows, "fwd+bwd", "edt-train")
    assert r["values"] == [4.0, 3.9, None] and (r["met"], r["runs"]) == (1, 2)  # 4.0 meets >= 4
    r = _row(rows, "fwd (train", "edt-train")
    assert (r["met"], r["runs"]) == (1, 2)
    r = _row(rows, "<= 3", "edt-train")
    assert r["values"] == [2.0, 3.2, None] and (r["met"], r["runs"]) == (1, 2)
    r = _row(rows, "fwd >= 2x torch.compile", "edt-train")
    assert r["values"] == [3.0, None, None] and (r["met"], r["runs"]) == (1, 1)
    # shapes the runs do not have: no values, nothing counted
    r = _row(rows, "fwd+bwd", "ipt-train")
    assert r["values"] == [None, None, None] and r["runs"] == 0


def test_speed_at_the_floor(targets, tmp_path):
    # the reference at a quarter of the floor's speed: an implementation at the floor is
    # 4x faster, meeting fwd+bwd >= 4x and missing fwd >= 5x
    a = _run(tmp_path / "a.json", 3.0, 3.5, 2.0, floor_fraction={"fwd+bwd": 0.25, "fwd": 0.25})
    b = _run(tmp_path / "b.json", 3.0, 3.5, 2.0, floor_fraction={"fwd+bwd": 0.3})
    c = _run(tmp_path / "c.json", 3.0, 3.5, 2.0)  # an older file without the floor
    rows = targets.evaluate([targets.load_rows(p) for p in (a, b, c)], "fused:cpp")
    r = _row(rows, "fwd+bwd", "edt-train")
    assert r["floor_values"] == [4.0, pytest.approx(1 / 0.3), None]
    assert (r["floor_met"], r["floor_runs"]) == (1, 2)
    r = _row(rows, "fwd (train", "edt-train")
    assert r["floor_values"] == [4.0, None, None] and (r["floor_met"], r["floor_runs"]) == (0, 1)
    # targets that are not speed-ups over the reference have no floor line
    assert "floor_values" not in _row(rows, "<= 3", "edt-train")
    assert "floor_values" not in _row(rows, "fwd >= 2x torch.compile", "edt-train")


def test_main_prints_and_fails_on_bad_input(targets, tmp_path, capsys):
    good = _run(tmp_path / "a.json", 5.0, 6.0, 2.0)
    assert targets.main([good]) == 0
    out = capsys.readouterr().out
    assert "fwd+bwd >= 4x the reference" in out and "1 of 1" in out
    assert "at the floor" not in out  # the run has no floor: no line for it
    floored = _run(tmp_path / "f.json", 5.0, 6.0, 2.0, floor_fraction={"fwd+bwd": 0.125})
    assert targets.main([floored]) == 0
    out = capsys.readouterr().out
    assert "  at the floor" in out and "8.00" in out
    assert targets.main([str(tmp_path / "missing.json")]) == 2
    (tmp_path / "other.json").write_text(json.dumps({"runs": []}))
    assert targets.main([str(tmp_path / "other.json")]) == 2
    assert "not an `adaptir bench --json` file" in capsys.readouterr().err
    assert targets.main([good, "--impl", "fused:triton"]) == 2
    assert "no run has results for 'fused:triton'" in capsys.readouterr().err


def test_times_behind_the_speedups(targets, tmp_path, capsys):
    a = _run(tmp_path / "a.json", 4.0, 5.0, 2.0, ref_ms=10.0)
    b = _run(tmp_path / "b.json", 8.0, 10.0, 2.0, ref_ms=20.0)  # the reference twice as slow
    c = _run(tmp_path / "c.json", 4.0, 5.0, 2.0, status="failed")
    rows = targets.evaluate([targets.load_rows(p) for p in (a, b, c)], "fused:cpp")
    r = _row(rows, "fwd (train", "edt-train")
    assert r["reference_ms"] == [10.0, 20.0, None]  # c has no times at all
    assert r["impl_ms"] == [2.0, 2.0, None]
    r = _row(rows, "fwd+bwd", "edt-train")
    assert r["reference_ms"] == [30.0, 60.0, None] and r["impl_ms"] == [7.5, 7.5, None]
    assert "reference_ms" not in _row(rows, "<= 3", "edt-train")
    assert targets.main([a, b]) == 0
    out = capsys.readouterr().out
    assert "  reference, ms" in out and "10.00, 20.00" in out
    assert "  fused:cpp, ms" in out and "2.00, 2.00" in out
