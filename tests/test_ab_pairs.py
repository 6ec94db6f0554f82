"""benchmarks/ab_pairs.py: runs are paired by their suffix, the ratio is B over A per
pair, rows missing from either run or not ok are left out, scaling sweeps pair point by
point, and no pairs is an error."""

import json
import os

import pytest
from helpers import load_benchmark_script


@pytest.fixture(scope="module")
def ab():
    return load_benchmark_script("ab_pairs.py")


def _write(folder, name, fused, ref=100.0, status="ok", extra_shape=False):
    shapes = [{"name": "edt-train", "results": [
        {"impl": "reference", "status": "ok", "times_ms": {"fwd": ref, "fwd+bwd": 3 * ref}},
        {"impl": "fused:cpp", "status": status, "times_ms": {"fwd": fused, "fwd+bwd": 3 * fused, "infer": None}},
    ]}]
    if extra_shape:
        shapes.append({"name": "ipt-train", "results": [
            {"impl": "fused:cpp", "status": "ok", "times_ms": {"fwd": 1.0}}]})
    (folder / f"{name}.json").write_text(json.dumps({"shapes": shapes}))


def test_pairs_by_suffix_and_ratio_b_over_a(ab, tmp_path):
    _write(tmp_path, "old-1", 10.0)
    _write(tmp_path, "new-1", 8.0)
    _write(tmp_path, "old-2", 10.0)
    _write(tmp_path, "new-2", 12.0)
    _write(tmp_path, "old-r1", 20.0, extra_shape=True)
    _write(tmp_path, "new-r1", 10.0)
    _write(tmp_path, "old-3", 1.0)  # no partner: left out
    pairs = ab.pair_files(str(tmp_path), "old", "new")
    assert [os.path.basename(a) for a, _ in pairs] == ["old-1.json", "old-2.json", "old-r1.json"]
    rows = {(r["shape"], r["column"]): r for r in ab.summarise(pairs, "fused:cpp")}
    # ipt-train is in one run of a pair only; infer is None: neither is compared.
    assert set(rows) == {("edt-train", "fwd"), ("edt-train", "fwd+bwd")}
    r = rows[("edt-train", "fwd")]
    assert r["pairs"] == 3
    assert r["median_ratio"] == pytest.approx(0.8)  # ratios 0.8, 1.2, 0.5
    assert r["b_faster"] == 2
    assert r["a_median_ms"] == pytest.approx(10.0) and r["b_median_ms"] == pytest.approx(10.0)
    assert ab.main([str(tmp_path), "old", "new"]) == 0


def test_failed_rows_and_missing_pairs(ab, tmp_path, capsys):
    _write(tmp_path, "a-1", 10.0, status="failed")
    _write(tmp_path, "b-1", 10.0)
    assert ab.summarise(ab.pair_files(str(tmp_path), "a", "b"), "fused:cpp") == []
    assert ab.main([str(tmp_path), "a", "b"]) == 1
    assert "no 'fused:cpp' times" in capsys.readouterr().err
    assert ab.main([str(tmp_path), "a", "c"]) == 1
    assert "no pairs" in capsys.readouterr().err


def _write_scaling(folder, name, times):
    sweep = {"x": "N", "xs": [1, 2], "points": [{"name": "N1"}, {"name": "N2"}],
             "fwd_bwd_ms": {"reference": [9.0, 12.0], "fused:cpp": times}}
    (folder / f"{name}.json").write_text(json.dumps({"shapes": [], "scaling": {"batch": sweep}}))


def test_scaling_points(ab, tmp_path, capsys):
    _write_scaling(tmp_path, "a-1", [2.0, 4.0])
    _write_scaling(tmp_path, "b-1", [1.0, None])  # a point that did not run is left out
    _write_scaling(tmp_path, "a-2", [2.0, 4.0])
    _write_scaling(tmp_path, "b-2", [3.0, 3.0])
    rows = ab.summarise(ab.pair_files(str(tmp_path), "a", "b"), "fused:cpp")
    assert [(r["shape"], r["column"], r["pairs"]) for r in rows] == [
        ("batch N1", "fwd+bwd", 2), ("batch N2", "fwd+bwd", 1)]
    assert rows[0]["median_ratio"] == pytest.approx(1.0)  # ratios 0.5 and 1.5
    assert rows[1]["median_ratio"] == pytest.approx(0.75)
    assert ab.main([str(tmp_path), "a", "b"]) == 0
    assert "batch N1" in capsys.readouterr().out
