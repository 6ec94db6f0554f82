"""Output allocation for compiled kernels, with NaN poisoning for tests.

Kernels allocate their outputs through `empty` / `empty_like`. While poisoning is on
(`poisoned()` context, used by the parity tests), every fresh buffer is filled with NaN
first, so an element a kernel forgets to write shows up as NaN instead of passing by
luck with whatever memory held before. The C++ extension's kernels allocate their own
outputs; `poisoned()` switches their NaN-filling on too (adaptir_cpp::set_poison).
"""

from __future__ import annotations

import contextlib

import torch

_POISON = False


def poisoning() -> bool:
    return _POISON


def _set_cpp_poison(on: bool) -> None:
    """Mirror the flag into the C++ extension (adaptir_cpp::set_poison), when it is built."""
    from . import _ext

    if _ext.load() is None:
        return
    op = getattr(torch.ops.adaptir_cpp, "set_poison", None)
    if op is not None:
        op(on)


@contextlib.contextmanager
def poisoned(on: bool = True):
    """While active, fresh kernel outputs (Python-allocated and C++-allocated) are NaN-filled."""
    global _POISON
    prev, _POISON = _POISON, on
    _set_cpp_poison(on)
    try:
        yield
    finally:
        _POISON = prev
        _set_cpp_poison(prev)


def _fill(t: torch.Tensor) -> torch.Tensor:
    if _POISON:
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


def empty(shape, *, dtype, device) -> torch.Tensor:
    return _fill(torch.empty(shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return _fill(torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device))
