"""benchmarks/count_calls.py: what one fused adapter forward+backward issues, counted on
the CPU (Triton in its interpreter). The counts are the code path's, not the device's,
so they also guard against calls creeping back into the host-bound Triton path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from adaptir_kernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, backend, *extra, interpret=True):
    out = tmp_path / f"{backend}.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "count_calls.py"), "--backend", backend,
                          "--device", "cpu", "--shape", "2,5,6,56", "--json", str(out), *extra],
                         env=env, capture_output=True, text=True, timeout=300)
    return res, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_path(tmp_path):
    res, data = _run(tmp_path, "triton")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert data["triton_launches"] == sum(data["triton"].values()) >= 20
    aten = data["aten"]
    # Two inverse and three forward transforms; the Hermitian columns the inverse needs on
    # cuFFT are made inside the gate kernels, not by ATen calls around the transforms.
    assert aten["_fft_c2r"] == 2 and aten["_fft_r2c"] == 3
    for name in ("flip", "roll", "cat", "_conj_physical", "div"):
        assert name not in aten, (name, aten)
    # The interpreter's own calls while it runs a kernel are not counted.
    assert "set_" not in aten and "copy_" not in aten
    assert "one forward+backward" in res.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_on_cpu_sets_the_interpreter(tmp_path, monkeypatch):
    res, data = _run(tmp_path, "triton", interpret=False)  # unset: the script sets it
    assert res.returncode == 0 and data["triton_launches"] > 0, res.stderr[-2000:]
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # set otherwise: a clear refusal
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "count_calls.py"), "--device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "needs TRITON_INTERPRET=1" in res.stderr


@pytest.mark.skipif(not _ext.available(), reason="C++ extension not built")
def test_cpp_path_is_one_call_each_way(tmp_path):
    res, data = _run(tmp_path, "cpp")
    assert res.returncode == 0, res.stderr[-2000:]
    assert data["aten"] == {"adaptir_chain_forward": 1, "adaptir_chain_backward": 1, "bn_running_update_": 1,
                            "ones_like": 1}
    assert data["triton_launches"] == 0


def test_bad_shape_is_a_usage_error(tmp_path):
    res, data = _run(tmp_path, "torch", "--shape", "2,5")
    assert res.returncode == 2 and "--shape must be N,H,W,C" in res.stderr and data is None
