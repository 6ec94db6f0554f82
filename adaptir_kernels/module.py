"""The fused AdaptIR module: the reference's parameters, forward = the fused operator chain.

The whole adapter is one autograd node (`_AdaptIRChain`) whose forward calls the five
forward operators and whose backward calls their backward operators. It saves x, the
normalised head output xhat and g (two hidden-width tensors), the signs of the inverse
transform packed 8 to a byte (1/32 of one), and per-sample vectors; u = xhat *
bn_weight + bn_bias (one pass), l and sg are recomputed in the backward.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .ops import combine_out as _combine_out
from .ops import global_branch as _global_branch
from .ops import local_branch as _local_branch
from .ops import project_in as _project_in
from .ops import router as _router
from .backends import resolve_backend
from .config import resolve_input
from .reference import AdaptIR as ReferenceAdaptIR


def _dispatch(opmod, backward: bool):
    """The operator's entry point for the chain.

    Under torch.compile the chain calls the registered custom ops, which the compiler
    traces as opaque nodes. In eager mode it calls the chosen backend's implementation
    directly: the custom-op dispatch layer costs tens of microseconds of CPU per call,
    which is more than some of the kernels themselves.
    """
    name = opmod.__name__.rsplit(".", 1)[1] + ("_backward" if backward else "")
    custom_op = getattr(opmod, name)
    table = opmod.TABLE

    def call(*args):
        if torch.compiler.is_compiling():
            return custom_op(*args)
        impl = table.get(args[-1])
        return (impl[1] if backward else impl[0])(*args[:-1])

    return call


project_in, project_in_backward = _dispatch(_project_in, False), _dispatch(_project_in, True)
local_branch, local_branch_backward = _dispatch(_local_branch, False), _dispatch(_local_branch, True)
global_branch, global_branch_backward = _dispatch(_global_branch, False), _dispatch(_global_branch, True)
router, router_backward = _dispatch(_router, False), _dispatch(_router, True)
combine_out, combine_out_backward = _dispatch(_combine_out, False), _dispatch(_combine_out, True)


class _AdaptIRChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, head_w, head_b, bn_w, bn_b, running_mean, running_var,
                conv_A, conv_B, conv_bias, si_w, si_b, amp_w, amp_b, pha_w, pha_b,
                compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                ci1_w, ci1_b, ci3_w, ci3_b, tail_w, training, eps, layout, H, W, backend):
        u, xhat, mean, var = project_in(
            x, head_w, head_b, bn_w, bn_b, running_mean, running_var, training, eps, layout, H, W, backend)
        loc, sg = local_branch(u, conv_A, conv_B, conv_bias, si_w, si_b, backend)
        g, gmean, sign = global_branch(u, amp_w, amp_b, pha_w, pha_b, backend)
        cs, cg = router(u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                            gmean, ci1_w, ci1_b, ci3_w, ci3_b, backend)
        out = combine_out(loc, g, sg, cg, cs, tail_w, layout, x.dtype, backend)
        ctx.save_for_backward(x, xhat, g, sign, gmean, cs, cg, var, head_w, bn_w, bn_b,
                              conv_A, conv_B, conv_bias, si_w, si_b, amp_w, amp_b, pha_w, pha_b,
                              compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                              ci1_w, ci1_b, ci3_w, ci3_b, tail_w)
        ctx.args = (training, eps, layout, H, W, backend)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        (x, xhat, g, sign, gmean, cs, cg, var, head_w, bn_w, bn_b,
         conv_A, conv_B, conv_bias, si_w, si_b, amp_w, amp_b, pha_w, pha_b,
         compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
         ci1_w, ci1_b, ci3_w, ci3_b, tail_w) = ctx.saved_tensors
        training, eps, layout, H, W, backend = ctx.args
        # project_in's u, as it defines it (train and eval): the BN affine of xhat.
        u = torch.addcmul(bn_b[:, None, None], xhat, bn_w[:, None, None])
        loc, sg = local_branch(u, conv_A, conv_B, conv_bias, si_w, si_b, backend)
        g_l, g_g, g_sg, g_cg, g_cs, g_tail = combine_out_backward(
            grad_out.contiguous(), loc, g, sg, cg, cs, tail_w, layout, backend)
        (gu_router, g_gmean, g_cw, g_cb, g_p0w, g_p0b, g_p2w, g_p2b,
         g_c1w, g_c1b, g_c3w, g_c3b) = router_backward(
            g_cs, g_cg, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
            gmean, ci1_w, ci1_b, ci3_w, ci3_b, backend)
        gu_global, g_aw, g_ab, g_pw, g_pb = global_branch_backward(
            g_g, g_gmean, u, g, sign, amp_w, amp_b, pha_w, pha_b, backend)
        gu_local, g_A, g_B, g_cbias, g_siw, g_sib = local_branch_backward(
            g_l, g_sg, u, conv_A, conv_B, conv_bias, si_w, si_b, backend)
        grad_u = torch.add(gu_global, gu_local)
        grad_u.add_(gu_router)
        g_x, g_hw, g_hb, g_bnw, g_bnb = project_in_backward(
            grad_u, x, xhat, head_w, bn_w, var, training, eps, layout, H, W, backend)
        return (g_x, g_hw, g_hb, g_bnw, g_bnb, None, None,
                g_A, g_B, g_cbias, g_siw, g_sib, g_aw, g_ab, g_pw, g_pb,
                g_cw, g_cb, g_p0w, g_p0b, g_p2w, g_p2b,
                g_c1w, g_c1b, g_c3w, g_c3b, g_tail,
                None, None, None, None, None, None)


class AdaptIR(ReferenceAdaptIR):
    """Fused AdaptIR adapter: same constructor, parameters and state_dict as the reference.

    Args:
        backend: "auto" (Triton for CUDA tensors, the C++ extension for CPU tensors, else
            "torch"; the environment variable ADAPTIR_BACKEND overrides it), "triton",
            "cpp" or "torch".
        Other arguments as adaptir_kernels.reference.AdaptIR.
    """

    def __init__(self, d_model: int, preset: str = "edt", layout: str = "nhwc",
                 hidden: Optional[int] = None, rank: Optional[int] = None,
                 ci_hidden: Optional[int] = None, proj_hidden: Optional[int] = None,
                 backend: str = "auto"):
        super().__init__(d_model, preset, layout, hidden, rank, ci_hidden, proj_hidden)
        from .backends import CHOICES

        if backend not in CHOICES:
            raise ValueError(f"unknown backend {backend!r}; expected one of {CHOICES}")
        self.backend = backend

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        n, H, W = resolve_input(x, self.layout, self.d_model, hw)
        backend = resolve_backend(self.backend, x.device, x.dtype)
        bn = self.BN
        training = bn.training or not bn.track_running_stats
        if training and n * H * W <= 1:
            raise ValueError(
                f"training-mode BatchNorm needs more than one value per channel, got N*H*W = {n * H * W}")
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        h, C = self.hidden, self.d_model

        def p(t, *shape):
            t = t.to(cdt)
            return t.reshape(shape) if shape else t

        with torch.autocast(device_type=x.device.type, enabled=False):
            out, mean, var = _AdaptIRChain.apply(
                x.contiguous(), p(self.head.weight, h, C), p(self.head.bias), p(bn.weight), p(bn.bias),
                bn.running_mean.to(cdt), bn.running_var.to(cdt),
                p(self.conv_weight_A), p(self.conv_weight_B), p(self.conv_bias),
                p(self.spatial_interaction.weight, h), p(self.spatial_interaction.bias),
                p(self.amp_fuse.weight, h), p(self.amp_fuse.bias), p(self.pha_fuse.weight, h), p(self.pha_fuse.bias),
                p(self.compress.weight, h), p(self.compress.bias),
                p(self.proj[0].weight), p(self.proj[0].bias), p(self.proj[2].weight), p(self.proj[2].bias),
                p(self.channel_interaction[1].weight, self.ci_hidden, h), p(self.channel_interaction[1].bias),
                p(self.channel_interaction[3].weight, h, self.ci_hidden), p(self.channel_interaction[3].bias),
                p(self.tail.weight, C, h),
                training, float(bn.eps), self.layout, H, W, backend,
            )
        if bn.training and bn.track_running_stats:
            self._update_running_stats(mean, var, n * H * W)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        bn = self.BN
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * (count / (count - 1))
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
