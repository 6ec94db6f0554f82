"""Pieces shared by the IPT and EDT backbones: stochastic depth, symmetric padding,
checkpoint unwrapping and pre-trained weight loading with strict key checking."""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

ADAPTER_ATTR = "adaptir"


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability p."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class AdapterSlot:
    """Mixin for the backbones' own transformer blocks: an optional AdaptIR adapter
    runs in parallel with the block's FFN on the FFN's (normalised) input.

    Class attributes describe the block for `adaptir_kernels.inject`:
        adapter_layout: the adapter's token layout ("lnc" or "nhwc").
        adapter_preset: the SPEC width preset ("ipt" or "edt").
    Instances carry `d_model` and a child module slot named `adaptir` (None until
    an adapter is injected; a None child is not part of the state_dict).
    """

    adapter_layout = "nhwc"
    adapter_preset = "edt"
    _adaptir_native = True

    def _init_adapter_slot(self) -> None:
        self.register_module(ADAPTER_ATTR, None)


def symmetric_pad_index(n: int, target: int, device=None) -> torch.Tensor:
    """Indices that extend a length-n axis to `target` by mirroring with the edge sample
    repeated (x0..x[n-1], x[n-1]..x0, x0..), i.e. what concatenating the flipped image
    does in the published EDT code, for any amount of padding."""
    i = torch.arange(target, device=device)
    j = i % (2 * n)
    return torch.where(j < n, j, 2 * n - 1 - j)


def pad_symmetric(x: torch.Tensor, target_h: int, target_w: int) -> torch.Tensor:
    """Pad an (..., H, W) tensor at the bottom/right to (target_h, target_w) by mirroring."""
    h, w = x.shape[-2:]
    if target_h < h or target_w < w:
        raise ValueError(f"cannot pad ({h}, {w}) down to ({target_h}, {target_w})")
    if target_h > h:
        x = x.index_select(-2, symmetric_pad_index(h, target_h, x.device))
    if target_w > w:
        x = x.index_select(-1, symmetric_pad_index(w, target_w, x.device))
    return x


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# -- checkpoints ------------------------------------------------------------------------

_CONTAINER_KEYS = ("state_dict", "params_ema", "params", "model_state_dict", "model", "net")


def unwrap_state_dict(obj) -> Dict[str, torch.Tensor]:
    """A plain {name: tensor} dict from a checkpoint object: unwraps the usual containers
    ({"state_dict": ...}, {"params": ...}, {"model": ...}) and a DataParallel "module." prefix."""
    seen = 0
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            break
        seen += 1
        if seen > 4:
            break
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _fmt_keys(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return shown + more


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model (missing/unexpected keys or shape mismatches)."""


def load_pretrained(
    model: nn.Module,
    checkpoint: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
    allow_missing_adapters: bool = True,
    map_location: Union[str, torch.device] = "cpu",
) -> Dict[str, List[str]]:
    """Load published pre-trained weights into an IPT/EDT model with strict key checking.

    Every tensor of the model must be present in the checkpoint with the same shape, and
    every tensor of the checkpoint must exist in the model, with two documented exceptions:

    - adapter tensors (``*.adaptir.*``) may be absent from the checkpoint when
      `allow_missing_adapters` (a backbone checkpoint loaded into a model that already has
      adapters injected; they keep their initial values);
    - task heads/tails of other tasks in a multi-task checkpoint (e.g. ``head_sr_x3``
      when the EDT model was built for ``sr_2``) are skipped, as the published EDT
      test code does with its filter list. Build the model with ``extra_tasks`` to keep them.

    Returns {"skipped": [...], "missing_adapters": [...]}. Raises CheckpointMismatchError
    listing the offending keys otherwise.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint file not found: {os.fspath(checkpoint)}")
        obj = torch.load(os.fspath(checkpoint), map_location=map_location, weights_only=True)
    else:
        obj = checkpoint
    sd = unwrap_state_dict(obj)
    own = model.state_dict()
    other_task = getattr(model, "is_other_task_key", lambda k: False)

    skipped = [k for k in sd if k not in own and other_task(k)]
    unexpected = [k for k in sd if k not in own and k not in skipped]
    missing = [k for k in own if k not in sd]
    missing_adapters = [k for k in missing if allow_missing_adapters and f".{ADAPTER_ATTR}." in f".{k}"]
    missing = [k for k in missing if k not in missing_adapters]
    shape = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sd
        if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_fmt_keys(unexpected)}")
        if shape:
            parts.append(f"{len(shape)} shape mismatch(es): " + "; ".join(shape[:8]))
        raise CheckpointMismatchError(
            f"checkpoint does not fit {type(model).__name__}: " + " | ".join(parts)
        )
    load = {k: v for k, v in sd.items() if k in own}
    result = model.load_state_dict(load, strict=False)
    # Only the tolerated adapter keys can be missing here; nothing can be unexpected.
    assert not result.unexpected_keys, result.unexpected_keys
    assert set(result.missing_keys) <= set(missing_adapters), result.missing_keys
    return {"skipped": sorted(skipped), "missing_adapters": sorted(missing_adapters)}


def iter_native_blocks(model: nn.Module) -> Iterable[Tuple[str, nn.Module]]:
    for name, mod in model.named_modules():
        if getattr(type(mod), "_adaptir_native", False):
            yield name, mod
