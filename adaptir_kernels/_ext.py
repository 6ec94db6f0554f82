"""Loading the optional C++ extension `adaptir_kernels._C`.

Importing `_C` runs its static TORCH_LIBRARY registrations, which make the C++ ops
available as `torch.ops.adaptir_cpp.*`. Without the extension the package still
imports and the pure-torch backends work.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

_module: Optional[ModuleType] = None
_error: Optional[BaseException] = None
_tried = False


def load() -> Optional[ModuleType]:
    """Import `adaptir_kernels._C` once; returns the module, or None if it is absent."""
    global _module, _error, _tried
    if not _tried:
        _tried = True
        try:
            import torch  # noqa: F401  (libtorch must be loaded before _C)

            _module = importlib.import_module("adaptir_kernels._C")
        except ImportError as err:
            _error = err
        else:
            # Fake (meta) kernels of the adaptir_cpp ops, for torch.compile and opcheck.
            importlib.import_module("adaptir_kernels.ops._cpp_fakes")
    return _module


def available() -> bool:
    """True when the C++ extension is built and its ops are registered."""
    return load() is not None


def require() -> ModuleType:
    """Return the extension module, or raise a RuntimeError saying how to build it."""
    mod = load()
    if mod is None:
        raise RuntimeError(
            "the C++ extension adaptir_kernels._C is not built; reinstall with "
            f"`pip install --no-build-isolation -e .` (import error: {_error!r})"
        )
    return mod
