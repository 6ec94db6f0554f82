"""Which implementation of the fused operators runs: backend names and their selection.

Backends:
    "torch"   plain torch ops inside the fused operator boundaries (runs anywhere);
    "cpp"     the C++ extension adaptir_kernels._C (CPU tensors);
    "triton"  Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1).
"auto" picks Triton for CUDA tensors and the C++ extension for CPU tensors when they
are available, else "torch". The environment variable ADAPTIR_BACKEND overrides "auto".
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

BACKENDS = ("torch", "cpp", "triton")
CHOICES = ("auto",) + BACKENDS

# Operators every compiled backend must provide before "auto" picks it.
OPERATORS = ("project_in", "local_branch", "global_branch", "combine_out")


# Looked up once at import: torch.compile traces resolve_backend, and dynamo refuses to
# trace importlib's find_spec (a graph break, an error under fullgraph=True).
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_importable() -> bool:
    return _TRITON_FOUND


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_cpp_found = False


def cpp_available() -> bool:
    """True when the extension is built and registers every operator's CPU kernel.

    A positive answer is kept (a loaded extension stays loaded): the check costs about
    0.1 ms per call, paid by every adapter call otherwise."""
    global _cpp_found
    if _cpp_found:
        return True
    from . import _ext

    if not _ext.available():
        return False
    ns = torch.ops.adaptir_cpp
    _cpp_found = all(hasattr(ns, op) and hasattr(ns, op + "_backward") for op in OPERATORS)
    return _cpp_found


def available_backends(device: torch.device | str) -> list[str]:
    """The backends that can run on tensors of `device`, best first."""
    device = torch.device(device)
    out = []
    if triton_importable() and (device.type == "cuda" or (device.type == "cpu" and triton_interpreting())):
        out.append("triton")
    if device.type == "cpu" and cpp_available():
        out.append("cpp")
    out.append("torch")
    return out


# The widest adapter hidden width the Triton kernels take (adaptir_kernels.triton._common).
TRITON_MAX_HIDDEN = 64


def resolve_backend(requested: str, device: torch.device | str, dtype: torch.dtype = torch.float32,
                    hidden: Optional[int] = None) -> str:
    """Turn a requested backend (possibly "auto") into a concrete one, or raise a clear error.
    hidden: the adapter's hidden width, where known ("auto" on CUDA takes the torch backend
    for adapters wider than the Triton kernels take)."""
    if requested not in CHOICES:
        raise ValueError(f"unknown backend {requested!r}; expected one of {CHOICES}")
    device = torch.device(device)
    if requested == "auto":
        env = os.environ.get("ADAPTIR_BACKEND", "").strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"ADAPTIR_BACKEND={env!r} is not a backend; expected one of {BACKENDS}")
            requested = env
        else:
            if (device.type == "cuda" and triton_importable() and dtype != torch.float64
                    and (hidden is None or hidden <= TRITON_MAX_HIDDEN)):
                return "triton"
            if device.type == "cpu" and cpp_available():
                return "cpp"
            return "torch"
    if requested == "triton":
        if not triton_importable():
            raise RuntimeError("backend 'triton' was asked for, but triton is not installed (pip install triton)")
        if device.type == "cpu" and not triton_interpreting():
            raise RuntimeError(
                "backend 'triton' runs CPU tensors only in Triton's interpreter: set TRITON_INTERPRET=1 "
                "before triton is imported, or use backend 'cpp' / 'torch' on the CPU"
            )
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"backend 'triton' does not support device {device}")
        if dtype == torch.float64:
            raise TypeError("backend 'triton' computes in float32; use backend 'cpp' or 'torch' for float64 inputs")
        if hidden is not None and hidden > TRITON_MAX_HIDDEN:
            raise ValueError(f"backend 'triton' takes a hidden width up to {TRITON_MAX_HIDDEN}, got {hidden}; "
                             "use backend 'torch' (which 'auto' picks on CUDA for such adapters)")
    elif requested == "cpp":
        if device.type != "cpu":
            raise RuntimeError(f"backend 'cpp' runs on CPU tensors only, got a tensor on {device}")
        from . import _ext

        _ext.require()
        if not cpp_available():
            missing = [op for op in OPERATORS if not hasattr(torch.ops.adaptir_cpp, op)]
            raise RuntimeError(f"backend 'cpp': the C++ extension lacks the operators {missing}")
    return requested
