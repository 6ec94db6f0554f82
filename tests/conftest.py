"""Test session setup.

Without a CUDA device, Triton kernels run in Triton's interpreter on CPU tensors; the
interpreter must be chosen before triton is first imported, hence here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _threads_unchanged():
    """A test that changes torch's thread count must put it back: later tests compare
    results with other processes (a fresh process uses the default count), and the
    backbones' convolutions do not give bitwise equal results at every thread count."""
    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"the test left torch's thread count at {after} (it was {before})")
