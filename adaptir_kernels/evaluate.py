"""`adaptir eval` and `adaptir restore`: score a fine-tuned model, or restore images with it.

    adaptir eval --run runs/edt_sr2 --data Set5/HR                 (model from a finetune run)
    adaptir eval --backbone ipt --weights IPT_pretrain.pt --adapters a.safetensors \\
                 --task denoise_30 --data CBSD68/ --csv cbsd68.csv
    adaptir restore --run runs/edt_sr2 photo.png photo_x2.png      (tiled inference)

Scores follow the published tables' conventions (adaptir_kernels.metrics): outputs
clipped and rounded to 8 bits; PSNR and SSIM (11x11 Gaussian window, sigma 1.5) on the
Y channel of BT.601 YCbCr with a border of `scale` pixels removed for super-resolution
and the hybrid tasks, on Y for deraining and JPEG, on RGB for denoising and low-light.
The "input" columns score the degraded input itself (bicubic-upscaled for SR), a
reference point for the restored result.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .data.datasets import DataError, EvalImages, list_images, read_image, resolve_records, sample_photos, to_tensor
from .data.degradations import get_task, imresize
from .metrics import calculate_psnr, calculate_ssim, to_uint8

__all__ = ["evaluate_dataset", "restore_image", "load_model", "register"]


def restore_image(model: nn.Module, lq: np.ndarray, device: torch.device, tile: Optional[int] = None,
                  progress: Optional[bool] = None) -> np.ndarray:
    """Restore one (H, W, 3) image, uint8 or float in [0, 1] (a denoising task's
    unquantised LQ); returns uint8 (H*s, W*s, 3)."""
    from .tiling import restore

    x = to_tensor(lq)[None].to(device)
    y = restore(model, x, tile=tile, progress=progress)
    return to_uint8(y[0].float().cpu())


def _input_reference(lq: np.ndarray, scale: int) -> np.ndarray:
    """The input at the GT's size (the metrics round a float one to uint8 levels, as they
    do the model's output)."""
    return lq if scale == 1 else imresize(lq, scale=float(scale))


def evaluate_dataset(
    model: nn.Module,
    dataset: EvalImages,
    device: torch.device,
    max_images: Optional[int] = None,
    tile: Optional[int] = None,
    save_dir: Optional[str] = None,
    progress: bool = False,
) -> List[Dict[str, Any]]:
    """Per-image PSNR / SSIM of the model (and of the input) with the task's conventions."""
    task = dataset.task
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="eval", unit="img")
    was_training = model.training
    model.eval()
    try:
        for i in range(n):
            item = dataset[i]
            lq, gt = item["lq"], item["gt"]
            out = restore_image(model, lq, device, tile=tile)
            if out.shape != gt.shape:
                raise RuntimeError(f"{item['name']}: model output {out.shape} does not match GT {gt.shape}")
            ref = _input_reference(lq, task.scale)
            kw = dict(crop_border=task.crop_border, y_channel=task.y_channel)
            rows.append({
                "name": item["name"],
                "height": gt.shape[0],
                "width": gt.shape[1],
                "psnr": calculate_psnr(out, gt, **kw),
                "ssim": calculate_ssim(out, gt, **kw),
                "input_psnr": calculate_psnr(ref, gt, **kw),
                "input_ssim": calculate_ssim(ref, gt, **kw),
            })
            if save_dir:
                from PIL import Image

                os.makedirs(save_dir, exist_ok=True)
                Image.fromarray(out).save(os.path.join(save_dir, f"{item['name']}.png"))
            if bar is not None:
                bar.update(1)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return rows


# -- model loading ----------------------------------------------------------------------
def load_model(args: argparse.Namespace, device: torch.device, say=print) -> nn.Module:
    """The model an eval/restore command describes (--run folder or explicit flags)."""
    from .adapters import AdapterLoadError, load_adapters
    from .train import ModelSpec, UsageError, build_model, model_spec

    adapters = args.adapters
    if args.run:
        run_json = os.path.join(args.run, "run.json")
        if not os.path.isfile(run_json):
            raise UsageError(f"--run: {run_json} not found (is {args.run} an `adaptir finetune` folder?)")
        with open(run_json) as f:
            spec = ModelSpec(**json.load(f)["model"])
        if spec.weights and not os.path.isabs(spec.weights) and not os.path.exists(spec.weights):
            spec.weights = os.path.join(args.run, spec.weights)
        if args.task and get_task(args.task).name != spec.task:
            raise UsageError(f"--task {args.task} differs from the run's task {spec.task}")
        if adapters is None:
            adapters = os.path.join(args.run, "adapters.safetensors")
            if not os.path.isfile(adapters):
                raise UsageError(f"{adapters} not found: the run has not finished (evaluate its checkpoint "
                                 f"by finishing it with `adaptir finetune --out {args.run} --resume`)")
    else:
        if args.backbone is None or args.task is None:
            raise UsageError("give --run RUN_FOLDER, or --backbone and --task (with --weights and --adapters)")
        if not args.weights:
            say("NOTE: no --weights given: the backbone is a randomly initialised small configuration, "
                "so the scores below are meaningless")
        spec = model_spec(args)
    if adapters is not None and not os.path.isfile(adapters):
        raise UsageError(f"adapter file not found: {adapters}")
    model = build_model(spec, backend=args.backend)
    if adapters is not None:
        try:
            load_adapters(model, adapters)
        except AdapterLoadError as err:
            raise UsageError(str(err)) from None
    else:
        say("NOTE: no --adapters given: evaluating the backbone alone (fresh adapters output zero)")
    model._adaptir_task = spec.task  # the task the model was built for
    return model.to(device).eval()


def _device(arg: Optional[str]) -> torch.device:
    from .train import UsageError

    if arg:
        if arg.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {arg} requested but CUDA is not available")
        return torch.device(arg)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _add_common(p: argparse.ArgumentParser) -> None:
    from .train import add_model_arguments

    add_model_arguments(p, demo_defaults=False)
    p.add_argument("--run", metavar="DIR", help="an `adaptir finetune` run folder: its model, weights and adapters")
    p.add_argument("--adapters", metavar="PATH", help="adapter file written by `adaptir finetune` (safetensors)")
    p.add_argument("--tile", type=int, help="tile size for large images (IPT always uses 48-pixel tiles)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")


# -- eval -------------------------------------------------------------------------------
def _print_table(rows: List[Dict[str, Any]], task, show_rows: bool) -> None:
    name_w = max([len("image")] + [len(r["name"]) for r in rows]) if show_rows else len("mean")
    name_w = min(max(name_w, 4), 40)
    head = f"{'image':<{name_w}}  {'PSNR':>7}  {'SSIM':>6}  {'input PSNR':>10}  {'input SSIM':>10}"
    print(head)
    print("-" * len(head))

    def line(name, p, s, ip, iss):
        print(f"{name[:name_w]:<{name_w}}  {p:7.2f}  {s:6.4f}  {ip:10.2f}  {iss:10.4f}")

    if show_rows:
        for r in rows:
            line(r["name"], r["psnr"], r["ssim"], r["input_psnr"], r["input_ssim"])
        print("-" * len(head))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "input_psnr", "input_ssim")}
    line("mean", mean["psnr"], mean["ssim"], mean["input_psnr"], mean["input_ssim"])
    where = "Y channel (BT.601)" if task.y_channel else "RGB"
    crop = f", border {task.crop_border} px removed" if task.crop_border else ""
    print(f"{len(rows)} image(s), task {task.name}: PSNR/SSIM on {where}{crop}, 8-bit outputs")


def run_eval(args: argparse.Namespace) -> List[Dict[str, Any]]:
    from .train import UsageError

    device = _device(args.device)
    model = load_model(args, device)
    task = get_task(model._adaptir_task)
    if args.data:
        records = resolve_records(args.data, args.lq)
    else:
        records = sample_photos(("rocket",))
        print("data: no --data given; evaluating on skimage.data's 'rocket' photograph (public domain)")
    dataset = EvalImages(records, task, seed=args.seed)
    rows = evaluate_dataset(model, dataset, device, max_images=args.max_images, tile=args.tile,
                            save_dir=args.save_images, progress=not args.quiet and sys.stderr.isatty())
    if not rows:
        raise UsageError("no images to evaluate")
    csv_path = args.csv or (os.path.join(args.run, f"eval_{task.name}.csv") if args.run
                            else f"eval_{model.__class__.__name__.lower()}_{task.name}.csv")
    folder = os.path.dirname(os.path.abspath(csv_path))
    if not os.path.isdir(folder):
        raise UsageError(f"--csv: folder does not exist: {folder}")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    if not args.quiet:
        _print_table(rows, task, show_rows=len(rows) <= 30)
        print(f"per-image scores written to {csv_path}")
    return rows


def eval_main(args: argparse.Namespace) -> int:
    from .adapters import AdapterLoadError
    from .train import UsageError

    try:
        run_eval(args)
    except (UsageError, DataError, FileNotFoundError, AdapterLoadError, ValueError) as err:
        print(f"adaptir eval: error: {err}", file=sys.stderr)
        return 2
    return 0


# -- restore ----------------------------------------------------------------------------
def run_restore(args: argparse.Namespace) -> List[str]:
    from PIL import Image

    from .train import UsageError

    src, dst = args.input, args.output
    if not os.path.exists(src):
        raise UsageError(f"input not found: {src}")
    if os.path.isdir(src):
        inputs = list_images(src)
        if os.path.isfile(dst):
            raise UsageError(f"input {src} is a folder, so the output must be a folder too, not the file {dst}")
        os.makedirs(dst, exist_ok=True)
        outputs = [os.path.join(dst, os.path.splitext(os.path.basename(p))[0] + ".png") for p in inputs]
    else:
        inputs = [src]
        if os.path.isdir(dst):
            outputs = [os.path.join(dst, os.path.splitext(os.path.basename(src))[0] + ".png")]
        else:
            parent = os.path.dirname(os.path.abspath(dst))
            if not os.path.isdir(parent):
                raise UsageError(f"output folder does not exist: {parent}")
            outputs = [dst]
    device = _device(args.device)
    model = load_model(args, device, say=(lambda m: None) if args.quiet else print)
    for i, (p, o) in enumerate(zip(inputs, outputs)):
        lq = read_image(p)
        out = restore_image(model, lq, device, tile=args.tile, progress=None if not args.quiet else False)
        Image.fromarray(out).save(o)
        if not args.quiet:
            print(f"[{i + 1}/{len(inputs)}] {p} ({lq.shape[1]}x{lq.shape[0]}) -> {o} ({out.shape[1]}x{out.shape[0]})")
    return outputs


def restore_main(args: argparse.Namespace) -> int:
    from .adapters import AdapterLoadError
    from .train import UsageError

    try:
        run_restore(args)
    except (UsageError, DataError, FileNotFoundError, AdapterLoadError, ValueError) as err:
        print(f"adaptir restore: error: {err}", file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> None:
    from .train import HelpFormatter as fmt
    from .train import _positive_int

    p = subparsers.add_parser("eval", help="PSNR/SSIM of a fine-tuned model on a folder of images",
                              description="\n\n".join(__doc__.split("\n\n")[:3]), formatter_class=fmt)
    _add_common(p)
    p.add_argument("--data", metavar="DIR|LIST",
                   help="GT images (LQ synthesised, seeded per file name), a folder with lq/ and gt/ subfolders, "
                        "or a list file (default: a photograph shipped with scikit-image)")
    p.add_argument("--lq", metavar="DIR", help="LQ images paired by name with the GT images in --data")
    p.add_argument("--csv", metavar="PATH", help="per-image scores (default: RUN/eval_<task>.csv or ./eval_*.csv)")
    p.add_argument("--save-images", metavar="DIR", help="also write the restored images here")
    p.add_argument("--max-images", type=_positive_int, help="evaluate at most this many images")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradations")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=eval_main)

    p = subparsers.add_parser("restore", help="restore images with a fine-tuned model (tiled inference)",
                              description="Restore an image or a folder of images; outputs are PNG.",
                              formatter_class=fmt)
    _add_common(p)
    p.add_argument("input", metavar="IN", help="image file or folder of images (the degraded inputs)")
    p.add_argument("output", metavar="OUT", help="output file, or folder (created if needed)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=restore_main)
