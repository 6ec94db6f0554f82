"""Test session setup.

Without a CUDA device, Triton kernels run in Triton's interpreter on CPU tensors; the
interpreter must be chosen before triton is first imported, hence here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
