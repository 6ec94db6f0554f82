"""adaptir-kernels: fused AdaptIR adapters (Triton on NVIDIA GPUs, C++ on the CPU)."""

from .reference import AdaptIR as ReferenceAdaptIR

__version__ = "0.1.0"

__all__ = ["ReferenceAdaptIR", "__version__"]
