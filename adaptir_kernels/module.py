"""The fused AdaptIR module: the reference's parameters, forward = the fused operator chain.

The whole adapter is one autograd node (`_AdaptIRChain`) whose forward calls the five
forward operators and whose backward calls their backward operators. It saves x, the
normalised head output xhat and g (two hidden-width tensors), the signs of the inverse
transform packed 8 to a byte (1/32 of one), and per-sample vectors; u = xhat *
bn_weight + bn_bias (one pass), l and sg are recomputed in the backward.

With the "cpp" backend in eager mode the same chain runs as one C++ operator with a C++
autograd node (adaptir_cpp::adaptir_chain, csrc/cpu/chain.cpp): bitwise the same output and
gradients without Python between the operators; `CPP_CHAIN = False` turns that off.
"""

from __future__ import annotations

import os
import warnings
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


# With the "cpp" backend in eager mode the adapter runs as one C++ operator,
# adaptir_cpp::adaptir_chain, whose autograd node is C++ too (csrc/cpu/chain.cpp): the same
# operators in the same order as _AdaptIRChain, bitwise the same output and gradients, without the
# interpreter between them. False runs _AdaptIRChain instead (operator by operator, e.g.
# to time each one from Python).
CPP_CHAIN = True

_cpp_chain_ops = None


def _cpp_chain():
    """(adaptir_chain, bn_running_update_) of the C++ extension, or () where it lacks them."""
    global _cpp_chain_ops
    if _cpp_chain_ops is None:
        ns = torch.ops.adaptir_cpp
        _cpp_chain_ops = ((ns.adaptir_chain.default, ns.bn_running_update_.default)
                          if hasattr(ns, "adaptir_chain") and hasattr(ns, "bn_running_update_") else ())
    return _cpp_chain_ops


class _AdaptIRChain(torch.autograd.Function):
    """The adapter as one autograd node.

    Takes the module's parameters as they are (in `_PARAMETERS` order, compute dtype), for
    autograd, and the same in the operators' shapes (`op_params`: detached views, or None
    to view them here), which the operators read and backward keeps; the autograd graph
    holds no view node per parameter, and the gradients are returned in the parameters'
    shapes. `cfg` = (training, eps, layout, H, W, backend, views).
    """

    @staticmethod
    def forward(ctx, x, running_mean, running_var, cfg, op_params, *params):
        training, eps, layout, H, W, backend, views = cfg
        if op_params is None:
            op_params = _viewed(params, views)
        (head_w, head_b, bn_w, bn_b, conv_A, conv_B, conv_bias, si_w, si_b, amp_w, amp_b,
         pha_w, pha_b, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
         ci1_w, ci1_b, ci3_w, ci3_b, tail_w, _bn_w3, _bn_b3) = op_params
        u, xhat, mean, var = project_in(
            x, head_w, head_b, bn_w, bn_b, running_mean, running_var, training, eps, layout, H, W, backend)
        loc, sg = local_branch(u, conv_A, conv_B, conv_bias, si_w, si_b, backend)
        g, gmean, sign = global_branch(u, amp_w, amp_b, pha_w, pha_b, backend)
        cs, cg = router(u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                        gmean, ci1_w, ci1_b, ci3_w, ci3_b, backend)
        out = combine_out(loc, g, sg, cg, cs, tail_w, layout, x.dtype, backend)
        # The operator-shaped parameters are saved (views share their parameter's version
        # counter, so an in-place change before backward is still caught).
        ctx.save_for_backward(x, xhat, g, sign, gmean, cs, cg, var, *op_params)
        ctx.cfg = cfg
        ctx.param_shapes = tuple(None if v is None else p.shape for p, v in zip(params, views))
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        if torch.is_grad_enabled():
            # create_graph: the explicit backward has no derivative of its own. Compute it
            # unrecorded; differentiating its results then raises, never gives zeros.
            with torch.no_grad():
                grads = _AdaptIRChain._backward(ctx, grad_out)
            return _no_higher_order(grads)
        return _AdaptIRChain._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        x, xhat, g, sign, gmean, cs, cg, var, *op_params = ctx.saved_tensors
        training, eps, layout, H, W, backend, views = ctx.cfg
        (head_w, head_b, bn_w, bn_b, conv_A, conv_B, conv_bias, si_w, si_b, amp_w, amp_b,
         pha_w, pha_b, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
         ci1_w, ci1_b, ci3_w, ci3_b, tail_w, bn_w3, bn_b3) = op_params
        # project_in's u, as it defines it (train and eval): the BN affine of xhat. On the
        # CPU rounded as the operators round it, a product, then a sum (bit for bit the
        # forward's u); on CUDA addcmul (the Triton kernel may contract to one multiply-add).
        u = torch.addcmul(bn_b3, xhat, bn_w3) if xhat.is_cuda else xhat * bn_w3 + bn_b3
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
        grad_u = gu_global.add_(gu_local).add_(gu_router)  # gu_global is the op's own output
        g_x, g_hw, g_hb, g_bnw, g_bnb = project_in_backward(
            grad_u, x, xhat, head_w, bn_w, var, training, eps, layout, H, W, backend)
        grads = (g_hw, g_hb, g_bnw, g_bnb, g_A, g_B, g_cbias, g_siw, g_sib, g_aw, g_ab, g_pw, g_pb,
                 g_cw, g_cb, g_p0w, g_p0b, g_p2w, g_p2b, g_c1w, g_c1b, g_c3w, g_c3b, g_tail)
        return (g_x, None, None, None, None,
                *(gp if shape is None else gp.view(shape) for gp, shape in zip(grads, ctx.param_shapes)))


DOUBLE_BACKWARD_ERROR = ("the fused AdaptIR's backward is not differentiable (no double backward); "
                         "use adaptir_kernels.reference.AdaptIR for higher-order gradients")


class _NoHigherOrder(torch.autograd.Function):
    """Identity on its inputs whose backward raises DOUBLE_BACKWARD_ERROR."""

    @staticmethod
    def forward(ctx, *ts):
        return tuple(t.view_as(t) for t in ts)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)


def _no_higher_order(grads: tuple) -> tuple:
    """The backward's results, each tensor behind a _NoHigherOrder node."""
    idx = [i for i, t in enumerate(grads) if isinstance(t, torch.Tensor)]
    wrapped = _NoHigherOrder.apply(*(grads[i].detach().requires_grad_() for i in idx))
    out = list(grads)
    for i, t in zip(idx, wrapped):
        out[i] = t
    return tuple(out)


def _viewed(params, views):
    """The parameters in the operators' shapes (views: a shape, or None for as is), then
    the BN weight and bias as (h, 1, 1) for the backward's recomputation of u."""
    out = [p if v is None else p.view(v) for p, v in zip(params, views)]
    return (*out, out[2].view(-1, 1, 1), out[3].view(-1, 1, 1))


# The parameters the chain takes, in order: (attribute path, the operator's shape as a
# function of (hidden h, d_model C, ci_hidden), or None where the parameter's own shape is it).
_PARAMETERS = (
    ("head.weight", lambda h, C, ci: (h, C)), ("head.bias", None),
    ("BN.weight", None), ("BN.bias", None),
    ("conv_weight_A", None), ("conv_weight_B", None), ("conv_bias", None),
    ("spatial_interaction.weight", lambda h, C, ci: (h,)), ("spatial_interaction.bias", None),
    ("amp_fuse.weight", lambda h, C, ci: (h,)), ("amp_fuse.bias", None),
    ("pha_fuse.weight", lambda h, C, ci: (h,)), ("pha_fuse.bias", None),
    ("compress.weight", lambda h, C, ci: (h,)), ("compress.bias", None),
    ("proj.0.weight", None), ("proj.0.bias", None), ("proj.2.weight", None), ("proj.2.bias", None),
    ("channel_interaction.1.weight", lambda h, C, ci: (ci, h)), ("channel_interaction.1.bias", None),
    ("channel_interaction.3.weight", lambda h, C, ci: (h, ci)), ("channel_interaction.3.bias", None),
    ("tail.weight", lambda h, C, ci: (C, h)),
)


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
        h, C, ci = self.hidden, self.d_model, self.ci_hidden
        self._chain_views = tuple(None if view is None else view(h, C, ci) for _, view in _PARAMETERS)
        self._chain_slots = None
        self._chain_op_cache = None
        self._backend_memo = {}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        n, H, W = resolve_input(x, self.layout, self.d_model, hw)
        compiling = torch.compiler.is_compiling()
        backend = (resolve_backend(self.backend, x.device, x.dtype, self.hidden) if compiling
                   else self._backend_for(x))
        bn = self.BN
        # nn.BatchNorm2d's rule: batch statistics in training mode, and in eval mode where
        # there are no running statistics (track_running_stats turned off after
        # construction keeps them, and eval mode then still uses them).
        training = bn.training or (bn.running_mean is None and bn.running_var is None)
        if training and n * H * W <= 1:
            raise ValueError(
                f"training-mode BatchNorm needs more than one value per channel, got N*H*W = {n * H * W}")
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        params = self._chain_parameters()
        for _, _, child in self._chain_slots[1]:
            if child._forward_pre_hooks or child._forward_hooks:
                return self._forward_with_submodule_hooks(x, hw, child)
        if params[2] is None or params[3] is None:
            raise ValueError("the fused AdaptIR needs an affine BN (BN.weight and BN.bias, as in the published "
                             "checkpoints); got BatchNorm2d(affine=False): use the reference AdaptIR for it")
        cast = False
        for t in params:
            if t.dtype != cdt:
                cast = True
                break
        running_mean, running_var = bn.running_mean, bn.running_var
        if running_mean is None or running_var is None:
            # A BatchNorm without running statistics normalises with the batch's, in eval
            # mode too (training is True here), and updates nothing: placeholders, never read.
            running_mean = torch.zeros(self.hidden, dtype=cdt, device=x.device)
            running_var = torch.ones(self.hidden, dtype=cdt, device=x.device)
        if (backend == "cpp" and CPP_CHAIN and not cast and not compiling
                and running_mean.dtype == cdt and running_var.dtype == cdt
                and not torch.is_autocast_enabled("cpu") and _cpp_chain()):
            chain, update = _cpp_chain_ops
            out, mean, var = chain(x, running_mean, running_var, params, training, float(bn.eps),
                                   self.layout, H, W)
            if bn.training and bn.track_running_stats:
                update(running_mean, running_var, bn.num_batches_tracked, mean, var, bn.momentum, n * H * W)
            return out
        if cast:
            params = [t.to(cdt) for t in params]

        if running_mean.dtype != cdt:
            running_mean, running_var = running_mean.to(cdt), running_var.to(cdt)
        cfg = (training, float(bn.eps), self.layout, H, W, backend, self._chain_views)
        op_params = None if cast or compiling else self._chain_op_params(params)
        args = (x.contiguous(), running_mean, running_var, cfg, op_params, *params)
        if torch.is_autocast_enabled(x.device.type):
            # The kernels read and write x's dtype and compute in float32 themselves.
            with torch.autocast(device_type=x.device.type, enabled=False):
                out, mean, var = _AdaptIRChain.apply(*args)
        else:
            out, mean, var = _AdaptIRChain.apply(*args)
        if bn.training and bn.track_running_stats:
            self._update_running_stats(mean, var, n * H * W)
        return out

    def _forward_with_submodule_hooks(self, x: torch.Tensor, hw, child: torch.nn.Module) -> torch.Tensor:
        """The eager reference's forward, which calls the submodules: the operators read
        the parameters directly and would skip a hook on a submodule (the hook form of
        torch.nn.utils.weight_norm / spectral_norm recomputes the weight in one)."""
        if not getattr(self, "_hooks_warned", False):
            self._hooks_warned = True
            warnings.warn(f"AdaptIR: a submodule ({type(child).__name__}) has forward hooks, which the fused "
                          "operators would skip; this adapter runs the eager reference path instead "
                          "(torch.nn.utils.parametrize works with the fused path)", stacklevel=3)
        return ReferenceAdaptIR.forward(self, x, hw)

    def _chain_parameters(self) -> list:
        """The parameters in `_PARAMETERS` order, read straight from their modules' dicts.

        nn.Module attribute lookups cost about 4 us per parameter, a tenth of a millisecond
        per call for the 24. The (dict, name) slots are found once and kept while every
        submodule on their paths is still the same object (a submodule assigned anew
        rebuilds them); parameters replaced inside a module's dict are seen as they are.
        """
        slots = self._chain_slots
        if slots is not None:
            for owner, name, child in slots[1]:
                if owner._modules.get(name) is not child:
                    slots = None
                    break
        if slots is None:
            slots = self._chain_slots = self._find_chain_slots()
        try:
            return [d[name] for d, name in slots[0]]
        except KeyError:
            # A parameter that is no longer in its module's parameter dict: under
            # torch.nn.utils.parametrize (the attribute computes it), or replaced by a
            # buffer or plain tensor. Read it as an attribute, as the reference does.
            return [getattr(owner, name) for owner, name in slots[2]]

    def _backend_for(self, x: torch.Tensor) -> str:
        """resolve_backend's answer for x, kept per (backend, device, dtype, ADAPTIR_BACKEND).

        Resolving takes tens of microseconds inside a training step (an import statement,
        the extension's checks), against a dictionary lookup. An answer that raised is
        not kept: the error repeats on every call.
        """
        requested = self.backend
        key = (requested, x.device, x.dtype,
               os.environ.get("ADAPTIR_BACKEND") if requested == "auto" else None)
        backend = self._backend_memo.get(key)
        if backend is None:
            backend = self._backend_memo[key] = resolve_backend(requested, x.device, x.dtype, self.hidden)
        return backend

    def _chain_op_params(self, params: list) -> tuple:
        """The parameters in the operators' shapes, as detached views kept between calls.

        A view costs a dispatcher call, and a training step's adapter makes 18 of them
        otherwise (each slow inside a step, its code out of the caches). A kept view
        is valid while its parameter is the same tensor on the same storage: values
        changed in place (optimizer steps, load_state_dict) are seen through it; a
        parameter replaced, or given new data (.data =, .to()), gets a new view.
        """
        cache = self._chain_op_cache
        try:
            if cache is not None and all(p is q and ptr == p.data_ptr() and shape == p.shape
                                         for p, (q, ptr, shape) in zip(params, cache[0])):
                return cache[1]
            keys = tuple((p, p.data_ptr(), p.shape) for p in params)
        except RuntimeError:
            # A parameter without storage (a torch.func transform's wrapper, a tensor
            # subclass): nothing to key a cache on; the chain views it itself, and
            # autograd says what it cannot do with it.
            return None
        self._chain_op_cache = (keys, _viewed([p.detach() for p in params], self._chain_views))
        return self._chain_op_cache[1]

    def _find_chain_slots(self):
        params, path, owners = [], {}, []
        for dotted, _ in _PARAMETERS:
            *mods, leaf = dotted.split(".")
            owner = self
            for name in mods:
                child = owner._modules[name]
                path[(id(owner), name)] = (owner, name, child)
                owner = child
            params.append((owner._parameters, leaf))
            owners.append((owner, leaf))
        return tuple(params), tuple(path.values()), tuple(owners)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        bn = self.BN
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        running_mean, running_var = bn.running_mean, bn.running_var
        if mean.dtype != running_mean.dtype:
            mean, var = mean.to(running_mean.dtype), var.to(running_var.dtype)
        # BatchNorm2d's update, (1 - f) * running + f * batch (the variance unbiased), as
        # two in-place ops repeated: inside a training step each new kind of small op costs
        # tens of microseconds the first time (its code is out of the caches), a repeat a few.
        running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        running_var.mul_(1 - factor).add_(var, alpha=factor * count / (count - 1))
