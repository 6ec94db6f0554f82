"""Triton kernels of the fused operators, one module per operator (see README.md here).

Imported lazily by the backend table (adaptir_kernels/ops/_registry.py); importing this
package needs triton, and CPU tensors need TRITON_INTERPRET=1 set before triton loads.
"""
