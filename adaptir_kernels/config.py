"""Adapter widths (SPEC section 2) and input validation shared by every implementation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

LAYOUTS = ("nhwc", "lnc")

# preset -> (d_model divisor for hidden, hidden divisor for ci_hidden)
_PRESETS = {"edt": (14, 4), "ipt": (24, 8)}


@dataclass(frozen=True)
class AdapterWidths:
    d_model: int
    hidden: int
    rank: int
    ci_hidden: int
    proj_hidden: int


def adapter_widths(
    d_model: int,
    preset: str = "edt",
    hidden: Optional[int] = None,
    rank: Optional[int] = None,
    ci_hidden: Optional[int] = None,
    proj_hidden: Optional[int] = None,
) -> AdapterWidths:
    """Fill the adapter widths from a preset; explicit arguments win."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(_PRESETS)}")
    if not isinstance(d_model, int) or d_model <= 0:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    hid_div, ci_div = _PRESETS[preset]
    h = hidden if hidden is not None else d_model // hid_div
    r = rank if rank is not None else h // 2
    ci = ci_hidden if ci_hidden is not None else h // ci_div
    ph = proj_hidden if proj_hidden is not None else h // 2
    for name, val in (("hidden", h), ("rank", r), ("ci_hidden", ci), ("proj_hidden", ph)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(
                f"{name} must be a positive int, got {val!r} (d_model={d_model}, preset={preset!r}); "
                f"pass {name}= explicitly for small d_model"
            )
    return AdapterWidths(d_model, h, r, ci, ph)


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return layout


def _hw_pair(hw) -> Tuple[int, int]:
    """hw as (H, W): two positive whole numbers (ints, or floats or 0-d tensors holding one)."""
    try:
        pair = tuple(hw)
    except TypeError:
        raise TypeError(f"hw must be a pair (H, W) of positive integers, got {hw!r}") from None
    if len(pair) != 2:
        raise ValueError(f"hw must be a pair (H, W) of positive integers, got {hw!r}")
    out = []
    for v in pair:
        try:
            iv = int(v)
            whole = iv == v
        except (TypeError, ValueError, RuntimeError):
            whole = False
        if not whole or isinstance(v, bool):
            raise TypeError(f"hw must be a pair (H, W) of positive integers, got {hw!r}")
        out.append(iv)
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"hw must be a pair (H, W) of positive integers, got {hw!r}")
    return out[0], out[1]


def resolve_input(
    x: torch.Tensor, layout: str, d_model: int, hw: Optional[Tuple[int, int]] = None
) -> Tuple[int, int, int]:
    """Validate the adapter input and return (N, H, W).

    layout "nhwc": x is (N, H, W, C); hw, if given, must equal (H, W).
    layout "lnc":  x is (L, N, C) with L = H * W; hw = (H, W), or None when L is a
    perfect square (then H = W).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if layout == "nhwc":
        if x.dim() != 4:
            raise ValueError(
                f"layout 'nhwc' expects x of shape (N, H, W, C), got {x.dim()}-d shape {tuple(x.shape)}"
            )
        n, h, w, c = x.shape
        if hw is not None and _hw_pair(hw) != (h, w):
            raise ValueError(f"hw={tuple(hw)} does not match x's spatial size (H, W)=({h}, {w})")
    elif layout == "lnc":
        if x.dim() != 3:
            raise ValueError(
                f"layout 'lnc' expects x of shape (L, N, C) with L = H*W, got {x.dim()}-d shape {tuple(x.shape)}"
            )
        length, n, c = x.shape
        if hw is None:
            side = math.isqrt(length)
            if side * side != length:
                raise ValueError(
                    f"layout 'lnc': L={length} tokens is not a perfect square; pass hw=(H, W) with H*W == L"
                )
            h = w = side
        else:
            h, w = _hw_pair(hw)
            if h * w != length:
                raise ValueError(f"layout 'lnc': hw=({h}, {w}) gives H*W={h * w}, but x has L={length} tokens")
    else:
        check_layout(layout)
        raise AssertionError("unreachable")
    if c != d_model:
        raise ValueError(f"x has {c} channels in its last dimension, but the adapter's d_model is {d_model}")
    if n < 1 or h < 1 or w < 1:
        raise ValueError(f"x has an empty dimension: shape {tuple(x.shape)}")
    return n, h, w
