"""The GPU scripts work before a GPU is lent: without CUDA, gpu_check.sh and
gpu_launch_cost.py stop with a clear message (exit status 2) and check nothing, and
gpu_bench.py runs end to end on tiny shapes in Triton's CPU interpreter, parity check and
table included."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="checks the scripts' behaviour on a machine without CUDA")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_gpu_check_without_cuda(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), str(out)],
                         env=_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    summary = (out / "summary.txt").read_text()
    assert "no CUDA device" in summary and "nothing was checked" in summary
    assert sorted(p.name for p in out.iterdir()) == ["summary.txt"]


def test_launch_cost_without_cuda(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_launch_cost.py"), "--out",
                          str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no CUDA device" in res.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_gpu_bench_dry_run_in_the_interpreter(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_bench.py"), "--out", str(tmp_path),
                          "--only", "edt-train", "--no-compile"],
                         env=_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    shape = data["shapes"]["edt-train"]
    assert set(shape["impls"]) == {"eager", "fused-triton", "fused-torch"}
    for impl, err in shape["check"].items():
        assert err["out"] < 1e-5 and err["grad_x"] < 1e-4 and err["worst_param_grad"] < 1e-4, (impl, err)
    table = (tmp_path / "bench.md").read_text()
    assert "| fused-triton |" in table and "Targets:" in table
