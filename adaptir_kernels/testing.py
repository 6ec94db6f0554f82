"""Helpers for parity tests and benchmarks of adapters."""

from __future__ import annotations

import torch


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Draw every parameter and the BN running statistics at random: the published init
    zeroes tail and both gates, which would make any comparison or timing vacuous."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * std)
    for name, buf in module.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.2)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    return module
