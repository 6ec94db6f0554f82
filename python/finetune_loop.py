"""Fine-tune AdaptIR adapters on an EDT backbone inside your own training loop.

    python python/finetune_loop.py                       # small random EDT, about half a minute on a CPU
    python python/finetune_loop.py --weights EDTB.pth    # the published EDT-B (slow on a CPU)

The package provides the pieces; the loop is yours: build the backbone, inject the fused
adapters (adaptir_kernels.module.AdaptIR) beside every FFN, optimise only what is
trainable, save the adapters alone, and load them into a fresh model.
"""

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from adaptir_kernels import EDT, adapter_modules, inject, load_adapters, load_pretrained, save_adapters
from adaptir_kernels import trainable_parameters
from adaptir_kernels.data import ShardedStream, TrainPatches, sample_photos
from adaptir_kernels.module import AdaptIR


def build(weights=None):
    if weights:  # EDT-B as published
        model = EDT(task="sr_2")
        load_pretrained(model, weights)
        return inject(model)
    # a small random EDT so that the example runs anywhere in seconds
    model = EDT(task="sr_2", embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=(6, 12), num_feat=8, depth=1)
    return inject(model, hidden=8, ci_hidden=2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="EDT-B checkpoint (e.g. SRx2x3x4_EDTB_ImageNet200K.pth)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "adaptir_example"))
    args = p.parse_args()
    torch.manual_seed(0)

    model = build(args.weights)
    assert all(isinstance(m, AdaptIR) for m in adapter_modules(model).values())  # the fused module
    print(trainable_parameters(model))

    # 48-pixel LR patches synthesised from photographs (MATLAB bicubic x2), flipped and rotated
    data = TrainPatches(sample_photos(), task="sr_2", patch_size=48, seed=0)
    loader = DataLoader(data, batch_size=4, sampler=ShardedStream(len(data), seed=0))
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)

    model.train()
    for step, (lq, gt) in zip(range(1, args.steps + 1), loader):
        loss = F.l1_loss(model(lq), gt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: L1 {loss.item():.4f}")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "edt_sr2_adapters.safetensors")
    tensors = save_adapters(model, path)  # adapter tensors only, written atomically
    print(f"saved {len(tensors)} adapter tensors ({os.path.getsize(path) / 1024:.0f} KiB) to {path}")

    # later: the same backbone, fresh adapters, then the trained ones loaded
    torch.manual_seed(0)
    fresh = build(args.weights)
    load_adapters(fresh, path)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        x = torch.rand(1, 3, 48, 48)
        assert torch.equal(model(x), fresh(x))
    print("reloaded adapters reproduce the trained model")


if __name__ == "__main__":
    main()
