"""The C++ kernels that have several builds (AVX2+FMA and baseline x86-64: the skinny
products, the small FFTs, the local branch's tiles and combine_out's backward rows; and
AVX-512: the skinny products and the small FFTs) pass the C++ parity tests with each. A machine runs one
build by default (AVX-512 where the CPU has it, except on AMD family 19h, Zen 4, whose
512-bit operations run as two 256-bit halves; else AVX2; else the baseline), and
ADAPTIR_CPU_AVX512=0 (AVX2), ADAPTIR_CPU_AVX512=1 (AVX-512 where the CPU has it) or
ADAPTIR_CPU_AVX2=0 (baseline) selects another, which these tests do in child processes.
The AVX-512 and AVX2 builds give bitwise equal results."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest
import torch

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


def _cpuinfo() -> dict:
    """The fields of the first processor in /proc/cpuinfo ({} without it)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())
        elif fields:
            break
    return fields


def _cpu_flags() -> set:
    return set(_cpuinfo().get("flags", "").split())


def _amd_family_19h() -> bool:
    """An AMD CPU of family 19h (Zen 3, Zen 4)."""
    fields = _cpuinfo()
    return fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"


def _clean_env(**extra) -> dict:
    """This process's environment without the build switches, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTIR_CPU_AVX2", "ADAPTIR_CPU_AVX512")}
    env.update(extra)
    return env


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
    want = "baseline"
    if has_build and {"avx2", "fma"} <= flags:
        want = "avx512" if {"avx512f", "avx512vl"} <= flags and not _amd_family_19h() else "avx2"
    assert _child_isa(_clean_env()) == want
    if not {"ADAPTIR_CPU_AVX2", "ADAPTIR_CPU_AVX512"} & set(os.environ):
        assert _ext.require().cpu_isa() == want


def test_env_selects_the_baseline_build():
    assert _child_isa(dict(os.environ, ADAPTIR_CPU_AVX2="0")) == "baseline"
    assert _child_isa(dict(os.environ, ADAPTIR_CPU_AVX2="0", ADAPTIR_CPU_AVX512="1")) == "baseline"


def _default_isa() -> str:
    return _child_isa(_clean_env())


def test_env_selects_the_avx2_build():
    if _default_isa() == "baseline":
        pytest.skip("this CPU or compiler has no AVX2 build to select")
    assert _child_isa(dict(os.environ, ADAPTIR_CPU_AVX512="0")) == "avx2"


def _can_avx512() -> bool:
    """The CPU and the build run the AVX-512 products when asked to."""
    return _child_isa(_clean_env(ADAPTIR_CPU_AVX512="1")) == "avx512"


def test_env_selects_the_avx512_build_where_the_cpu_has_it():
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    if _default_isa() == "baseline":
        pytest.skip("this CPU or compiler has no AVX2 build, so no AVX-512 one either")
    want = "avx512" if {"avx512f", "avx512vl"} <= flags else "avx2"
    assert _child_isa(_clean_env(ADAPTIR_CPU_AVX512="1")) == want
    # "0" wins over the CPU, and the baseline switch over both.
    assert _child_isa(_clean_env(ADAPTIR_CPU_AVX512="0")) == "avx2"
    assert _child_isa(_clean_env(ADAPTIR_CPU_AVX2="0", ADAPTIR_CPU_AVX512="1")) == "baseline"


_RUN_MODULE = """
import sys, torch
import adaptir_kernels._C as c
from adaptir_kernels import AdaptIR
torch.manual_seed(0)
out = {"isa": c.cpu_isa()}
for name, make, shape in [
        ("edt", lambda: AdaptIR(180, backend="cpp"), (2, 9, 13, 180)),
        ("edt-own-fft", lambda: AdaptIR(180, backend="cpp"), (2, 10, 12, 180)),
        ("edt-gate-tail", lambda: AdaptIR(180, backend="cpp"), (3, 5, 8, 180)),
        ("ipt", lambda: AdaptIR(576, preset="ipt", layout="lnc", backend="cpp"), (36, 3, 576))]:
    m = make()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(shape, requires_grad=True)
    y = m(x)
    y.backward(torch.randn_like(y))
    out[name] = [y.detach(), x.grad] + [p.grad for p in m.parameters()]
torch.save(out, sys.argv[1])
"""


def test_avx512_and_avx2_builds_give_bitwise_equal_modules(tmp_path):
    """The whole fused module, forward and every gradient, at EDT and IPT widths (h = 12
    and 24, C not a multiple of 16 at 180), is bitwise the same with either build."""
    if not _can_avx512():
        pytest.skip("this CPU runs no AVX-512 build (it needs AVX-512F and VL, GCC on x86-64)")
    script = tmp_path / "run.py"
    script.write_text(_RUN_MODULE)
    results = {}
    for isa, value in (("avx512", "1"), ("avx2", "0")):
        env = _clean_env(ADAPTIR_CPU_AVX512=value)
        subprocess.run([sys.executable, str(script), str(tmp_path / f"{isa}.pt")], env=env, check=True,
                       capture_output=True, text=True)
        results[isa] = torch.load(tmp_path / f"{isa}.pt")
        assert results[isa]["isa"] == isa
    for name in ("edt", "edt-own-fft", "edt-gate-tail", "ipt"):
        a, b = results["avx512"][name], results["avx2"][name]
        assert len(a) == len(b) > 10
        for i, (ta, tb) in enumerate(zip(a, b)):
            assert ta.isfinite().all() and ta.abs().sum() > 0, (name, i)
            assert ta.dtype == tb.dtype and ta.shape == tb.shape and bool((ta == tb).all()), (name, i)


def _run_cpp_parity_tests(tmp_path, env):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cpp",
           "--rootdir", str(TESTS.parent), *[str(TESTS / f) for f in CPP_TEST_FILES]]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    tail = (res.stdout + res.stderr)[-4000:]
    assert res.returncode == 0, tail
    assert " passed" in tail and "no tests ran" not in tail, tail


def test_cpp_parity_tests_pass_on_the_baseline_build(tmp_path):
    if os.environ.get("ADAPTIR_CPU_AVX2") == "0":
        pytest.skip("this process already runs the baseline build")
    _run_cpp_parity_tests(tmp_path, dict(os.environ, ADAPTIR_CPU_AVX2="0"))


def test_cpp_parity_tests_pass_on_the_other_vector_build(tmp_path):
    """The rest of the suite tests the build this process runs; this runs the C++ parity
    tests on the other of AVX-512 and AVX2, where the CPU has both."""
    isa = _ext.require().cpu_isa()
    if isa == "avx512":
        _run_cpp_parity_tests(tmp_path, dict(os.environ, ADAPTIR_CPU_AVX512="0"))
    elif isa == "avx2" and os.environ.get("ADAPTIR_CPU_AVX512") != "0" and _can_avx512():
        _run_cpp_parity_tests(tmp_path, _clean_env(ADAPTIR_CPU_AVX512="1"))
    else:
        pytest.skip(f"this process runs the {isa} build and the CPU (or ADAPTIR_CPU_AVX512=0) leaves no "
                    "other vector build to test")
