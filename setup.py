"""Build script for adaptir-kernels.

Install (torch must already be installed; the extension builds against it):
    pip install --no-build-isolation -e .
Set ADAPTIR_NO_EXT=1 to skip the C++ extension (pure-Python install). A C++ compiler
without OpenMP (Apple's clang) builds the extension without it: its kernels then run on
one thread (ADAPTIR_OPENMP=0 asks for that build anywhere).
"""

import glob
import os
import shlex
import subprocess
import sys
import tempfile

from setuptools import find_namespace_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def openmp_flags(compiler):
    """["-fopenmp"] if `compiler` (the one torch's extension build uses) builds and links an
    OpenMP program with it, else [] (the kernels guard every OpenMP use with _OPENMP)."""
    if os.environ.get("ADAPTIR_OPENMP", "") == "0":
        return []
    cxx = shlex.split(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            done = subprocess.run(cxx + ["-fopenmp", src, "-o", os.path.join(tmp, "probe")],
                                  capture_output=True, timeout=300)
            ok = done.returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    if not ok:
        print(f"adaptir-kernels: the C++ compiler ({' '.join(cxx)}) does not build OpenMP code with "
              "-fopenmp; building the extension without it, its kernels will run on one thread",
              file=sys.stderr)
        return []
    return ["-fopenmp"]


def extensions():
    if os.environ.get("ADAPTIR_NO_EXT", "") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, get_cxx_compiler

    omp = openmp_flags(get_cxx_compiler())

    # Relative paths: setuptools rejects absolute source paths. csrc/tests is
    # CMake-only; csrc/module.cpp is the Python entry point of _C.
    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
        + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
    )
    ext = CppExtension(
        name="adaptir_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        depends=sorted(
            os.path.relpath(p, ROOT)
            for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*.h"), recursive=True)
        ),
        # No -march: the binary must run on any x86-64.
        extra_compile_args={"cxx": ["-O3"] + omp},
        extra_link_args=omp,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    name="adaptir-kernels",
    version="0.1.0",
    description="Fused AdaptIR adapters: Triton kernels on NVIDIA GPUs, C++ kernels on the CPU",
    python_requires=">=3.10",
    # Namespace-aware discovery so subpackages are included even without __init__.py.
    packages=find_namespace_packages(
        include=["adaptir_kernels", "adaptir_kernels.*"], exclude=["*.__pycache__"]
    ),
    install_requires=["torch>=2.4", "numpy", "safetensors", "tqdm", "pillow", "scikit-image"],
    extras_require={
        "test": ["pytest", "scipy", "scikit-image", "pytest-benchmark", "matplotlib"],
        "triton": ["triton"],
    },
    entry_points={"console_scripts": ["adaptir = adaptir_kernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
