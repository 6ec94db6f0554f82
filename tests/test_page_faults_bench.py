"""benchmarks/bench_page_faults.py runs end to end: one pair of processes, with glibc's
defaults and with the tunables, each timing the reference and counting its page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts glibc's page faults: Linux only")
def test_page_fault_bench_runs(tmp_path):
    out = tmp_path / "pf.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_page_faults.py"),
                           "--impls", "reference", "--pairs", "1", "--iters", "1", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert [r["tunables"] for r in runs] == [False, True]
    for r in runs:
        assert r["impl"] == "reference" and r["shape"] == "edt-train"
        assert len(r["faults"]) == 1 and r["faults"][0] >= 0 and r["min_ms"] > 0
    assert "minor faults per fwd+bwd" in proc.stdout
