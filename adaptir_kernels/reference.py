"""The eager reference AdaptIR adapter: SPEC section 4 written as plain PyTorch.

This module is the oracle every fused backend is tested against. Its parameter names,
shapes and initial values are those of the published checkpoints (SPEC section 3), so
a published state_dict loads with strict=True.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import adapter_widths, check_layout, resolve_input
from .spectrum import irfft2_parts, rfft2


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands a contiguous gradient upstream.

    torch 2.13's CPU BatchNorm backward returns wrong input gradients when N == 1 and
    grad_output arrives channels-last-strided with a non-canonical batch stride, which
    is what the permutes of the (L, N, C) layout produce. Feeding BN a contiguous
    gradient sidesteps that kernel path.
    """

    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class AdaptIR(nn.Module):
    """AdaptIR adapter (Guo et al., NeurIPS 2024), eager reference implementation.

    Args:
        d_model: the backbone width C.
        preset: "edt" (hidden = C // 14) or "ipt" (hidden = C // 24); fills the widths
            that are not given explicitly.
        layout: "nhwc" for x of shape (N, H, W, C), "lnc" for tokens (L, N, C).
        hidden, rank, ci_hidden, proj_hidden: override the preset's widths.
    """

    def __init__(
        self,
        d_model: int,
        preset: str = "edt",
        layout: str = "nhwc",
        hidden: Optional[int] = None,
        rank: Optional[int] = None,
        ci_hidden: Optional[int] = None,
        proj_hidden: Optional[int] = None,
    ):
        super().__init__()
        widths = adapter_widths(d_model, preset, hidden, rank, ci_hidden, proj_hidden)
        self.layout = check_layout(layout)
        self.preset = preset
        self.d_model = widths.d_model
        self.hidden = h = widths.hidden
        self.rank = widths.rank
        self.ci_hidden = widths.ci_hidden
        self.proj_hidden = widths.proj_hidden

        # Registration order follows the published checkpoints' key order.
        self.conv_weight_A = nn.Parameter(torch.empty(h, widths.rank))
        self.conv_weight_B = nn.Parameter(torch.empty(widths.rank, 9))
        self.conv_bias = nn.Parameter(torch.zeros(h))
        self.head = nn.Conv2d(d_model, h, 1)
        self.BN = nn.BatchNorm2d(h)
        self.amp_fuse = nn.Conv2d(h, h, 1, groups=h)
        self.pha_fuse = nn.Conv2d(h, h, 1, groups=h)
        self.compress = nn.Conv2d(h, 1, 1)
        self.proj = nn.Sequential(
            nn.Linear(h, widths.proj_hidden), nn.GELU(), nn.Linear(widths.proj_hidden, h)
        )
        self.tail = nn.Conv2d(h, d_model, 1, bias=False)
        self.channel_interaction = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(h, widths.ci_hidden, 1),
            nn.GELU(),
            nn.Conv2d(widths.ci_hidden, h, 1),
        )
        self.spatial_interaction = nn.Conv2d(h, 1, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The published initial values: the adapter starts as an exact zero function."""
        nn.init.kaiming_uniform_(self.conv_weight_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.conv_weight_B, a=math.sqrt(5))
        nn.init.zeros_(self.conv_bias)
        self.head.reset_parameters()
        self.BN.reset_parameters()
        for gate in (self.amp_fuse, self.pha_fuse):
            nn.init.ones_(gate.weight)
            nn.init.zeros_(gate.bias)
        self.compress.reset_parameters()
        self.proj[0].reset_parameters()
        self.proj[2].reset_parameters()
        nn.init.zeros_(self.tail.weight)
        self.channel_interaction[1].reset_parameters()
        nn.init.zeros_(self.channel_interaction[3].weight)
        nn.init.zeros_(self.channel_interaction[3].bias)
        nn.init.zeros_(self.spatial_interaction.weight)
        nn.init.zeros_(self.spatial_interaction.bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, hidden={self.hidden}, rank={self.rank}, "
            f"ci_hidden={self.ci_hidden}, proj_hidden={self.proj_hidden}, layout={self.layout!r}"
        )

    # -- layout helpers -------------------------------------------------------------
    def _to_nchw(self, x: torch.Tensor, n: int, H: int, W: int) -> torch.Tensor:
        if self.layout == "nhwc":
            return x.permute(0, 3, 1, 2)
        return x.permute(1, 2, 0).reshape(n, self.d_model, H, W)

    def _from_nchw(self, y: torch.Tensor) -> torch.Tensor:
        if self.layout == "nhwc":
            return y.permute(0, 2, 3, 1)
        n, c = y.shape[:2]
        return y.reshape(n, c, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        n, H, W = resolve_input(x, self.layout, self.d_model, hw)
        out_dtype = x.dtype
        # The adapter computes in float32 (float64 stays float64 for gradcheck).
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            t = self._to_nchw(x.to(compute_dtype), n, H, W)
            u = _ContiguousGrad.apply(self.BN(self.head(t)))

            # Global branch: amplitude/phase gate in the frequency domain.
            U = rfft2(u)  # exactly real bins made exact: adaptir_kernels.spectrum
            amp = self.amp_fuse(U.abs())
            pha = self.pha_fuse(U.angle())
            # irfft2 of amp * exp(i pha), SPEC 4.1 on every device (adaptir_kernels.spectrum);
            # from the real and imaginary parts, so that torch.compile can lower it.
            g = irfft2_parts(amp * torch.cos(pha), amp * torch.sin(pha), H, W).abs()

            # Local branch: depthwise 3x3 conv with a rank-r factorised kernel.
            K = (self.conv_weight_A @ self.conv_weight_B).view(self.hidden, 1, 3, 3)
            loc = F.conv2d(u, K, self.conv_bias, padding=1, groups=self.hidden)

            # Router: softmax-weighted pooling over positions, then the proj MLP.
            scores = self.compress(u).flatten(1)
            attn = torch.softmax(scores, dim=1)
            pooled = torch.einsum("np,ncp->nc", attn, u.flatten(2))
            cs = self.proj(pooled)[:, :, None, None]

            cg = torch.sigmoid(self.channel_interaction(g))
            sg = torch.sigmoid(self.spatial_interaction(loc))
            v = cs * (cg * loc + sg * g)
            out = self._from_nchw(self.tail(v))
        return out.to(out_dtype)
