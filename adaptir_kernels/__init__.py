"""adaptir-kernels: fused AdaptIR adapters (Triton on NVIDIA GPUs, C++ on the CPU).

Public API:
    AdaptIR                the fused adapter (same parameters/state_dict as the reference)
    ReferenceAdaptIR       the eager reference adapter (the oracle)
    IPT, EDT               frozen backbones with the published checkpoint layouts
    inject, fuse, unfuse   add adapters to a backbone / swap implementations in place
    trainable_parameters, save_adapters, load_adapters
    restore, tiled_forward tiled inference for large images
"""

from .adapters import (
    AdapterLoadError,
    ParameterReport,
    adapter_modules,
    adapter_state_dict,
    fuse,
    inject,
    load_adapters,
    save_adapters,
    trainable_parameters,
    unfuse,
)
from .backbones import EDT, IPT, CheckpointMismatchError, load_pretrained
from .backends import available_backends
from .module import AdaptIR
from .reference import AdaptIR as ReferenceAdaptIR
from .tiling import restore, tiled_forward

__version__ = "0.1.0"

__all__ = [
    "AdaptIR", "ReferenceAdaptIR", "IPT", "EDT", "load_pretrained", "CheckpointMismatchError",
    "inject", "fuse", "unfuse", "trainable_parameters", "save_adapters", "load_adapters",
    "adapter_modules", "adapter_state_dict", "ParameterReport", "AdapterLoadError",
    "restore", "tiled_forward", "available_backends", "__version__",
]
