"""`adaptir bench` on tiny shapes: the table and JSON structure, the correctness check
catching a broken backend, torch.compile failures recorded rather than raised, and the
measurement helpers (saved bytes, floor)."""

from __future__ import annotations

import json

import pytest
import torch

from adaptir_kernels import _ext, bench, cli
from adaptir_kernels.backends import cpp_available
from adaptir_kernels.ops import combine_out as combine_out_op

FAST = ["bench", "--tiny", "--backends", "torch", "--repeats", "1", "--warmup", "0"]


def _no_compile(*args, **kwargs):
    raise RuntimeError("torch.compile is switched off in this test")


def test_bench_tiny_table_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "compile", _no_compile)
    js, md = tmp_path / "out" / "bench.json", tmp_path / "bench.md"
    status = cli.main(FAST + ["--device", "cpu", "--json", str(js), "--markdown", str(md)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "PASS  torch" in out and "FAIL" not in out
    assert "fused:triton" not in out.split("Left out:")[0]  # never timed on the CPU

    res = json.loads(js.read_text())
    env = res["environment"]
    for key in ("device", "device_name", "torch", "triton", "threads", "date"):
        assert key in env
    assert env["device"] == "cpu" and res["mode"] == "tiny"
    assert res["command"].startswith("adaptir bench --tiny")
    assert res["floor"]["copy_GBps"] > 0 and res["floor"]["matmul_GFLOPs"] > 0
    assert [c["backend"] for c in res["check"]] == ["torch"] * 3 and all(c["passed"] for c in res["check"])
    assert [c["shape"] for c in res["check"]] == ["check-nhwc", "check-lnc", "check-fft"]
    assert "revision" in env
    if cpp_available():
        assert env["cpu_isa"] == _ext.require().cpu_isa() in ("avx512", "avx2", "baseline")
        assert f"C++ vector kernels: {env['cpu_isa']}" in md.read_text()
    else:
        assert env["cpu_isa"] is None
    assert [s["name"] for s in res["shapes"]] == [s.name for s in bench.TINY_SHAPES]

    for sd in res["shapes"]:
        rows = {r["impl"]: r for r in sd["results"]}
        expected = ["reference", "fused:torch", "compile:fwd"] + (["compile:fwd+bwd"] if sd["train"] else [])
        assert [r["impl"] for r in sd["results"]] == expected
        cols = ["infer", "fwd", "bwd", "fwd+bwd"] if sd["train"] else ["infer"]
        assert list(sd["floor_ms"]) == cols and all(v > 0 for v in sd["floor_ms"].values())
        for impl in ("reference", "fused:torch"):
            r = rows[impl]
            assert r["status"] == "ok"
            assert sorted(r["times_ms"]) == sorted(cols) and all(t > 0 for t in r["times_ms"].values())
            assert sorted(r["speedup"]) == sorted(cols) and sorted(r["floor_fraction"]) == sorted(cols)
        assert rows["reference"]["speedup"]["infer"] == pytest.approx(1.0)
        if sd["train"]:
            # the fused chain keeps xhat, g and the packed signs of y (2 hidden-width tensors and
            # a bit per value), plus per-sample vectors that weigh more at these tiny sizes; the
            # eager chain many more
            assert 2.0 < rows["fused:torch"]["saved_hidden_units"] < 2.5
            assert rows["reference"]["saved_hidden_units"] > rows["fused:torch"]["saved_hidden_units"]
            assert rows["reference"]["saved_bytes"] >= rows["reference"]["saved_activation_bytes"] > 0
        for impl in expected[2:]:
            assert rows[impl]["status"].startswith("compile failed: RuntimeError: torch.compile is switched off")
            assert rows[impl]["times_ms"] == {}

    text = md.read_text()
    assert "| implementation | infer | fwd | bwd | fwd+bwd |" in text
    assert "compile failed: RuntimeError" in text and "PASS torch" in text
    assert "compile:fwd+bwd  compile failed" in out


def test_bench_tiny_scaling(tmp_path, capsys):
    js, md = tmp_path / "scaling.json", tmp_path / "scaling.md"
    status = cli.main(FAST + ["--device", "cpu", "--scaling", "--json", str(js), "--markdown", str(md)])
    out = capsys.readouterr().out
    assert status == 0, out
    sweeps = json.loads(js.read_text())["scaling"]
    assert list(sweeps) == ["spatial", "width", "batch"]
    for sweep, shapes in bench.scaling_shapes("tiny").items():
        d = sweeps[sweep]
        assert d["x"] == bench.SCALING_X[sweep]
        assert d["xs"] == [bench.scaling_x(sweep, s) for s in shapes]
        assert [p["name"] for p in d["points"]] == [s.name for s in shapes]
        assert list(d["fwd_bwd_ms"]) == ["reference", "fused:torch"]
        for times in d["fwd_bwd_ms"].values():
            assert len(times) == len(shapes) and all(t > 0 for t in times)
    batch = sweeps["batch"]
    assert batch["xs"] == list(bench.SCALING_BATCH["tiny"])
    assert {(p["H"], p["W"], p["C"]) for p in batch["points"]} == {(5, 5, 56)}
    text = md.read_text()
    assert "### Scaling: forward+backward time against the batch N (d_model 56, 5x5)" in text
    assert "| N (k: time ~ x^k from the previous point) | reference | fused:torch |" in text
    assert "Scaling: forward+backward time against the batch N" in out


def _wrong_output(*args):
    out = combine_out_op.forward_torch(*args)
    return out * 1.5


def _crash(*args):
    raise RuntimeError("kernel exploded")


@pytest.mark.parametrize("broken", [_wrong_output, _crash], ids=["wrong-values", "raises"])
def test_bench_catches_broken_backend(tmp_path, monkeypatch, capsys, broken):
    table = combine_out_op.TABLE._impls
    monkeypatch.setitem(table, "torch", (broken, table["torch"][1]))
    js = tmp_path / "bench.json"
    status = cli.main(FAST + ["--device", "cpu", "--no-compile", "--only", "tiny-infer", "--json", str(js)])
    out = capsys.readouterr().out
    assert status != 0
    assert "FAIL  torch" in out and "FAIL:" in out
    res = json.loads(js.read_text())
    assert not any(c["passed"] for c in res["check"])
    if broken is _crash:
        assert "kernel exploded" in res["check"][0]["error"]
    else:
        assert res["check"][0]["out_err"] > 0.1
    # a backend that fails the check is not timed
    assert [r["impl"] for r in res["shapes"][0]["results"]] == ["reference"]
    assert any("failed the correctness check" in s for s in res["skipped"])


def test_compile_budget_spent_is_recorded(tmp_path, capsys):
    js = tmp_path / "bench.json"
    status = cli.main(FAST + ["--device", "cpu", "--only", "tiny-nhwc", "--compile-budget", "0", "--json", str(js)])
    assert status == 0
    res = json.loads(js.read_text())
    rows = {r["impl"]: r for r in res["shapes"][0]["results"]}
    assert rows["compile:fwd"]["status"].startswith("skipped: compile time budget")
    assert rows["compile:fwd+bwd"]["status"].startswith("skipped: compile time budget")
    assert sum("compile time budget" in s for s in res["skipped"]) == 2


def test_compile_child_stopped_at_budget():
    shape = bench.TINY_SHAPES[1]
    logs = []
    res = bench._run_compile_tasks_budgeted([(shape, "fwd+bwd"), (shape, "fwd")], "cpu", 0, 1, 0, 1.0, logs.append)
    assert set(res) == {(shape.name, "fwd+bwd"), (shape.name, "fwd")}
    assert all(r["status"].startswith("skipped: compile time budget 1 s spent") for r in res.values())


def test_compile_task_records_failure(monkeypatch):
    monkeypatch.setattr(torch, "compile", _no_compile)
    r = bench.compile_task(bench.TINY_SHAPES[1], "fwd+bwd", "cpu", 0, 1)
    assert r["status"] == "compile failed: RuntimeError: torch.compile is switched off in this test"


def test_saved_bytes_counts_each_storage_once():
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)

    def forward(t):
        return (t[:2] * t[2:]).sum() + (t * w).exp().sum()  # two views of x, x itself, w, exp's result

    total, own = bench.saved_bytes(forward, x, exclude=[x, w])
    assert total == x.numel() * 4 + w.numel() * 4 + x.numel() * 4
    assert own == x.numel() * 4


def test_floor_is_additive():
    floor = {"copy_GBps": 10.0, "matmul_GFLOPs": 100.0}
    shape = bench.SPEC_SHAPES[1]
    f = bench.floor_ms(shape, floor)
    assert f["fwd+bwd"] == pytest.approx(f["fwd"] + f["bwd"])
    passes = shape.rows * shape.C * 4 / 10e9 * 1e3
    assert f["fwd"] > 2 * passes and f["fwd+bwd"] > 5 * passes
    assert list(bench.floor_ms(bench.SPEC_SHAPES[2], floor)) == ["infer"]


def test_source_revision_in_a_clone_and_a_worktree(tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args, cwd):
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    repo = tmp_path / "repo"
    (repo / "adaptir_kernels").mkdir(parents=True)
    (repo / "adaptir_kernels" / "x.py").write_text("a = 1\n")
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    assert bench.source_revision(str(repo)) == head
    (repo / "adaptir_kernels" / "x.py").write_text("a = 2\n")
    assert bench.source_revision(str(repo)) == head + "+dirty"
    tree = tmp_path / "tree"
    git("worktree", "add", "-q", str(tree), "HEAD", cwd=repo)
    assert (tree / ".git").is_file()
    assert bench.source_revision(str(tree)) == head
    assert bench.source_revision(str(tmp_path)) is None
