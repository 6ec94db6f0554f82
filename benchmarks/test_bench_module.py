"""The whole adapter: the eager reference and the fused module on each backend.
Training step = forward + backward in train mode; inference = eval-mode forward under
no_grad. torch.compile rows are left to `adaptir bench` (compiling takes minutes)."""

import pytest
import torch

from adaptir_kernels import bench as B


def _module(impl, shape, device):
    if impl == "reference":
        return B.build_reference(shape, device)
    return B.build_fused(shape, impl.split(":", 1)[1], device)


@pytest.mark.train_only
def test_module_train_step(timed, shape, impl, device):
    module = _module(impl, shape, device).train()
    forward = B.forward_fn(module, shape)
    x = B.make_input(shape, device, requires_grad=True)
    grad = B.make_grad(shape, device)
    params = list(module.parameters())

    def setup():
        x.grad = None
        for p in params:
            p.grad = None
        return (), {}

    timed(lambda: forward(x).backward(grad), f"module fwd+bwd {shape.name}", setup=setup)


def test_module_infer(timed, shape, impl, device):
    module = _module(impl, shape, device).eval()
    forward = B.forward_fn(module, shape)
    x = B.make_input(shape, device)

    def infer():
        with torch.no_grad():
            return forward(x)

    timed(infer, f"module infer {shape.name}")
