"""The C++ kernels that have two builds (AVX2+FMA and baseline x86-64: the skinny
products, the small FFTs, the local branch's tiles and combine_out's backward rows)
pass the C++ parity tests with either. A machine with AVX2 runs only the AVX2 build
unless ADAPTIR_CPU_AVX2=0 selects the baseline one, which these tests do in a child
process."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from adaptir_kernels import _ext
from adaptir_kernels.backends import cpp_available

pytestmark = pytest.mark.skipif(not cpp_available(), reason="C++ extension not built")

TESTS = pathlib.Path(__file__).resolve().parent
CPP_TEST_FILES = ["test_local_branch.py", "test_project_in.py", "test_combine_out.py", "test_global_branch.py",
                  "test_router.py", "test_cpp_chain.py", "test_cpp_ops.py", "test_module.py"]


def _child_isa(env) -> str:
    code = "import torch, adaptir_kernels._C as c; print(c.cpu_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def _cpu_flags() -> set:
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _compiler_is_clang() -> bool:
    from torch.utils.cpp_extension import get_cxx_compiler

    try:
        out = subprocess.run([get_cxx_compiler(), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "clang" in out.lower()


def test_default_isa_follows_the_cpu():
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    # The AVX2 builds are compiled with GCC on x86-64 only (csrc/cpu/isa.cpp).
    has_build = platform.machine() in ("x86_64", "AMD64") and not _compiler_is_clang()
    want = "avx2" if has_build and {"avx2", "fma"} <= flags else "baseline"
    assert _ext.require().cpu_isa() == want
    env = {k: v for k, v in os.environ.items() if k != "ADAPTIR_CPU_AVX2"}
    assert _child_isa(env) == want


def test_env_selects_the_baseline_build():
    assert _child_isa(dict(os.environ, ADAPTIR_CPU_AVX2="0")) == "baseline"


def test_cpp_parity_tests_pass_on_the_baseline_build(tmp_path):
    if os.environ.get("ADAPTIR_CPU_AVX2") == "0":
        pytest.skip("this process already runs the baseline build")
    env = dict(os.environ, ADAPTIR_CPU_AVX2="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cpp",
           "--rootdir", str(TESTS.parent), *[str(TESTS / f) for f in CPP_TEST_FILES]]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    tail = (res.stdout + res.stderr)[-4000:]
    assert res.returncode == 0, tail
    assert " passed" in tail and "no tests ran" not in tail, tail
