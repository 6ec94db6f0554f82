"""The standalone CMake build of csrc/ (library + C++ tests) configures, builds and
passes ctest against the libtorch inside the installed torch."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, timeout):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")
@pytest.mark.skipif(shutil.which("ctest") is None, reason="ctest is not on PATH")
def test_cmake_build_and_ctest(tmp_path):
    build = tmp_path / "build"
    jobs = os.environ.get("MAX_JOBS", "2")
    _run(
        [
            "cmake", "-S", str(ROOT), "-B", str(build),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        cwd=tmp_path, timeout=300,
    )
    _run(["cmake", "--build", str(build), "-j", jobs], cwd=tmp_path, timeout=1200)
    proc = _run(["ctest", "--test-dir", str(build), "--output-on-failure"], cwd=tmp_path, timeout=300)
    assert "100% tests passed" in proc.stdout
