"""The backend table every fused operator keeps.

Each operator has a forward and a backward implementation per backend, all with the
same positional signature (the operator's custom-op signature without `backend`):

    "torch"  : the composite written in the operator's own file;
    "cpp"    : torch.ops.adaptir_cpp.<op> and torch.ops.adaptir_cpp.<op>_backward;
    "triton" : adaptir_kernels.triton.<op>.forward / .backward.

Compiled backends are looked up lazily, so importing the package never needs them.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple

import torch

Impl = Tuple[Callable, Callable]


class BackendTable:
    def __init__(self, op: str, torch_impl: Impl, compiled: Tuple[str, ...] = ("cpp", "triton")):
        self.op = op
        self.compiled = compiled
        self._impls: Dict[str, Impl] = {"torch": torch_impl}

    def register(self, backend: str, forward: Callable, backward: Callable) -> None:
        self._impls[backend] = (forward, backward)

    def get(self, backend: str) -> Impl:
        impl = self._impls.get(backend)
        if impl is not None:
            return impl
        if backend not in ("cpp", "triton"):
            raise ValueError(f"{self.op}: unknown backend {backend!r}; expected 'torch', 'cpp' or 'triton'")
        if backend not in self.compiled:
            # This operator is small enough that every backend shares the composite.
            return self._impls["torch"]
        if backend == "cpp":
            from .. import _ext

            _ext.require()
            ns = torch.ops.adaptir_cpp
            if not (hasattr(ns, self.op) and hasattr(ns, self.op + "_backward")):
                raise RuntimeError(f"the C++ extension has no kernel for operator {self.op!r}")
            impl = (getattr(ns, self.op), getattr(ns, self.op + "_backward"))
        else:
            try:
                mod = importlib.import_module(f"adaptir_kernels.triton.{self.op}")
            except ModuleNotFoundError as err:
                raise RuntimeError(f"no Triton kernel for operator {self.op!r}: {err}") from err
            impl = (mod.forward, mod.backward)
        self._impls[backend] = impl
        return impl

    def forward(self, backend: str) -> Callable:
        return self.get(backend)[0]

    def backward(self, backend: str) -> Callable:
        return self.get(backend)[1]


def zeros_if_none(grad, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad.contiguous()
