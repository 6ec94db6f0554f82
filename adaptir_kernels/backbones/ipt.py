"""IPT (Chen et al., CVPR 2021, "Pre-Trained Image Processing Transformer") with the
module names, parameter shapes and buffers of the published checkpoint IPT_pretrain.pt
and of the published AdaptIR code (adapters are added by `adaptir_kernels.inject`).

Layout of the network (defaults = the published model):
    x in [0, input_range] -> * rgb_range / input_range -> sub_mean -> head[t]
    -> body: 3x3 patches of the 48x48 feature map become 256 tokens of width 576
       (L, N, C), 12 encoder + 12 decoder layers, a task query per head/tail
    -> + head output -> tail[t] (upsampler for the task's scale) -> add_mean -> back to
       the input range.
The transformer works on 48x48 patches only (learned positions, per-task queries);
other input sizes are handled at inference by overlapping 48x48 tiles (IPT's chop).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .common import AdapterSlot

# task name -> index of the head/tail/query it uses (published AdaptIR task map)
TASK_MAP = {
    "sr_2": 0,
    "sr_3": 1,
    "sr_4": 2,
    "lr4_noise30": 2,
    "lr4_jpeg30": 2,
    "derainL": 3,
    "derainH": 3,
    "denoise_30": 4,
    "denoise_50": 5,
    "low_light": 5,
}
TASKS = tuple(TASK_MAP)


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class MeanShift(nn.Conv2d):
    """Fixed 1x1 conv adding (sign=+1) or subtracting (sign=-1) the RGB mean."""

    def __init__(self, rgb_range: float, rgb_mean=(0.4488, 0.4371, 0.4040), rgb_std=(1.0, 1.0, 1.0), sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean, dtype=torch.float32) / std)
        for p in self.parameters():
            p.requires_grad_(False)


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, kernel_size: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(
            _conv(n_feats, n_feats, kernel_size), nn.ReLU(True), _conv(n_feats, n_feats, kernel_size)
        )
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x).mul(self.res_scale) + x


class Upsampler(nn.Sequential):
    """conv + PixelShuffle per factor 2 (scale 2^n), or one conv + PixelShuffle(3);
    empty for scale 1 (the published checkpoint keeps the empty slot)."""

    def __init__(self, scale: int, n_feats: int):
        m = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                m += [_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            m += [_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} is not supported (2^n or 3)")
        super().__init__(*m)


class LearnedPositionalEncoding(nn.Module):
    def __init__(self, max_positions: int, d_model: int, seq_length: int):
        super().__init__()
        self.pe = nn.Embedding(max_positions, d_model)
        self.seq_length = seq_length
        self.register_buffer("position_ids", torch.arange(seq_length).expand((1, -1)))

    def forward(self) -> torch.Tensor:
        return self.pe(self.position_ids[:, : self.seq_length])  # (1, L, C)


class TransformerEncoderLayer(AdapterSlot, nn.Module):
    """Pre-norm encoder layer; the adapter (if any) sits beside linear1/linear2 on norm2's output."""

    adapter_layout = "lnc"
    adapter_preset = "ipt"

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, bias=False)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self._init_adapter_slot()
        nn.init.kaiming_uniform_(self.self_attn.in_proj_weight, a=math.sqrt(5))

    def ffn(self, y: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(y))))

    def forward(self, src: torch.Tensor, pos: Optional[torch.Tensor] = None,
                hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        y = self.norm1(src)
        qk = y if pos is None else y + pos
        src = src + self.dropout1(self.self_attn(qk, qk, y, need_weights=False)[0])
        y = self.norm2(src)
        f = self.ffn(y)
        if self.adaptir is not None:
            f = f + self.adaptir(y, hw=hw)
        return src + self.dropout2(f)


class TransformerDecoderLayer(AdapterSlot, nn.Module):
    """Pre-norm decoder layer; the adapter (if any) sits beside the FFN on norm3's output."""

    adapter_layout = "lnc"
    adapter_preset = "ipt"

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, bias=False)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, bias=False)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self._init_adapter_slot()

    def ffn(self, y: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(y))))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        y = self.norm1(tgt)
        qk = y if query_pos is None else y + query_pos
        tgt = tgt + self.dropout1(self.self_attn(qk, qk, y, need_weights=False)[0])
        y = self.norm2(tgt)
        q = y if query_pos is None else y + query_pos
        k = memory if pos is None else memory + pos
        tgt = tgt + self.dropout2(self.multihead_attn(q, k, memory, need_weights=False)[0])
        y = self.norm3(tgt)
        f = self.ffn(y)
        if self.adaptir is not None:
            f = f + self.adaptir(y, hw=hw)
        return tgt + self.dropout3(f)


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers: int, *args):
        super().__init__()
        self.layers = nn.ModuleList([TransformerEncoderLayer(*args) for _ in range(num_layers)])
        self.num_layers = num_layers

    def forward(self, src, pos=None, hw=None):
        for layer in self.layers:
            src = layer(src, pos=pos, hw=hw)
        return src


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, *args):
        super().__init__()
        self.layers = nn.ModuleList([TransformerDecoderLayer(*args) for _ in range(num_layers)])
        self.num_layers = num_layers

    def forward(self, tgt, memory, pos=None, query_pos=None, hw=None):
        for layer in self.layers:
            tgt = layer(tgt, memory, pos=pos, query_pos=query_pos, hw=hw)
        return tgt


class VisionTransformer(nn.Module):
    """IPT's body: patch tokens (L, N, C) through an encoder-decoder with task queries."""

    def __init__(self, img_dim: int, patch_dim: int, num_channels: int, embedding_dim: int,
                 num_heads: int, num_layers: int, hidden_dim: int, num_queries: int, dropout_rate: float = 0.0):
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(f"embedding_dim {embedding_dim} is not divisible by num_heads {num_heads}")
        if img_dim % patch_dim:
            raise ValueError(f"patch_size {img_dim} is not divisible by patch_dim {patch_dim}")
        self.img_dim = img_dim
        self.patch_dim = patch_dim
        self.embedding_dim = embedding_dim
        self.num_channels = num_channels
        self.grid = img_dim // patch_dim
        self.seq_length = self.grid ** 2
        self.flatten_dim = patch_dim * patch_dim * num_channels

        self.linear_encoding = nn.Linear(self.flatten_dim, embedding_dim)
        self.mlp_head = nn.Sequential(
            nn.Linear(embedding_dim, hidden_dim),
            nn.Dropout(dropout_rate),
            nn.ReLU(),
            nn.Linear(hidden_dim, self.flatten_dim),
            nn.Dropout(dropout_rate),
        )
        self.query_embed = nn.Embedding(num_queries, embedding_dim * self.seq_length)
        args = (embedding_dim, num_heads, hidden_dim, dropout_rate)
        self.encoder = TransformerEncoder(num_layers, *args)
        self.decoder = TransformerDecoder(num_layers, *args)
        self.position_encoding = LearnedPositionalEncoding(self.seq_length, embedding_dim, self.seq_length)
        self.dropout_layer1 = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, query_idx: int) -> torch.Tensor:
        n, _, h, w = x.shape
        if (h, w) != (self.img_dim, self.img_dim):
            raise ValueError(f"IPT's body takes {self.img_dim}x{self.img_dim} feature maps, got {h}x{w}")
        p = self.patch_dim
        hw = (self.grid, self.grid)
        # (N, C*p*p, L) -> (L, N, C*p*p): token index = row-major patch position.
        x = F.unfold(x, p, stride=p).permute(2, 0, 1).contiguous()
        x = self.dropout_layer1(self.linear_encoding(x)) + x
        query = self.query_embed.weight[query_idx].view(-1, 1, self.embedding_dim).expand(-1, n, -1)
        pos = self.position_encoding().transpose(0, 1)  # (L, 1, C)
        x = self.encoder(x + pos, hw=hw)
        x = self.decoder(x, x, query_pos=query, hw=hw)
        x = self.mlp_head(x) + x
        x = x.permute(1, 2, 0)  # (N, C*p*p, L)
        return F.fold(x, (self.img_dim, self.img_dim), p, stride=p)


class IPT(nn.Module):
    """IPT backbone, published configuration by default.

    Args:
        task: a name from TASK_MAP (e.g. "sr_2", "denoise_30", "derainH") or a head index.
        n_feats: feature width of heads/tails (the transformer width is n_feats*patch_dim^2).
        patch_size: side of the square patches the transformer takes (48).
        patch_dim: side of the pixel patch that forms one token (3).
        num_heads, num_layers: attention heads; encoder layers (= decoder layers).
        ffn_dim: FFN width (default 4 * d_model).
        scales: one head/tail/query per entry; the entry is the tail's upscale factor.
        rgb_range: the range IPT computes in (255, as published).
        input_range: the range of forward()'s input and output (1.0: images in [0, 1]).
        tile_batch_size: tiles per batch when inference chops a large image.
        progress: tqdm bar while chopping (None = only for many tiles).
    forward(x): x (N, 3, H, W) -> (N, 3, H*s, W*s). Training needs H = W = patch_size;
    in eval mode any size is accepted (overlapping tiles, see adaptir_kernels.tiling).
    """

    TASK_MAP = TASK_MAP

    def __init__(self, task: Union[str, int] = "sr_2", n_feats: int = 64, patch_size: int = 48,
                 patch_dim: int = 3, num_heads: int = 12, num_layers: int = 12, ffn_dim: Optional[int] = None,
                 scales: Sequence[int] = (2, 3, 4, 1, 1, 1), n_colors: int = 3, rgb_range: float = 255.0,
                 input_range: float = 1.0, dropout: float = 0.0, tile_batch_size: int = 64,
                 progress: Optional[bool] = None):
        super().__init__()
        if n_colors != 3:
            raise ValueError("IPT's mean shift is defined for 3 colour channels")
        self.scales = [int(s) for s in scales]
        self.patch_size = int(patch_size)
        self.rgb_range = float(rgb_range)
        self.input_range = float(input_range)
        self.tile_batch_size = int(tile_batch_size)
        self.progress = progress
        d_model = n_feats * patch_dim * patch_dim
        self.d_model = d_model

        self.sub_mean = MeanShift(rgb_range)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.ModuleList([
            nn.Sequential(_conv(n_colors, n_feats, 3), ResBlock(n_feats, 5), ResBlock(n_feats, 5))
            for _ in self.scales
        ])
        self.body = VisionTransformer(
            img_dim=patch_size, patch_dim=patch_dim, num_channels=n_feats, embedding_dim=d_model,
            num_heads=num_heads, num_layers=num_layers, hidden_dim=ffn_dim or 4 * d_model,
            num_queries=len(self.scales), dropout_rate=dropout,
        )
        self.tail = nn.ModuleList([
            nn.Sequential(Upsampler(s, n_feats), _conv(n_feats, n_colors, 3)) for s in self.scales
        ])
        self.set_task(task)

    # -- task selection ---------------------------------------------------------------
    def set_task(self, task: Union[str, int]) -> None:
        if isinstance(task, str):
            if task not in TASK_MAP:
                raise ValueError(f"unknown IPT task {task!r}; expected one of {TASKS} or a head index")
            idx = TASK_MAP[task]
        else:
            idx = int(task)
        if not 0 <= idx < len(self.scales):
            raise ValueError(f"task index {idx} out of range for {len(self.scales)} heads")
        self.task = task
        self.task_idx = idx

    @property
    def scale(self) -> int:
        return self.scales[self.task_idx]

    def task_parameters(self):
        """Parameters of the current task's head and tail (optionally trained with adapters)."""
        yield from self.head[self.task_idx].parameters()
        yield from self.tail[self.task_idx].parameters()

    # -- forward ----------------------------------------------------------------------
    def forward_patch(self, x: torch.Tensor) -> torch.Tensor:
        """One batch of patch_size x patch_size inputs (in input_range)."""
        k = self.rgb_range / self.input_range
        x = self.sub_mean(x * k)
        x = self.head[self.task_idx](x)
        x = self.body(x, self.task_idx) + x
        x = self.add_mean(self.tail[self.task_idx](x))
        return x / k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected (N, 3, H, W), got shape {tuple(x.shape)}")
        P = self.patch_size
        if tuple(x.shape[-2:]) == (P, P):
            return self.forward_patch(x)
        if self.training:
            raise ValueError(
                f"IPT trains on {P}x{P} patches, got {tuple(x.shape[-2:])}; crop patches, or call "
                "model.eval() for tiled inference on any size")
        from ..tiling import tiled_forward

        return tiled_forward(
            self.forward_patch, x, tile=P, margin=P // 4, stride=P // 4, scale=self.scale,
            batch_size=self.tile_batch_size, progress=self.progress,
        )

    def extra_repr(self) -> str:
        return f"task={self.task!r}, task_idx={self.task_idx}, scale={self.scale}"
