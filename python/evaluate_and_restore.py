"""Degrade a photograph, restore it with tiled inference, and score it like the published tables.

    python python/evaluate_and_restore.py                                 # small random IPT
    python python/evaluate_and_restore.py --weights IPT_pretrain.pt --adapters a.safetensors

Without --weights the backbone is random, so the restored image is not meaningful: the
point is the API (degradations, tiled restore, metrics with the field's conventions).
"""

import argparse
import os
import tempfile

import numpy as np
import torch
from PIL import Image

from adaptir_kernels import IPT, inject, load_adapters, load_pretrained, restore
from adaptir_kernels.data import get_task, mod_crop, rng_for, sample_photos
from adaptir_kernels.data.datasets import to_tensor
from adaptir_kernels.metrics import calculate_psnr, calculate_ssim, to_uint8


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="IPT_pretrain.pt")
    p.add_argument("--adapters", help="adapters trained with `adaptir finetune` for --task")
    p.add_argument("--task", default="denoise_30")
    args = p.parse_args()
    torch.manual_seed(0)

    task = get_task(args.task)
    if args.weights:
        model = IPT(task=task.name)
        load_pretrained(model, args.weights)
        inject(model)
    else:
        model = inject(IPT(task=task.name, n_feats=8, num_heads=4, num_layers=2, ffn_dim=144), hidden=8, ci_hidden=2)
    if args.adapters:
        load_adapters(model, args.adapters)

    gt = mod_crop(sample_photos(["chelsea"])[0].gt[:192, :256], task.scale)
    lq = task.synthesize(gt, rng_for(0, "chelsea"))  # seeded: the same input every run
    out = restore(model, to_tensor(lq)[None])  # IPT: 48x48 tiles, as published
    out = to_uint8(out[0])

    kw = dict(crop_border=task.crop_border, y_channel=task.y_channel)
    print(f"task {task.name} ({task.description}); metrics on {'Y' if task.y_channel else 'RGB'}, "
          f"border {task.crop_border}")
    lq = to_uint8(lq)  # for display and scores (denoising LQ is float in [0, 1], unquantised)
    ref = lq if task.scale == 1 else np.asarray(Image.fromarray(lq).resize(gt.shape[1::-1], Image.BICUBIC))
    print(f"input:    PSNR {calculate_psnr(ref, gt, **kw):6.2f} dB  SSIM {calculate_ssim(ref, gt, **kw):.4f}")
    print(f"restored: PSNR {calculate_psnr(out, gt, **kw):6.2f} dB  SSIM {calculate_ssim(out, gt, **kw):.4f}")
    path = os.path.join(tempfile.gettempdir(), f"chelsea_{task.name}.png")
    Image.fromarray(np.concatenate([ref, out, gt], axis=1)).save(path)
    print(f"input | restored | ground truth saved to {path}")
    if not args.weights:
        print("(random backbone: this only demonstrates the API)")


if __name__ == "__main__":
    main()
