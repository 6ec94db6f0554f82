"""Put the fused AdaptIR adapter into a transformer block of your own.

    python python/adaptir_in_your_block.py

The adapter runs in parallel with the block's FFN on the same normalised input, and its
output is added to the FFN's output before the residual add:

    y = norm2(x);  x = x + mlp(y) + adapter(y)

Here a toy restoration network on (N, H, W, C) tokens is frozen and only the adapters
train for a few steps on a denoising task; then the adapters alone are saved.
"""

import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from adaptir_kernels import save_adapters, trainable_parameters
from adaptir_kernels.data import ShardedStream, TrainPatches, sample_photos
from adaptir_kernels.module import AdaptIR


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mix = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)  # stands in for attention
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        # (N, H, W, C) tokens; width 48 -> hidden 48 // 14 = 3 is too small, so set it
        self.adaptir = AdaptIR(dim, preset="edt", layout="nhwc", hidden=8, ci_hidden=2)

    def forward(self, x):  # x: (N, H, W, C)
        x = x + self.mix(self.norm1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = self.norm2(x)
        return x + self.mlp(y) + self.adaptir(y)


class ToyRestorer(nn.Module):
    def __init__(self, dim: int = 48, depth: int = 2):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 3, padding=1)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.out = nn.Conv2d(dim, 3, 3, padding=1)
        with torch.no_grad():
            self.out.weight.mul_(0.1)  # a gentle random network, so the loss starts near the input's

    def forward(self, img):
        x = self.embed(img).permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = blk(x)
        return img + self.out(x.permute(0, 3, 1, 2))


def main():
    torch.manual_seed(0)
    model = ToyRestorer()  # in practice: load your pre-trained weights here
    for name, p in model.named_parameters():
        p.requires_grad_(".adaptir." in name)
    print(trainable_parameters(model))

    data = TrainPatches(sample_photos(), task="denoise_30", patch_size=48, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=8, sampler=ShardedStream(len(data), seed=0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step, (noisy, clean) in zip(range(1, 6), loader):
        loss = F.l1_loss(model(noisy), clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: L1 {loss.item():.4f}")

    path = os.path.join(tempfile.gettempdir(), "toy_restorer_adapters.safetensors")
    tensors = save_adapters(model, path)
    print(f"saved {len(tensors)} adapter tensors to {path}: {sorted(tensors)[:3]} ...")


if __name__ == "__main__":
    main()
