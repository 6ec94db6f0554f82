"""Fake (meta) kernels of the C++ fused operators torch.ops.adaptir_cpp.<op>[_backward].

The C++ kernels (csrc/cpu/<op>.cpp) return fresh contiguous tensors; these describe the
same shapes and dtypes without computing anything, so FakeTensor tracing
(torch.compile, torch.library.opcheck) can go through the raw C++ ops. Imported by
adaptir_kernels._ext.load() once the extension is loaded; it must only import torch.
"""

from __future__ import annotations

import torch

_NS = "adaptir_cpp::"


def _rows_n(x, layout):
    return x.shape[0] if layout == "nhwc" else x.shape[1]


def _fresh(t):
    return t.new_empty(t.shape)


def _project_in(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, eps, layout, H, W):
    torch._check(layout in ("nhwc", "lnc"), lambda: f"project_in: layout must be 'nhwc' or 'lnc', got {layout!r}")
    N, h = _rows_n(x, layout), weight.shape[0]
    u = weight.new_empty((N, h, H, W))
    return u, weight.new_empty((N, h, H, W)), weight.new_empty((h,)), weight.new_empty((h,))


def _project_in_backward(grad_u, x, xhat, weight, bn_weight, var, training, eps, layout, H, W):
    h = weight.shape[0]
    return (_fresh(x), _fresh(weight), weight.new_empty((h,)), weight.new_empty((h,)), weight.new_empty((h,)))


def _local_branch(u, conv_A, conv_B, conv_bias, si_weight, si_bias):
    N, h, H, W = u.shape
    return _fresh(u), u.new_empty((N, H, W))


def _local_branch_backward(grad_l, grad_sg, u, conv_A, conv_B, conv_bias, si_weight, si_bias):
    return tuple(_fresh(t) for t in (u, conv_A, conv_B, conv_bias, si_weight, si_bias))


def _global_branch(u, amp_w, amp_b, pha_w, pha_b):
    N, h, H, W = u.shape
    return _fresh(u), u.new_empty(u.shape[:2]), u.new_empty((N, h, (H * W + 7) // 8), dtype=torch.uint8)


def _global_branch_backward(grad_g, grad_gmean, u, g, sign, amp_w, amp_b, pha_w, pha_b):
    return tuple(u.new_empty(t.shape) for t in (u, amp_w, amp_b, pha_w, pha_b))


def _router(u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, gmean, ci1_w, ci1_b, ci3_w, ci3_b):
    return u.new_empty(u.shape[:2]), u.new_empty(u.shape[:2])


def _router_backward(grad_cs, grad_cg, u, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b,
                     gmean, ci1_w, ci1_b, ci3_w, ci3_b):
    like = (u, gmean, compress_w, compress_b, proj0_w, proj0_b, proj2_w, proj2_b, ci1_w, ci1_b, ci3_w, ci3_b)
    return tuple(u.new_empty(t.shape) for t in like)


def _combine_out(l, g, sg, cg, cs, tail_w, layout, out_dtype):
    torch._check(layout in ("nhwc", "lnc"), lambda: f"combine_out: layout must be 'nhwc' or 'lnc', got {layout!r}")
    N, h, H, W = l.shape
    C = tail_w.shape[0]
    shape = (N, H, W, C) if layout == "nhwc" else (H * W, N, C)
    return l.new_empty(shape, dtype=out_dtype)


def _combine_out_backward(grad_out, l, g, sg, cg, cs, tail_w, layout):
    return tuple(l.new_empty(t.shape) for t in (l, g, sg, cg, cs, tail_w))


def _adaptir_chain(x, running_mean, running_var, params, training, eps, layout, H, W):
    torch._check(layout in ("nhwc", "lnc"), lambda: f"adaptir_chain: layout must be 'nhwc' or 'lnc', got {layout!r}")
    h = params[0].shape[0]
    return x.new_empty(x.shape), params[0].new_empty((h,)), params[0].new_empty((h,))


def _adaptir_chain_forward(x, running_mean, running_var, params, training, eps, layout, H, W):
    out, mean, var = _adaptir_chain(x, running_mean, running_var, params, training, eps, layout, H, W)
    N, h = _rows_n(x, layout), params[0].shape[0]
    hidden = params[0].new_empty((N, h, H, W))
    g, gmean, sign = _global_branch(hidden, *params[9:13])
    return out, mean, var, _fresh(hidden), g, sign, gmean, _fresh(gmean), _fresh(gmean)


def _adaptir_chain_backward(grad_out, x, xhat, g, sign, gmean, cs, cg, var, params, training, eps, layout, H, W):
    return [_fresh(x)] + [_fresh(p) for p in params]


def _bn_running_update_(running_mean, running_var, num_batches_tracked, mean, var, momentum, count):
    return None


FAKES = {
    "project_in": _project_in,
    "project_in_backward": _project_in_backward,
    "local_branch": _local_branch,
    "local_branch_backward": _local_branch_backward,
    "global_branch": _global_branch,
    "global_branch_backward": _global_branch_backward,
    "router": _router,
    "router_backward": _router_backward,
    "combine_out": _combine_out,
    "combine_out_backward": _combine_out_backward,
    "adaptir_chain": _adaptir_chain,
    "adaptir_chain_forward": _adaptir_chain_forward,
    "adaptir_chain_backward": _adaptir_chain_backward,
    "bn_running_update_": _bn_running_update_,
}


def _register() -> None:
    ns = torch.ops.adaptir_cpp
    for name, fn in FAKES.items():
        if hasattr(ns, name):
            torch.library.register_fake(_NS + name)(fn)


_register()
