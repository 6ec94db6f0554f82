"""Output allocation for compiled kernels, with NaN poisoning for tests.

Kernels allocate their outputs through `empty` / `empty_like`. While poisoning is on
(`poisoned()` context, used by the parity tests), every fresh buffer is filled with NaN
first, so an element a kernel forgets to write shows up as NaN instead of passing by
luck with whatever memory held before.
"""

from __future__ import annotations

import contextlib

import torch

_POISON = False


def poisoning() -> bool:
    return _POISON


@contextlib.contextmanager
def poisoned(on: bool = True):
    global _POISON
    prev, _POISON = _POISON, on
    try:
        yield
    finally:
        _POISON = prev


def _fill(t: torch.Tensor) -> torch.Tensor:
    if _POISON:
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


def empty(shape, *, dtype, device) -> torch.Tensor:
    return _fill(torch.empty(shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return _fill(torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device))
