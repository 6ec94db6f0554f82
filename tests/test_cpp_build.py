"""The standalone CMake build of csrc/ (library + C++ tests) configures, builds and
passes ctest against the libtorch inside the installed torch; setup.py builds the
extension without OpenMP where the compiler lacks it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
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
    # The micro-benchmark builds too and runs on a small case: a line per build and case.
    proc = _run([str(build / "bench_skinny_gemm"), "40", "5", "100", "30", "1"], cwd=tmp_path, timeout=120)
    lines = proc.stdout.splitlines()
    if platform.machine() in ("x86_64", "AMD64"):
        assert lines[0].startswith("FMA peak"), proc.stdout
    timed = [line.split()[:2] for line in lines if "rows_dot" in line]
    assert ["baseline", "hot"] in timed and ["baseline", "mem"] in timed, proc.stdout
    assert len(timed) % 2 == 0 and all(case in ("hot", "mem") for _, case in timed), proc.stdout


def _setup_version(**env):
    """`python setup.py --version` with `env` added: runs setup.py's compiler probe."""
    full = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler on PATH")
def test_setup_builds_without_openmp_where_the_compiler_lacks_it(tmp_path):
    """A compiler that rejects -fopenmp (as Apple's clang does) gets an extension built
    without it, with a message, instead of a failed install; a compiler that has it, or
    ADAPTIR_OPENMP=0, gets no message."""
    real = shutil.which("c++") or shutil.which("g++")
    fake = tmp_path / "cxx-without-openmp"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do\n  [ "$a" = "-fopenmp" ] && { echo "unsupported option -fopenmp" >&2; exit 1; }\n'
                    f'done\nexec {real} "$@"\n')
    fake.chmod(0o755)
    message = "does not build OpenMP code with -fopenmp"
    assert message in _setup_version(CXX=str(fake)).stderr
    assert message not in _setup_version(CXX=real).stderr
    assert message not in _setup_version(CXX=str(fake), ADAPTIR_OPENMP="0").stderr


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")
@pytest.mark.parametrize("openmp", ["ON", "OFF"])
def test_cmake_openmp_option(tmp_path, openmp):
    """-DADAPTIR_OPENMP=OFF configures a build without OpenMP (as for a compiler without
    it); the default keeps it. Checked on the compile commands, without building."""
    import json

    build = tmp_path / "build"
    proc = _run(
        [
            "cmake", "-S", str(ROOT), "-B", str(build),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DADAPTIR_OPENMP={openmp}", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        ],
        cwd=tmp_path, timeout=300,
    )
    if openmp == "ON" and "has no OpenMP" in proc.stdout + proc.stderr:
        pytest.skip("this machine's C++ compiler has no OpenMP, so the default build has none either")
    commands = json.loads((build / "compile_commands.json").read_text())
    kernels = [c for c in commands if "/csrc/cpu/" in c["file"]]
    assert kernels, "no kernel sources in the compile commands"
    with_openmp = [c["file"] for c in kernels if "openmp" in c.get("command", " ".join(c.get("arguments", [])))]
    if openmp == "ON":
        assert len(with_openmp) == len(kernels)
    else:
        assert with_openmp == []
