"""`adaptir finetune`: train AdaptIR adapters on a frozen IPT or EDT backbone.

    adaptir finetune --backbone edt --weights EDTB.pth --task sr_2 --data DIV2K_HR/ --out runs/edt_sr2
    torchrun --nproc_per_node 4 -m adaptir_kernels.cli finetune ...   (DistributedDataParallel)
    adaptir finetune --out runs/edt_sr2 --resume                      (continue; settings from the checkpoint)
    adaptir finetune                                                  (built-in demo, CPU, minutes)

Training follows the published AdaptIR recipe: L1 loss, AdamW (lr 1e-4), MultiStepLR
halving the rate at 50/80/90/95% of the run (epochs 250/400/450/475 of 500), batches
of 16 random 48-pixel LQ patches with flips and rotations. Only adapter parameters
train (and, with --train-head-tail, the task's head and tail).

The run folder holds:
    checkpoint.pt         the latest checkpoint (atomic; everything --resume needs)
    adapters.safetensors  the final adapters (adaptir_kernels.load_adapters)
    run.json              how to rebuild the model (used by `adaptir eval --run`)
    backbone.pt           the randomly initialised backbone, when no --weights was given
    log.csv               step, loss, learning rate, throughput, validation PSNR/SSIM
Resuming restores the step, the adapters, the optimizer, scheduler and grad-scaler
state, the torch / numpy / Python RNG states of every rank, and the data stream's
position, so the resumed run continues exactly as if it had never stopped. Options not
given again come from the checkpoint (the backend among them); options given again must
agree with it, except the data folders, workers, backend and the checkpoint, validation
and log intervals (and --weights naming a moved copy of the same file). The run's length
is the one it started with. --overwrite starts over
and removes the old run's checkpoints and adapters.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_path, atomic_save, capture_rng_state, load_checkpoint, restore_rng_state
from .data.datasets import (
    SAMPLE_PHOTOS,
    DataError,
    EvalImages,
    Record,
    ShardedStream,
    TrainPatches,
    resolve_records,
    sample_photos,
)
from .data.degradations import Task, get_task

CHECKPOINT_FORMAT = "adaptir-finetune"
CHECKPOINT_VERSION = 1
PAPER_MILESTONES = (0.5, 0.8, 0.9, 0.95)  # epochs 250, 400, 450, 475 of 500
PAPER_EPOCHS = 500
DEMO_ITERS = 100
DEMO_LR = 2e-3
DEMO_BATCH = 8
PAPER_LR = 1e-4
PAPER_BATCH = 16
DEMO_TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee")
DEMO_VAL_PHOTOS = ("rocket",)

# Small configurations: a randomly initialised backbone that trains in minutes on a CPU.
SMALL_BACKBONE = {
    "ipt": dict(n_feats=8, num_heads=4, num_layers=2, ffn_dim=144),
    "edt": dict(embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=(6, 12), num_feat=8, depth=1),
}
SMALL_ADAPTER = dict(hidden=8, ci_hidden=2)

# Tasks without a head of their own use the head/tail of the same output scale
# (as the published AdaptIR task map does for IPT).
_SHARED_HEAD = {"lr4_noise30": "sr_4", "lr4_jpeg30": "sr_4", "low_light": "denoise_50"}

# Resuming: options not given again are taken from the checkpoint; options given again
# must agree with it, except these, which may change between a run and its resumption.
_RESUME_CHANGEABLE = {
    "data", "lq", "val_data", "val_lq", "max_val_images", "workers", "ckpt_every", "val_every", "log_every",
    "keep_checkpoints", "backend",
}
# Not stored in checkpoints at all.
_NOT_STORED = {"resume", "overwrite", "quiet", "stop_after", "out", "func", "command", "device", "progress"}


class UsageError(Exception):
    """A problem with the command line or its inputs; reported without a traceback."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# -- model ----------------------------------------------------------------------------
def backbone_task(backbone: str, task: Task, head: Optional[str] = None) -> str:
    """The backbone task (head/tail) a restoration task trains with."""
    from .backbones import EDT_TASKS, IPT_TASK_MAP
    from .backbones.edt import parse_task

    name = head or task.name
    if backbone == "ipt":
        if name in IPT_TASK_MAP:
            return name
        shared = _SHARED_HEAD.get(name)
        if shared:
            return shared
        raise UsageError(f"IPT has no head for task {name!r}; choose --head from {', '.join(IPT_TASK_MAP)}")
    if name in _SHARED_HEAD and head is None:
        return _SHARED_HEAD[name]
    try:
        parse_task(name)
    except ValueError:
        raise UsageError(
            f"EDT has no head for task {name!r}; choose --head from {', '.join(EDT_TASKS)}") from None
    return name


def _json_arg(text: Optional[str], what: str) -> Dict[str, Any]:
    if not text:
        return {}
    try:
        val = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} must be a JSON object, e.g. '{{\"num_layers\": 2}}': {err}") from None
    if not isinstance(val, dict):
        raise UsageError(f"{what} must be a JSON object, got {text!r}")
    return val


@dataclass
class ModelSpec:
    """Everything needed to rebuild a backbone with adapters (stored in run.json)."""

    backbone: str
    task: str
    head: str
    backbone_kwargs: Dict[str, Any]
    adapter_kwargs: Dict[str, Any]
    weights: Optional[str]
    train_head_tail: bool = False

    def to_json(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def model_spec(args: argparse.Namespace, patch_size: Optional[int] = None) -> ModelSpec:
    task = get_task(args.task)
    head = backbone_task(args.backbone, task, getattr(args, "head", None))
    small = args.small or not args.weights
    bkw: Dict[str, Any] = dict(SMALL_BACKBONE[args.backbone]) if small else {}
    if args.backbone == "ipt" and patch_size is not None:
        bkw["patch_size"] = patch_size  # IPT's transformer takes exactly one patch size
    bkw.update(_json_arg(args.backbone_config, "--backbone-config"))
    akw: Dict[str, Any] = dict(SMALL_ADAPTER) if small else {}
    akw.update(_json_arg(args.adapter_config, "--adapter-config"))
    bkw = {k: list(v) if isinstance(v, tuple) else v for k, v in bkw.items()}
    return ModelSpec(args.backbone, task.name, head, bkw, akw, args.weights, getattr(args, "train_head_tail", False))


def build_model(spec: ModelSpec, backend: str = "auto") -> nn.Module:
    """The backbone with pre-trained weights (if any) and adapters injected; frozen outside them."""
    from .adapters import inject
    from .backbones import EDT, IPT, CheckpointMismatchError, load_pretrained

    cls = {"ipt": IPT, "edt": EDT}[spec.backbone]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.backbone_kwargs.items()}
    try:
        model = cls(task=spec.head, **kwargs)
    except TypeError as err:
        raise UsageError(f"bad --backbone-config for {spec.backbone}: {err}") from None
    if spec.weights:
        if not os.path.isfile(spec.weights):
            raise UsageError(f"weights file not found: {spec.weights}")
        try:
            load_pretrained(model, spec.weights)
        except CheckpointMismatchError as err:
            hint = ""
            if spec.backbone == "ipt" and spec.backbone_kwargs.get("patch_size", 48) != 48:
                hint = " (the published IPT works on 48-pixel patches: use --patch-size 48)"
            raise UsageError(f"{spec.weights}: {err}{hint}") from None
    try:
        inject(model, backend=backend, train_task_head_tail=spec.train_head_tail, **spec.adapter_kwargs)
    except TypeError as err:
        raise UsageError(f"bad --adapter-config: {err}") from None
    task = get_task(spec.task)
    if model.scale != task.scale:
        raise UsageError(
            f"the {spec.backbone} head {spec.head!r} upscales by {model.scale}, but task {task.name!r} needs {task.scale}")
    return model


def add_model_arguments(p: argparse.ArgumentParser, demo_defaults: bool) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=("ipt", "edt"),
                   help="pre-trained backbone" + (" (default without --weights: edt)" if demo_defaults else ""))
    g.add_argument("--weights", metavar="PATH",
                   help="pre-trained backbone checkpoint (IPT_pretrain.pt, EDT-B .pth); without it the backbone "
                        "is a randomly initialised small configuration, which only shows that the machinery works")
    g.add_argument("--task",
                   help=("default without --weights: sr_2; " if demo_defaults else "") + "sr_2 | sr_3 | sr_4 | denoise_30 | denoise_50 | lr4_noise30 | lr4_jpeg30 | derainL | "
                        "derainH | low_light (also denoise_<sigma>, jpeg_<q> with --head)")
    g.add_argument("--head", metavar="TASK", help="the backbone's head/tail to use, when the task has none of its own")
    g.add_argument("--small", action="store_true",
                   help="small backbone and adapter configuration (implied without --weights)")
    g.add_argument("--backbone-config", metavar="JSON", help="extra backbone constructor arguments, e.g. "
                   "'{\"num_layers\": 2}'")
    g.add_argument("--adapter-config", metavar="JSON", help="adapter widths, e.g. '{\"hidden\": 8, \"ci_hidden\": 2}'")
    g.add_argument("--backend", default="auto", choices=("auto", "reference", "torch", "cpp", "triton"),
                   help="adapter implementation (auto: fused kernels where available)")


# -- distributed ----------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: Optional[str]) -> Dist:
    """Join the process group that torchrun describes (WORLD_SIZE > 1), else a single process."""
    if device_arg:
        try:
            torch.device(device_arg)
        except RuntimeError as err:
            raise UsageError(f"--device {device_arg!r} is not a device (cpu, cuda, cuda:1, ...): {err}") from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_arg.startswith("cuda") if device_arg else torch.cuda.is_available()
    if want_cuda and not torch.cuda.is_available():
        raise UsageError(f"--device {device_arg} requested but CUDA is not available")
    if world <= 1:
        dev = torch.device(device_arg) if device_arg else torch.device("cuda" if want_cuda else "cpu")
        return Dist(device=dev)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        here = True
    return Dist(rank, world, local_rank, device, here)


def _mean_over_ranks(value: torch.Tensor, d: Dist) -> float:
    """The mean of a scalar over the ranks (the rank's own value in a single process)."""
    if d.world_size > 1:
        import torch.distributed as dist

        value = value.float().clone()
        dist.all_reduce(value)
        value /= d.world_size
    return float(value)


def _barrier(d: Dist) -> None:
    if d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# -- state ----------------------------------------------------------------------------
def trainable_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Adapter parameters and buffers plus any other trainable parameter, detached, on the CPU."""
    from .adapters import adapter_state_dict

    state = dict(adapter_state_dict(model))
    for name, p in model.named_parameters():
        if p.requires_grad and name not in state:
            state[name] = p
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_trainable_state(model: nn.Module, state: Dict[str, torch.Tensor], where: str) -> None:
    own = trainable_state(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise UsageError(
            f"checkpoint {where} does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"shape mismatches {bad[:4]}")
    model.load_state_dict(state, strict=False)


def _gather_rng(d: Dist) -> List[Dict[str, Any]]:
    state = capture_rng_state()
    if d.world_size == 1:
        return [state]
    import torch.distributed as dist

    out: List[Any] = [None] * d.world_size
    dist.all_gather_object(out, state)
    return out


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable tensors, with torch's fused kernel where their device has
    one, else the multi-tensor form: an adapter set is many small tensors (864 for
    EDT-B), and torch's default per-tensor loop on the CPU costs more per step than the
    update itself. Same algorithm either way."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # no fused kernel for these tensors' device or dtype
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def _resolve_milestones(values: Sequence[float], total: int) -> List[int]:
    """Step numbers of the LR decays. A fraction v of the run decays after step
    floor(v * total + 1/2), at least step 1; milestones that meet on one step (short runs)
    are all kept: MultiStepLR then applies gamma once for each."""
    steps = []
    for v in values:
        if v <= 0:
            raise UsageError(f"--milestones must be positive, got {v}")
        steps.append(max(1, math.floor(v * total + 0.5)) if v <= 1 else int(v))
    return sorted(steps)


def _config_for_resume(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in sorted(vars(args).items())
            if k not in _NOT_STORED and not k.startswith("_") and not callable(v)}


def _file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (the pre-trained weights: a second or so for IPT's 450 MB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _default_out(args: argparse.Namespace) -> Optional[str]:
    """runs/<backbone>_<task>: the folder of a run started without --out, where the
    command line says which (the built-in demo: edt, sr_2)."""
    backbone = args.backbone or (None if args.weights else "edt")
    task = args.task or (None if args.weights else "sr_2")
    if backbone is None or task is None:
        return None
    try:
        return os.path.join("runs", f"{backbone}_{get_task(task).name}")
    except ValueError:
        return None


def _given_options(args: argparse.Namespace) -> Optional[set]:
    """The options the command line gave (their dests), from the argv the `adaptir` command
    parsed; None where args did not come from it (then "given" means "not at its default")."""
    argv = getattr(args, "_argv", None)
    if argv is None or "finetune" not in argv:
        return None
    p = build_parser(argparse.ArgumentParser(add_help=False))
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given, _ = p.parse_known_args(argv[argv.index("finetune") + 1:])
    return set(vars(given))


def _merge_resumed_config(args: argparse.Namespace, stored: Dict[str, Any], where: str) -> None:
    """Options not given on the command line take the checkpoint's values; given ones must
    agree with it (except the changeable ones)."""
    given = _given_options(args)
    defaults = vars(build_parser(argparse.ArgumentParser()).parse_args([])) if given is None else {}
    conflicts = []
    for k, v in stored.items():
        cur = getattr(args, k, None)
        if (k not in given) if given is not None else (cur == defaults.get(k)):
            setattr(args, k, v)
        elif cur != v and k not in _RESUME_CHANGEABLE:
            conflicts.append(f"--{k.replace('_', '-')}: {v!r} -> {cur!r}")
    if conflicts:
        raise UsageError(f"cannot resume {where} with different settings ({', '.join(conflicts)}); "
                         "leave them out to use the checkpoint's")


# -- logging --------------------------------------------------------------------------
LOG_FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "val_psnr", "val_ssim")


def _truncate_log(path: str, step: int) -> None:
    """Drop log rows after `step` (written after the checkpoint a run resumes from)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)


def _append_log(path: str, row: Dict[str, Any]) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in LOG_FIELDS})


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """A tqdm bar on a terminal, periodic log lines otherwise; silent on ranks > 0."""

    def __init__(self, total: int, start: int, enabled: bool, mode: str, log_every: int):
        self.total, self.start, self.log_every = total, start, max(1, log_every)
        self.enabled = enabled
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.bar = None
        if enabled and use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="finetune", unit="step", dynamic_ncols=True)
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, lr: float, img_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}", refresh=False)
        elif step % self.log_every == 0 or step == self.total:
            done = step - self.start
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / done * (self.total - step) if done else 0.0
            print(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {img_s:.1f} img/s  "
                  f"elapsed {_fmt_time(elapsed)}  eta {_fmt_time(eta)}", flush=True)

    def write(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- validation -----------------------------------------------------------------------
def validate(model: nn.Module, dataset: EvalImages, device: torch.device, max_images: Optional[int] = None):
    """Mean (PSNR, SSIM) of the model on the dataset, and the per-image rows."""
    from .evaluate import evaluate_dataset

    rows = evaluate_dataset(model, dataset, device, max_images=max_images)
    return float(np.mean([r["psnr"] for r in rows])), float(np.mean([r["ssim"] for r in rows])), rows


# -- the run --------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _center_crop(rec: Record, h: int, w: int) -> Record:
    img = rec.gt
    y, x = max(0, (img.shape[0] - h) // 2), max(0, (img.shape[1] - w) // 2)
    return Record(rec.name, np.ascontiguousarray(img[y:y + h, x:x + w]))


def _training_data(args, task: Task, say) -> Tuple[List[Record], Optional[List[Record]], bool]:
    demo = not args.data
    if demo:
        train = sample_photos(DEMO_TRAIN_PHOTOS)
        val = [_center_crop(r, 240, 360) for r in sample_photos(DEMO_VAL_PHOTOS)] if not args.val_data else None
        lic = "; ".join(f"{n}: {SAMPLE_PHOTOS[n]}" for n in DEMO_TRAIN_PHOTOS + DEMO_VAL_PHOTOS)
        say(f"data: no --data given; using photographs shipped with scikit-image (skimage.data), "
            f"training on {', '.join(DEMO_TRAIN_PHOTOS)}, validating on the centre of {', '.join(DEMO_VAL_PHOTOS)} ({lic})")
    else:
        train = resolve_records(args.data, args.lq)
        val = None
    if args.val_data:
        val = resolve_records(args.val_data, args.val_lq)
    return train, val, demo


def finetune(args: argparse.Namespace) -> Dict[str, Any]:
    """Run (or resume) a fine-tuning run; returns a summary dict (rank 0's view)."""
    d = init_distributed(args.device)
    try:
        return _finetune(args, d)
    finally:
        if d.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _finetune(args: argparse.Namespace, d: Dist) -> Dict[str, Any]:
    quiet = args.quiet or not d.main

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    # Paths absolute first: a resumed run compares them with the checkpoint's.
    for key in ("data", "lq", "val_data", "val_lq", "weights"):
        if getattr(args, key):
            setattr(args, key, os.path.abspath(getattr(args, key)))
    ckpt = None
    resume_from = None
    if args.resume is not None:
        if args.resume == "auto":
            if args.out is None:
                default_out = _default_out(args)
                if default_out is None or not os.path.isfile(os.path.join(default_out, "checkpoint.pt")):
                    raise UsageError("--resume needs --out RUN_FOLDER (or the checkpoint's path: --resume CKPT)")
                args.out = default_out
            resume_from = os.path.join(args.out, "checkpoint.pt")
        else:
            resume_from = args.resume
        if not os.path.isfile(resume_from):
            raise UsageError(f"--resume: checkpoint not found: {resume_from}")
        try:
            ckpt = load_checkpoint(resume_from)
        except RuntimeError as err:
            raise UsageError(str(err)) from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(
                ckpt.get("config"), dict):
            raise UsageError(f"{resume_from} is not an `adaptir finetune` checkpoint")
        stored = dict(ckpt["config"])
        if (args.weights and stored.get("weights") and args.weights != stored["weights"]
                and ckpt.get("weights_sha256") and os.path.isfile(args.weights)
                and _file_digest(args.weights) == ckpt["weights_sha256"]):
            stored["weights"] = args.weights  # the same file, moved (another machine, another folder)
        _merge_resumed_config(args, stored, resume_from)
        if args.out is None:
            args.out = os.path.dirname(os.path.abspath(resume_from))
    if args.lq and not args.data:
        raise UsageError("--lq pairs LQ images with the images of --data: give --data too")
    if args.val_lq and not args.val_data:
        raise UsageError("--val-lq pairs LQ images with the images of --val-data: give --val-data too")
    if args.weights and not os.path.isfile(args.weights):
        moved = " (moved? give --weights NEW_PATH: the same file is accepted)" if resume_from else ""
        raise UsageError(f"weights file not found: {args.weights}{moved}")
    weights_digest = _file_digest(args.weights) if args.weights else None
    if args.weights:
        if args.backbone is None or args.task is None:
            raise UsageError("--backbone and --task are required with --weights")
    else:
        args.backbone = args.backbone or "edt"
        args.task = args.task or "sr_2"
    try:
        task = get_task(args.task)
    except ValueError as err:
        raise UsageError(str(err)) from None
    demo = not args.weights and not args.data
    if args.lr is None:
        args.lr = DEMO_LR if demo else PAPER_LR
    if args.batch_size is None:
        args.batch_size = DEMO_BATCH if demo else PAPER_BATCH
    out = args.out or os.path.join("runs", f"{args.backbone}_{task.name}")
    ckpt_path = os.path.join(out, "checkpoint.pt")

    if resume_from is None and os.path.exists(ckpt_path) and not args.overwrite:
        raise UsageError(f"{ckpt_path} exists: pass --resume to continue that run, or --overwrite to start over")

    if not args.weights:
        say("NOTE: no --weights given, so the backbone is a randomly initialised small "
            f"{args.backbone.upper()}. This run only shows that the fine-tuning machinery works "
            "(data, adapters, optimizer, checkpoints); its PSNR says nothing about AdaptIR. "
            "Pass --weights with a pre-trained IPT or EDT checkpoint for real results.")
        if demo:
            say(f"demo settings: lr {args.lr:g}, batch {args.batch_size} (the paper's recipe, used with "
                f"--weights, is lr {PAPER_LR:g}, batch {PAPER_BATCH})")

    train_records, val_records, _ = _training_data(args, task, say)
    dataset = TrainPatches(train_records, task, patch_size=args.patch_size, seed=args.seed)
    val_set = EvalImages(val_records, task, seed=args.seed) if val_records else None

    spec = model_spec(args, patch_size=args.patch_size)
    saved_backbone = os.path.join(out, "backbone.pt")
    if resume_from and not args.weights:
        # the random backbone the run started with, next to its checkpoint
        for cand in (os.path.join(os.path.dirname(os.path.abspath(resume_from)), "backbone.pt"), saved_backbone):
            if os.path.isfile(cand):
                spec.weights = cand
                break
    _seed_all(args.seed)
    model = build_model(spec, backend=args.backend).to(d.device)
    from .adapters import save_adapters, trainable_parameters

    report = trainable_parameters(model)
    say(f"model: {spec.backbone.upper()} ({spec.head} head) for task {task.name}: {report}")

    per_rank = math.ceil(len(dataset) / d.world_size)
    steps_per_epoch = max(1, math.ceil(per_rank / args.batch_size))
    if args.iters is not None:
        total = args.iters
    elif args.epochs is not None:
        total = args.epochs * steps_per_epoch
    else:
        total = DEMO_ITERS if demo else PAPER_EPOCHS * steps_per_epoch
    if total < 1:
        raise UsageError("the run has no steps: --iters/--epochs must be positive")
    if resume_from and "total_steps" in ckpt and int(ckpt["total_steps"]) != total:
        # The length was fixed when the run started (its milestones are in the scheduler's
        # state); data that has changed since does not change it.
        say(f"run length: {int(ckpt['total_steps'])} steps as started (the data now makes {total})")
        total = int(ckpt["total_steps"])
    milestones = _resolve_milestones(args.milestones, total)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=args.gamma)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp_dtype]
    use_scaler = args.amp and amp_dtype == torch.float16 and d.device.type == "cuda"
    scaler = torch.amp.GradScaler(d.device.type, enabled=use_scaler)

    start = 0
    config = _config_for_resume(args)
    if resume_from:
        load_trainable_state(model, ckpt["trainable"], resume_from)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start = int(ckpt["step"])
        rngs = ckpt["rng"]
        if len(rngs) != d.world_size:
            raise UsageError(f"{resume_from} was written by {len(rngs)} process(es); resume it with as many, "
                             f"not {d.world_size}")
        restore_rng_state(rngs[d.rank])
        say(f"resumed from {resume_from} at step {start}/{total}")
    else:
        _seed_all(args.seed + d.rank)  # per-rank streams for stochastic depth / dropout

    if d.main:
        os.makedirs(out, exist_ok=True)
        # Temporary files of writes that a kill interrupted (the files they were to replace
        # are intact).
        for n in os.listdir(out):
            if re.fullmatch(r"(checkpoint(_\d+)?\.pt|adapters\.safetensors|run\.json|log\.csv|backbone\.pt)"
                            r"\.\w+\.tmp", n):
                os.remove(os.path.join(out, n))
        if not resume_from:
            # A new run (--overwrite): nothing of the old one may be resumed or taken for its result.
            stale = [os.path.join(out, n) for n in os.listdir(out)
                     if n in ("checkpoint.pt", "adapters.safetensors") or re.fullmatch(r"checkpoint_\d+\.pt", n)]
            for path in stale:
                os.remove(path)
        run = {"model": spec.to_json(), "total_steps": total, "milestones": milestones}
        if not args.weights:
            bb = saved_backbone
            if not os.path.exists(bb) or not resume_from:
                from .adapters import adapter_state_dict

                adapter_keys = set(adapter_state_dict(model))
                frozen = {k: v for k, v in model.state_dict().items() if k not in adapter_keys}
                atomic_save(frozen, bb)
            run["model"]["weights"] = "backbone.pt"
        with atomic_path(os.path.join(out, "run.json")) as tmp:
            with open(tmp, "w") as f:
                json.dump(run, f, indent=2)
        if resume_from:
            _truncate_log(os.path.join(out, "log.csv"), start)
        elif os.path.exists(os.path.join(out, "log.csv")):
            os.remove(os.path.join(out, "log.csv"))

    net: nn.Module = model
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    stream = ShardedStream(len(dataset), seed=args.seed, rank=d.rank, world_size=d.world_size,
                           start=start * args.batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=stream, num_workers=args.workers,
        pin_memory=d.device.type == "cuda", persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched
    )

    summary: Dict[str, Any] = {"out": out, "start_step": start, "total_steps": total}
    log_path = os.path.join(out, "log.csv")

    def run_validation(step: int, label: str) -> Optional[Tuple[float, float]]:
        result = None
        if val_set is not None and d.main:
            model.eval()
            psnr, ssim, _ = validate(model, val_set, d.device, args.max_val_images)
            model.train()
            progress.write(f"{label}: validation PSNR {psnr:.2f} dB, SSIM {ssim:.4f} "
                           f"({len(val_set) if not args.max_val_images else min(len(val_set), args.max_val_images)} "
                           f"image(s), {task.name})")
            _append_log(log_path, {"step": step, "val_psnr": f"{psnr:.4f}", "val_ssim": f"{ssim:.6f}"})
            result = (psnr, ssim)
        _barrier(d)
        return result

    def save_checkpoint(step: int) -> None:
        rngs = _gather_rng(d)
        if d.main:
            atomic_save({
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": step,
                "total_steps": total,
                "config": config,
                "trainable": trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if use_scaler else None,
                "rng": rngs,
                "world_size": d.world_size,
                "weights_sha256": weights_digest,  # lets a resumed run find its backbone file moved
                # the losses since the last log row, so that the resumed run logs the same rows
                "log_window": [window_loss, window_steps],
            }, ckpt_path)
            if args.keep_checkpoints:
                with atomic_path(os.path.join(out, f"checkpoint_{step:08d}.pt")) as tmp:
                    shutil.copyfile(ckpt_path, tmp)
        _barrier(d)

    progress = Progress(total, start, enabled=not quiet, mode=args.progress, log_every=args.log_every)
    model.train()
    if start == 0:
        before = run_validation(0, "before fine-tuning")
        if before:
            summary["psnr_before"], summary["ssim_before"] = before
    say(f"training {total - start} step(s) of batch {args.batch_size} x {d.world_size} process(es), "
        f"{args.patch_size}-pixel LQ patches, milestones {milestones}, gamma {args.gamma}"
        + (f", mixed precision {args.amp_dtype}" if args.amp else ""))

    step = start
    batches = iter(loader)
    stop_after = args.stop_after
    last_loss = float("nan")
    smooth = None  # exponential moving average of the loss, for the progress display
    window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
    timed_steps = 0  # steps since window_t0 (a resumed window's earlier steps ran before it)
    if resume_from and "log_window" in ckpt:
        window_loss, window_steps = float(ckpt["log_window"][0]), int(ckpt["log_window"][1])
    img_s = 0.0
    try:
        while step < total:
            lq, gt = next(batches)
            lq = lq.to(d.device, non_blocking=True)
            gt = gt.to(d.device, non_blocking=True)
            with torch.autocast(d.device.type, dtype=amp_dtype, enabled=args.amp):
                pred = net(lq)
            loss = F.l1_loss(pred.float(), gt)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            last_loss = _mean_over_ranks(loss.detach(), d)
            if not math.isfinite(last_loss):  # on every rank at once: none waits for a stopped one
                raise TrainingDiverged(f"the loss is {last_loss} at step {step}; lower --lr or drop --amp")
            smooth = last_loss if smooth is None else 0.9 * smooth + 0.1 * last_loss
            window_loss += last_loss
            window_steps += 1
            timed_steps += 1
            now = time.perf_counter()
            img_s = timed_steps * args.batch_size * d.world_size / max(now - window_t0, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            progress.update(step, smooth, lr, img_s)
            if step % args.log_every == 0 or step == total:
                if d.main:
                    _append_log(log_path, {"step": step, "epoch": f"{step / steps_per_epoch:.3f}",
                                           "loss": f"{window_loss / window_steps:.6f}", "lr": f"{lr:.3e}",
                                           "images_per_s": f"{img_s:.2f}"})
                window_loss, window_steps, window_t0, timed_steps = 0.0, 0, time.perf_counter(), 0
            t_pause = time.perf_counter()
            if args.val_every and step % args.val_every == 0 and step != total:
                run_validation(step, f"step {step}")
            if step % args.ckpt_every == 0 or step == total:
                save_checkpoint(step)
            window_t0 += time.perf_counter() - t_pause  # throughput counts training time only
            if stop_after is not None and step >= stop_after and step < total:
                progress.close()
                say(f"stopped after step {step} (--stop-after); continue with --resume")
                summary.update(step=step, loss=last_loss, stopped=True, model=model)
                return summary
    finally:
        progress.close()
        del batches

    if d.world_size > 1:
        # BN running statistics: every rank takes rank 0's, so all ranks hold the same adapters.
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, src=0)
    after = run_validation(step, "after fine-tuning")
    if after:
        summary["psnr_after"], summary["ssim_after"] = after
    adapters_path = os.path.join(out, "adapters.safetensors")
    if d.main:
        save_adapters(model, adapters_path, include_trainable=spec.train_head_tail,
                      metadata={"backbone": spec.backbone, "task": task.name, "head": spec.head,
                                "steps": str(step)})
        say(f"adapters saved to {adapters_path}; checkpoint {ckpt_path}; log {log_path}")
        if "psnr_before" in summary and "psnr_after" in summary:
            say(f"PSNR on the validation images: {summary['psnr_before']:.2f} dB before, "
                f"{summary['psnr_after']:.2f} dB after {step} step(s)")
        if not args.weights:
            say("(random small backbone: these numbers only show that training runs and reduces the loss)")
    _barrier(d)
    summary.update(step=step, loss=last_loss, adapters=adapters_path, stopped=False, model=model)
    return summary


# -- command line -----------------------------------------------------------------------
def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return v


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_model_arguments(p, demo_defaults=True)
    p.add_argument("--train-head-tail", action="store_true", help="also train the task's head and tail")

    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR|LIST",
                   help="high-quality images (LQ synthesised on the fly), a folder with lq/ and gt/ subfolders, "
                        "or a list file of 'GT' or 'LQ GT' lines (default: photographs shipped with scikit-image)")
    g.add_argument("--lq", metavar="DIR", help="LQ images paired by name with the images in --data")
    g.add_argument("--val-data", metavar="DIR|LIST", help="validation images (same forms as --data)")
    g.add_argument("--val-lq", metavar="DIR", help="LQ validation images paired with --val-data")
    g.add_argument("--max-val-images", type=_positive_int, help="validate on at most this many images")
    g.add_argument("--patch-size", type=_positive_int, default=48, help="LQ patch size")
    g.add_argument("--batch-size", type=_positive_int,
                   help=f"patches per step per process (default {PAPER_BATCH}; {DEMO_BATCH} in the built-in demo)")
    g.add_argument("--workers", type=_nonneg_int, default=2, help="data loading worker processes")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the data stream, augmentation and noise")

    g = p.add_argument_group("optimisation")
    g.add_argument("--iters", type=_positive_int, help="training steps (default: 500 epochs, as published; "
                                                      f"{DEMO_ITERS} in the built-in demo)")
    g.add_argument("--epochs", type=_positive_int, help="training length in passes over the data")
    g.add_argument("--lr", type=float, metavar="LR", help=f"learning rate (default {PAPER_LR:g}; {DEMO_LR:g} in the built-in demo)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (torch's default)")
    g.add_argument("--milestones", type=float, nargs="+", default=list(PAPER_MILESTONES),
                   help="MultiStepLR milestones: fractions of the run (<= 1) or step numbers (> 1)")
    g.add_argument("--gamma", type=float, default=0.5, help="MultiStepLR factor")
    g.add_argument("--amp", action="store_true", help="mixed precision (autocast); adapters compute in float32")
    g.add_argument("--amp-dtype", choices=("bf16", "fp16"), default="bf16",
                   help="autocast dtype (fp16 uses a gradient scaler on CUDA)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available; torchrun: one GPU per process)")

    g = p.add_argument_group("run folder")
    g.add_argument("--out", metavar="DIR", help="run folder (default runs/<backbone>_<task>)")
    g.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                   help="continue from OUT/checkpoint.pt (or the given checkpoint)")
    g.add_argument("--overwrite", action="store_true", help="start over even if OUT has a checkpoint")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="also keep a copy of every checkpoint (checkpoint_<step>.pt), not only the latest")
    g.add_argument("--ckpt-every", type=_positive_int, default=500, help="checkpoint every N steps (and at the end)")
    g.add_argument("--val-every", type=_nonneg_int, default=0,
                   help="validate every N steps (0: only before and after training)")
    g.add_argument("--log-every", type=_positive_int, default=10, help="log every N steps")
    g.add_argument("--progress", choices=("auto", "bar", "log"), default="auto",
                   help="progress bar (auto: on a terminal) or log lines")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    g.add_argument("--stop-after", type=_positive_int, help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> int:
    try:
        finetune(args)
    except (UsageError, DataError, FileNotFoundError, TrainingDiverged) as err:
        print(f"adaptir finetune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adaptir finetune: interrupted; continue with --resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout; appends meaningful defaults to option help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text or default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="train AdaptIR adapters on a frozen IPT/EDT backbone",
        description="\n\n".join(__doc__.split("\n\n")[:3]) if __doc__ else None,
        formatter_class=HelpFormatter,
    )
    build_parser(p)
    p.set_defaults(func=main)
