"""Putting AdaptIR adapters into a backbone, and managing them afterwards.

    inject(model, ...)            add an adapter named `adaptir` beside the FFN of every
                                  transformer block and freeze everything else
    fuse(model) / unfuse(model)   swap eager reference adapters <-> fused adapters in place
    trainable_parameters(model)   what will train, and how many adapter parameters there are
    save_adapters / load_adapters the adapters' tensors alone, as safetensors

In every block the adapter sees the FFN's input y = norm(x), and its output is added to
the FFN's output before the block's dropout / drop-path and residual add:

    y = norm_ffn(x);  x = x + drop(mlp(y) + adaptir(y))

so parameter names are those of the published AdaptIR code
(e.g. ``body.encoder.layers.0.adaptir.head.weight``) and its checkpoints load strictly.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from .backbones.common import ADAPTER_ATTR, iter_native_blocks
from .reference import AdaptIR as ReferenceAdaptIR

__all__ = [
    "inject",
    "fuse",
    "unfuse",
    "adapter_modules",
    "trainable_parameters",
    "ParameterReport",
    "save_adapters",
    "load_adapters",
    "adapter_state_dict",
    "AdapterLoadError",
]

_CTOR_ARGS = ("d_model", "preset", "layout", "hidden", "rank", "ci_hidden", "proj_hidden")
_FORMAT = "adaptir-adapters"
_FORMAT_VERSION = "1"


# -- adapter classes ------------------------------------------------------------------


def _fused_class():
    from .module import AdaptIR as FusedAdaptIR

    return FusedAdaptIR


def _adapter_factory(backend: str):
    """(class, extra constructor kwargs) for a backend name."""
    if backend == "reference":
        return ReferenceAdaptIR, {}
    try:
        cls = _fused_class()
    except ImportError as err:
        if backend == "auto":
            warnings.warn(f"fused adapters unavailable ({err}); using the eager reference", RuntimeWarning)
            return ReferenceAdaptIR, {}
        raise ImportError(f"backend {backend!r} needs adaptir_kernels.module: {err}") from err
    return cls, {"backend": backend}


def _is_fused(m: nn.Module) -> bool:
    return isinstance(m, ReferenceAdaptIR) and type(m) is not ReferenceAdaptIR


def _adapter_dtype(block: nn.Module) -> torch.dtype:
    for p in block.parameters():
        if p.is_floating_point():
            return torch.float64 if p.dtype == torch.float64 else torch.float32
    return torch.float32


def _block_device(block: nn.Module) -> torch.device:
    for t in list(block.parameters()) + list(block.buffers()):
        return t.device
    return torch.device("cpu")


def _new_adapter(cls, kwargs: dict, device, dtype) -> nn.Module:
    with torch.device(device):
        m = cls(**kwargs)
    return m.to(dtype=dtype)


# -- the generic (hook-based) form ----------------------------------------------------


def _default_hw(block: nn.Module, args: tuple, kwargs: dict) -> Optional[Tuple[int, int]]:
    """The first (H, W) pair among a block's forward arguments (SwinIR-style blocks take
    `x_size`); None when there is none."""
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, (tuple, list, torch.Size)) and len(v) == 2 and all(
                isinstance(t, int) and not isinstance(t, bool) for t in v):
            return int(v[0]), int(v[1])
    return None


class _BlockHWHook:
    """Forward pre-hook on a block: remembers the spatial size of this call."""

    def __init__(self, hw_fn: Callable):
        self.hw_fn = hw_fn

    def __call__(self, block, args, kwargs):
        block._adaptir_hw = self.hw_fn(block, args, kwargs)
        return None


class _FFNAdapterHook:
    """Forward hook on a block's FFN: adds block.adaptir(y) to the FFN output, with y the
    FFN's input. The adapter is looked up at call time, so fuse/unfuse swaps take effect."""

    def __init__(self, block: nn.Module, layout: str):
        self.block = block
        self.layout = layout

    def __call__(self, ffn, args, kwargs, output):
        adapter = getattr(self.block, ADAPTER_ATTR, None)
        if adapter is None:
            return output
        y = args[0] if args else next(iter(kwargs.values()))
        if self.layout == "nhwc":
            return output + adapter(y)
        hw = getattr(self.block, "_adaptir_hw", None)
        if self.layout == "lnc":
            L = y.shape[0]
            return output + adapter(y, hw=hw if hw is not None else _square(L))
        # "nlc": (N, L, C) tokens, viewed as (N, H, W, C) without a copy when contiguous.
        n, L, c = y.shape
        H, W = hw if hw is not None else _square(L)
        return output + adapter(y.reshape(n, H, W, c)).reshape(n, L, c)


def _square(L: int) -> Tuple[int, int]:
    r = math.isqrt(L)
    if r * r != L:
        raise ValueError(
            f"cannot infer (H, W) for {L} tokens: pass hw_fn= to inject() (the block's forward "
            "arguments did not contain an (H, W) pair)")
    return r, r


def _infer_d_model(block: nn.Module, ffn: nn.Module, norm_attr: Optional[str]) -> int:
    if norm_attr is not None:
        norm = getattr(block, norm_attr, None)
        if norm is None:
            raise AttributeError(f"{type(block).__name__} has no attribute {norm_attr!r} (norm_attr)")
        shape = getattr(norm, "normalized_shape", None)
        if shape:
            return int(shape[-1])
        w = getattr(norm, "weight", None)
        if isinstance(w, torch.Tensor):
            return int(w.shape[0])
    for m in ffn.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError(f"cannot infer d_model of {type(block).__name__}; pass d_model=")


# -- inject -----------------------------------------------------------------------------


def inject(
    model: nn.Module,
    preset: Optional[str] = None,
    backend: str = "auto",
    *,
    block_type: Union[None, Type[nn.Module], Tuple[Type[nn.Module], ...]] = None,
    ffn_attr: str = "mlp",
    norm_attr: Optional[str] = "norm2",
    layout: str = "nhwc",
    hw_fn: Optional[Callable] = None,
    d_model: Optional[int] = None,
    hidden: Optional[int] = None,
    rank: Optional[int] = None,
    ci_hidden: Optional[int] = None,
    proj_hidden: Optional[int] = None,
    freeze: bool = True,
    train_task_head_tail: bool = False,
) -> nn.Module:
    """Add an AdaptIR adapter named ``adaptir`` to every transformer block of `model`,
    in parallel with the block's FFN, freeze every other parameter, and return `model`.

    IPT / EDT (adaptir_kernels.backbones): every encoder and decoder layer of IPT
    (tokens (L, N, C), H and W passed on) and every block of EDT ((N, H, W, C) tokens,
    read in place) get an adapter with the SPEC preset of the backbone ("ipt" / "edt").
    Parameter names then equal the published AdaptIR code's, so its checkpoints load
    with ``model.load_state_dict(sd, strict=True)``.

    Any other transformer: name the block class and its FFN attribute. A forward hook
    on the FFN adds ``block.adaptir(y)`` to the FFN's output, y being the FFN's input
    (the normalised x in a pre-norm block). SwinIR-style example::

        from basicsr.archs.swinir_arch import SwinIR, SwinTransformerBlock
        model = SwinIR(upscale=2, img_size=64, window_size=8, embed_dim=180,
                       depths=[6] * 6, num_heads=[6] * 6, upsampler="pixelshuffle")
        # SwinTransformerBlock.forward(x, x_size): x is (B, H*W, C) and
        # x = x + drop_path(mlp(norm2(x)))  ->  x + drop_path(mlp(y) + adaptir(y))
        inject(model, block_type=SwinTransformerBlock, ffn_attr="mlp", norm_attr="norm2",
               layout="nlc", preset="edt")

    Args:
        preset: adapter widths preset ("ipt" or "edt"); None = the backbone's own
            preset for IPT/EDT blocks, "edt" for other blocks.
        backend: "reference" for the eager adaptir_kernels.reference.AdaptIR; any other
            value ("auto", "triton", "cpp", "torch") builds the fused
            adaptir_kernels.module.AdaptIR(backend=backend).
        block_type: block class(es) to equip (generic form); IPT/EDT blocks are found
            without it.
        ffn_attr: attribute of the block holding its FFN module (generic form).
        norm_attr: attribute of the norm before the FFN (used to read d_model; may be
            None when d_model is given or the FFN starts with a Linear).
        layout: the FFN input's layout in the generic form: "nhwc" (N, H, W, C),
            "lnc" (L, N, C) or "nlc" (N, L, C); H, W come from `hw_fn`.
        hw_fn: hw_fn(block, args, kwargs) -> (H, W) from the block's forward arguments;
            default: the first pair of ints among them, else a square H = W.
        d_model, hidden, rank, ci_hidden, proj_hidden: adapter widths (override preset).
        freeze: set requires_grad=False on every parameter outside the adapters.
        train_task_head_tail: keep the task head/tail of IPT/EDT trainable too.
    """
    if layout not in ("nhwc", "lnc", "nlc"):
        raise ValueError(f"layout must be 'nhwc', 'lnc' or 'nlc', got {layout!r}")
    cls, extra = _adapter_factory(backend)
    widths = dict(hidden=hidden, rank=rank, ci_hidden=ci_hidden, proj_hidden=proj_hidden)

    sites: List[Tuple[str, nn.Module, bool]] = []  # (name, block, native)
    for name, blk in iter_native_blocks(model):
        sites.append((name, blk, True))
    if block_type is not None:
        types = block_type if isinstance(block_type, tuple) else (block_type,)
        native_ids = {id(b) for _, b, _ in sites}
        for name, blk in model.named_modules():
            if isinstance(blk, types) and id(blk) not in native_ids:
                sites.append((name, blk, False))
    if not sites:
        raise ValueError(
            f"no transformer blocks found in {type(model).__name__}: pass block_type= (and ffn_attr=) "
            "for backbones other than adaptir_kernels.backbones.IPT / EDT")

    for name, blk, native in sites:
        where = name or type(blk).__name__
        if getattr(blk, ADAPTER_ATTR, None) is not None:
            raise ValueError(f"block {where!r} already has an adapter")
        if native:
            ad_layout = blk.adapter_layout
            ad_preset = preset or blk.adapter_preset
            dm = d_model or blk.d_model
        else:
            if hasattr(blk, ADAPTER_ATTR):
                raise ValueError(f"block {where!r} already has an attribute {ADAPTER_ATTR!r}")
            ffn = getattr(blk, ffn_attr, None)
            if not isinstance(ffn, nn.Module):
                raise AttributeError(f"{type(blk).__name__} has no FFN module {ffn_attr!r} (ffn_attr)")
            ad_layout = "lnc" if layout == "lnc" else "nhwc"
            ad_preset = preset or "edt"
            dm = d_model or _infer_d_model(blk, ffn, norm_attr)
        adapter = _new_adapter(
            cls, dict(d_model=dm, preset=ad_preset, layout=ad_layout, **widths, **extra),
            _block_device(blk), _adapter_dtype(blk))
        setattr(blk, ADAPTER_ATTR, adapter)
        if not native:
            handles = [ffn.register_forward_hook(_FFNAdapterHook(blk, layout), with_kwargs=True)]
            if layout != "nhwc":
                handles.append(blk.register_forward_pre_hook(_BlockHWHook(hw_fn or _default_hw), with_kwargs=True))
            blk._adaptir_hook_handles = handles

    if freeze:
        keep = {id(p) for m in adapter_modules(model).values() for p in m.parameters()}
        if train_task_head_tail:
            if not hasattr(model, "task_parameters"):
                raise ValueError(f"{type(model).__name__} has no task head/tail (task_parameters())")
            keep |= {id(p) for p in model.task_parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
    return model


# -- enumerate / swap -----------------------------------------------------------------


def adapter_modules(model: nn.Module) -> Dict[str, ReferenceAdaptIR]:
    """{qualified name: adapter} for every AdaptIR adapter (reference or fused) in model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ReferenceAdaptIR)}


def _swap(model: nn.Module, old: ReferenceAdaptIR, name: str, cls, extra: dict) -> nn.Module:
    kwargs = {k: getattr(old, k) for k in _CTOR_ARGS}
    ref_t = next(iter(old.parameters()))
    new = _new_adapter(cls, {**kwargs, **extra}, ref_t.device, ref_t.dtype)
    new.load_state_dict(old.state_dict(), strict=True)  # the same layout, checked
    # Keep the very same submodules and the adapter's own Parameter / buffer objects:
    # optimizers and their state that refer to the parameters stay valid across
    # fuse/unfuse, and each submodule keeps its mode and settings (a BN put in eval mode
    # to freeze its statistics, its momentum and eps).
    for cname, child in old.named_children():
        setattr(new, cname, child)
    for pname, p in old.named_parameters(recurse=False):
        setattr(new, pname, p)
    for bname, b in old.named_buffers(recurse=False):
        new._buffers[bname] = b
    new.training = old.training
    parent_path, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)
    return new


def fuse(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every eager reference adapter in `model` by a fused one (same weights, the
    same Parameter objects) in place; fused adapters get `backend`. Returns model."""
    if backend == "reference":
        return unfuse(model)
    cls = _fused_class()
    for name, m in adapter_modules(model).items():
        if type(m) is ReferenceAdaptIR:
            _swap(model, m, name, cls, {"backend": backend})
        elif isinstance(m, cls):
            from .backends import CHOICES

            if backend not in CHOICES:
                raise ValueError(f"unknown backend {backend!r}; expected one of {CHOICES}")
            m.backend = backend
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """Replace every fused adapter in `model` by the eager reference (same weights, the
    same Parameter objects) in place. Returns model."""
    for name, m in adapter_modules(model).items():
        if _is_fused(m):
            _swap(model, m, name, ReferenceAdaptIR, {})
    return model


# -- report -----------------------------------------------------------------------------


@dataclass
class ParameterReport:
    """What trains in a model with adapters. int(report) is the trainable count."""

    trainable: int
    total: int
    num_adapters: int
    adapter_parameters: int
    per_adapter: Optional[int]
    other_trainable: List[str] = field(default_factory=list)

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __int__(self) -> int:
        return self.trainable

    def __str__(self) -> str:
        per = f"{self.num_adapters} x {self.per_adapter:,}" if self.per_adapter is not None else f"{self.num_adapters} adapters"
        s = (f"trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.fraction:.3f}%); "
             f"adapters: {per} = {self.adapter_parameters:,}")
        if self.other_trainable:
            s += f"; also trainable outside adapters: {len(self.other_trainable)} tensor(s)"
        return s


def trainable_parameters(model: nn.Module) -> ParameterReport:
    """Count trainable parameters and adapter parameters (IPT: 24 x 29,069 = 697,656;
    EDT-B: 36 x 4,817 = 173,412)."""
    adapters = adapter_modules(model)
    counts = [sum(p.numel() for p in m.parameters()) for m in adapters.values()]
    adapter_ids = {id(p) for m in adapters.values() for p in m.parameters()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    others = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in adapter_ids]
    return ParameterReport(
        trainable=trainable,
        total=total,
        num_adapters=len(adapters),
        adapter_parameters=sum(counts),
        per_adapter=counts[0] if counts and len(set(counts)) == 1 else None,
        other_trainable=others,
    )


# -- save / load ------------------------------------------------------------------------


class AdapterLoadError(ValueError):
    """An adapter file does not fit the model."""


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and (Distributed)DataParallel's wrappers, whose
    state_dict keys are the model's own (no `_orig_mod.` or `module.` prefix)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def adapter_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapters' state (parameters and BN buffers) under the model's own key names."""
    prefixes = tuple(name + "." for name in adapter_modules(model))
    if not prefixes:
        return {}
    return {k: v for k, v in model.state_dict(keep_vars=False).items() if k.startswith(prefixes)}


def save_adapters(model: nn.Module, path: Union[str, os.PathLike], include_trainable: bool = False,
                  metadata: Optional[Dict[str, str]] = None) -> Dict[str, torch.Tensor]:
    """Write only the adapter tensors of `model` to a safetensors file, atomically.

    The file is written to a temporary file in the same directory, flushed and fsynced,
    then renamed over `path` (os.replace), so a reader never sees a partial file.
    include_trainable: also store other trainable parameters (e.g. a task head/tail
    unfrozen with inject(train_task_head_tail=True)). The key names are those of the
    model itself, also when it is wrapped (torch.compile, DistributedDataParallel). The
    metadata records the model's class and, for IPT/EDT, the task it is built for
    (`model_task`), which load_adapters checks. Returns the tensors written.
    """
    from safetensors.torch import save as st_save

    model = unwrapped(model)
    tensors = adapter_state_dict(model)
    if not tensors:
        raise ValueError(f"{type(model).__name__} has no adapters to save (call adaptir_kernels.inject first)")
    extra: List[str] = []
    if include_trainable:
        adapter_keys = set(tensors)
        for n, p in model.named_parameters():
            if p.requires_grad and n not in adapter_keys:
                tensors[n] = p.detach()
                extra.append(n)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "num_adapters": str(len(adapter_modules(model))),
        "extra_keys": json.dumps(sorted(extra)),
        "model": type(model).__name__,
    }
    task = getattr(model, "task", None)
    if isinstance(task, (str, int)):
        meta["model_task"] = str(task)
    if metadata:
        meta.update({str(k): str(v) for k, v in metadata.items()})
    data = st_save(tensors, metadata=meta)

    from .checkpoint import atomic_path

    with atomic_path(os.fspath(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return tensors


def _fmt(keys: Sequence[str], limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_adapters(model: nn.Module, path: Union[str, os.PathLike], strict: bool = True,
                  check_task: bool = True) -> Dict[str, List[str]]:
    """Load adapter tensors written by save_adapters (or any safetensors file with the
    model's adapter key names) into `model` in place.

    Raises FileNotFoundError for a missing file and AdapterLoadError when the file does
    not fit: missing or unexpected keys (strict), any shape mismatch, or (check_task) a
    file saved from a model built for another task than `model` (adapters are trained
    per task, and their keys do not say which: EDT's sr_2 and denoise_30 adapters have
    the same names and shapes). check_task=False loads them anyway, e.g. to start from
    another task's adapters. Values are copied into the existing tensors (device and
    dtype of the model are kept). Returns {"loaded": [...], "missing": [...], "unexpected": [...]}.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # metadata is informative only
        meta = {}

    model = unwrapped(model)
    own = adapter_state_dict(model)
    if not own:
        raise AdapterLoadError(
            f"{type(model).__name__} has no adapters; call adaptir_kernels.inject(model) before load_adapters")
    file_model, file_task = meta.get("model"), meta.get("model_task")
    task = getattr(model, "task", None)
    if (check_task and file_task is not None and isinstance(task, (str, int)) and str(task) != file_task
            and file_model in (None, type(model).__name__)):
        raise AdapterLoadError(
            f"{path} holds adapters of a {file_model or 'model'} built for task {file_task!r}, but this "
            f"{type(model).__name__} is built for {str(task)!r}: adapters are trained per task. Build the "
            f"model for {file_task!r}, or pass check_task=False to load them anyway")
    extra_allowed = set(json.loads(meta.get("extra_keys", "[]") or "[]"))
    full = model.state_dict()
    for k in extra_allowed:
        if k in tensors and k in full:
            own[k] = full[k]

    missing = [k for k in own if k not in tensors and k not in extra_allowed]
    unexpected = [k for k in tensors if k not in own]
    mismatch = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
                for k in tensors if k in own and tuple(tensors[k].shape) != tuple(own[k].shape)]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} adapter tensor(s) missing from the file: {_fmt(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) in the file: {_fmt(unexpected)}")
    if mismatch:
        problems.append(f"{len(mismatch)} shape mismatch(es): " + "; ".join(mismatch[:6]))
    if problems:
        hints = []
        if file_model is not None and file_model != type(model).__name__:
            hints.append(f"the file was saved from a {file_model}")
        if unexpected and missing and len(unexpected) == len(missing):
            hints.append("same count of missing and unexpected keys: was the file saved from a different module prefix?")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise AdapterLoadError(f"{path} does not fit {type(model).__name__}: " + " | ".join(problems) + hint)

    loaded = []
    with torch.no_grad():
        for k, v in tensors.items():
            if k in own:
                own[k].copy_(v)
                loaded.append(k)
    return {"loaded": sorted(loaded), "missing": sorted(missing), "unexpected": sorted(unexpected)}
