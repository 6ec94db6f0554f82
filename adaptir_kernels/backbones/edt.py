"""EDT (Li et al., "On Efficient Transformer-Based Image Pre-training for Low-Level
Vision", IJCAI 2023), built for one task, with the module names, parameter shapes and
buffers of the published checkpoints (e.g. SRx2x3x4_EDTB_ImageNet200K.pth) and of the
published AdaptIR code (adapters are added by `adaptir_kernels.inject`).

Layout (defaults = EDT-B):
    x in [0, 1] -> - mean -> task head (conv, `depth` residual blocks; denoise/derain
    heads downsample by 2 per block) -> body: SwinIR-style body of 6 stages x 6 CSwin
    blocks, width 180; each block splits the channels into two halves attending in
    6x24 and 24x6 windows (shifted in odd blocks) -> task tail (skip-connected blocks,
    pixel-shuffle upsampler for SR) -> + input (bilinearly upsampled for SR) -> + mean.
Any input size is accepted: the input is padded by mirroring to a multiple of the window
(and of the head's downsampling) and the output cropped back.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .common import AdapterSlot, DropPath, pad_symmetric, round_up

TASKS = ("sr_2", "sr_3", "sr_4", "denoise_15", "denoise_25", "denoise_30", "denoise_50", "derainH", "derainL")


def parse_task(task: str) -> Tuple[str, Union[int, str], str]:
    """task name -> (kind, level, module suffix): "sr_2" -> ("sr", 2, "sr_x2"),
    "denoise_30" -> ("dn", 30, "dn_g30"), "derainH"/"derainL" -> ("dr", "H", "dr_H")
    (the published AdaptIR code names the derain head "H" for both rain levels)."""
    m = re.fullmatch(r"sr_?x?(\d+)", task)
    if m:
        s = int(m.group(1))
        if not (s & (s - 1) == 0 or s == 3) or s < 2:
            raise ValueError(f"EDT SR scale {s} is not supported (2^n or 3)")
        return "sr", s, f"sr_x{s}"
    m = re.fullmatch(r"denoise_?g?(\d+)", task)
    if m:
        n = int(m.group(1))
        return "dn", n, f"dn_g{n}"
    if task in ("derain", "derainH", "derainL"):
        return "dr", "H", "dr_H"
    raise ValueError(f"unknown EDT task {task!r}; expected sr_<scale>, denoise_<sigma>, derainH or derainL")


# -- head / tail blocks ---------------------------------------------------------------


class ResBlockDown(nn.Module):
    def __init__(self, in_chl: int, out_chl: int, down: bool = False):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_chl, in_chl, 3, 1, 1)
        self.relu_1 = nn.LeakyReLU(0.2)
        self.conv_2 = nn.Conv2d(in_chl, out_chl, 3, 1, 1)
        self.relu_2 = nn.LeakyReLU(0.2)
        self.shortcut = nn.Conv2d(in_chl, out_chl, 1, 1, 0)
        self.down = down
        if down:
            self.conv_down = nn.Conv2d(out_chl, out_chl, 4, 2, 1, bias=False)

    def forward(self, x):
        y = self.relu_2(self.conv_2(self.relu_1(self.conv_1(x)))) + self.shortcut(x)
        if self.down:
            return self.conv_down(y), y
        return y


class ResBlockUp(nn.Module):
    def __init__(self, in_chl: int, out_chl: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_chl, out_chl, 3, 1, 1)
        self.relu_1 = nn.LeakyReLU(0.2)
        self.conv_2 = nn.Conv2d(out_chl, out_chl, 3, 1, 1)
        self.relu_2 = nn.LeakyReLU(0.2)
        self.shortcut = nn.Conv2d(in_chl, out_chl, 1, 1, 0)

    def forward(self, x):
        return self.relu_2(self.conv_2(self.relu_1(self.conv_1(x)))) + self.shortcut(x)


class UpResBlock(nn.Module):
    def __init__(self, in_chl: int, out_chl: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_chl, out_chl, kernel_size=2, stride=2)
        self.block = ResBlockUp(out_chl * 2, out_chl)

    def forward(self, x, skip):
        return self.block(torch.cat([self.up(x), skip], dim=1))


class ResBlockSkip(nn.Module):
    def __init__(self, in_chl: int, out_chl: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chl, out_chl, 3, 1, 1)
        self.block = ResBlockUp(out_chl * 2, out_chl)

    def forward(self, x, skip):
        return self.block(torch.cat([self.conv(x), skip], dim=1))


class Upsample(nn.Sequential):
    def __init__(self, scale: int, num_feat: int):
        m = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                m += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            m += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} is not supported (2^n or 3)")
        super().__init__(*m)


# -- the transformer body -------------------------------------------------------------


class Mlp(nn.Module):
    """fc1 -> GELU -> depthwise 5x5 conv -> GELU -> fc2, on (B, H, W, C) tokens."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 5, 1, 2, groups=hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        x = self.act(self.fc1(x))
        # The conv runs on the channels-last view; no NCHW copy is made.
        x = self.act(self.dwconv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        return self.fc2(x)


def _window_dims(window_size: Sequence[int], index: int) -> Tuple[int, int]:
    """(window height, window width) of attention half `index` (the second half uses
    the transposed window)."""
    return (window_size[0], window_size[1]) if index == 0 else (window_size[1], window_size[0])


def window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(..., B, H, W, C) -> (..., B * nW, wh, ww, C); windows ordered row-major per image."""
    *lead, B, H, W, C = x.shape
    x = x.reshape(*lead, B, H // wh, wh, W // ww, ww, C)
    k = len(lead)
    perm = list(range(k)) + [k, k + 1, k + 3, k + 2, k + 4, k + 5]
    return x.permute(*perm).reshape(*lead, -1, wh, ww, C)


def window_reverse(windows: torch.Tensor, wh: int, ww: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, wh, ww, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    B = windows.shape[0] // ((H // wh) * (W // ww))
    x = windows.reshape(B, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def shifted_window_mask(H: int, W: int, window_size: Sequence[int], shift_size: Sequence[int],
                        index: int, device=None) -> torch.Tensor:
    """(nW, N, N) additive mask (0 / -100) separating the regions that a cyclic shift
    brings into one window, for attention half `index`."""
    wh, ww = _window_dims(window_size, index)
    sh, sw = _window_dims(shift_size, index)
    img = torch.zeros((1, H, W, 1), device=device)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, wh, ww).reshape(-1, wh * ww)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


_MASK_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_MASK_CACHE_BYTES = 1 << 30


def _cached_mask(H, W, window_size, shift_size, index, device, dtype=torch.float32) -> torch.Tensor:
    key = (H, W, tuple(window_size), tuple(shift_size), index, str(device), dtype)
    m = _MASK_CACHE.get(key)
    if m is None:
        # In the attention's dtype (a half-precision model at another size than its own):
        # 0 and -100 are exact in float16 and bfloat16.
        m = shifted_window_mask(H, W, window_size, shift_size, index, device=device).to(dtype)
        _MASK_CACHE[key] = m
        # At most 32 masks and _MASK_CACHE_BYTES in all (one mask of a 1024 x 1024 input
        # is about 600 MB in float32), dropping the oldest; the newest always stays.
        while len(_MASK_CACHE) > 1 and (len(_MASK_CACHE) > 32 or sum(
                t.numel() * t.element_size() for t in _MASK_CACHE.values()) > _MASK_CACHE_BYTES):
            _MASK_CACHE.popitem(last=False)
    else:
        _MASK_CACHE.move_to_end(key)
    return m


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (wh, ww) windows for one channel half, plus the
    locally-enhanced positional encoding (a depthwise 3x3 conv of v inside each window)."""

    def __init__(self, dim: int, window_size: Sequence[int], num_heads: int,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, index: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = nn.Dropout(attn_drop)
        self.index = index
        self.lepe = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, qkv: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """qkv: (3, B, H, W, dim) -> (B, H, W, dim)."""
        _, B, H, W, C = qkv.shape
        wh, ww = _window_dims(self.window_size, self.index)
        nh, d = self.num_heads, C // self.num_heads
        win = window_partition(qkv, wh, ww)  # (3, B_, wh, ww, C)
        B_ = win.shape[1]
        N = wh * ww
        heads = win.reshape(3, B_, N, nh, d).permute(0, 1, 3, 2, 4)  # (3, B_, nh, N, d)
        q, k, v = heads[0], heads[1], heads[2]
        lepe = self.lepe(win[2].permute(0, 3, 1, 2))  # (B_, C, wh, ww), zero-padded per window
        lepe = lepe.reshape(B_, nh, d, N).transpose(-1, -2)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B_, nh, N, N)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, nh, N, N) + mask[None, :, None]
            attn = attn.view(B_, nh, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v + lepe).transpose(1, 2).reshape(B_, wh, ww, C)
        return window_reverse(out, wh, ww, H, W)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, index={self.index}"


class CSwinTransformerBlock(AdapterSlot, nn.Module):
    """EDT block: two attention halves (window (a, b) and (b, a)), then the FFN; the
    adapter (if any) runs beside the FFN on norm2's output, as (B, H, W, C) tokens."""

    adapter_layout = "nhwc"
    adapter_preset = "edt"

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int,
                 window_size: Sequence[int], shift_size: Optional[Sequence[int]], mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.dim = self.d_model = dim
        self.input_resolution = tuple(input_resolution)
        self.num_heads = num_heads
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size) if shift_size else None
        self.mlp_ratio = mlp_ratio
        if self.shift_size:
            for s, w in zip(self.shift_size, self.window_size):
                if not 0 <= s < w:
                    raise ValueError(f"shift {self.shift_size} must lie in [0, window {self.window_size})")
        self.norm1 = nn.LayerNorm(dim)
        self.attns = nn.ModuleList([
            WindowAttention(dim // 2, self.window_size, num_heads, qk_scale=qk_scale, attn_drop=attn_drop, index=i)
            for i in range(2)
        ])
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self._init_adapter_slot()
        if self.shift_size:
            H, W = self.input_resolution
            self.register_buffer("attn_mask_h", shifted_window_mask(H, W, self.window_size, self.shift_size, 0))
            self.register_buffer("attn_mask_v", shifted_window_mask(H, W, self.window_size, self.shift_size, 1))
        else:
            self.register_buffer("attn_mask_h", None)
            self.register_buffer("attn_mask_v", None)

    def _mask(self, index: int, x_size: Tuple[int, int], device, dtype) -> Optional[torch.Tensor]:
        if not self.shift_size:
            return None
        if tuple(x_size) == self.input_resolution:
            return self.attn_mask_h if index == 0 else self.attn_mask_v
        return _cached_mask(x_size[0], x_size[1], self.window_size, self.shift_size, index, device,
                            self.attn_mask_h.dtype if self.attn_mask_h is not None else dtype)

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        H, W = x_size
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        shortcut = x
        qkv = self.qkv(self.norm1(x)).view(B, H, W, 3, C).permute(3, 0, 1, 2, 4)  # (3, B, H, W, C)
        halves = [qkv[..., : C // 2], qkv[..., C // 2:]]
        outs = []
        for i, part in enumerate(halves):
            if self.shift_size:
                sh, sw = _window_dims(self.shift_size, i)
                part = torch.roll(part, shifts=(-sh, -sw), dims=(2, 3))
            y = self.attns[i](part, self._mask(i, x_size, x.device, x.dtype))
            if self.shift_size:
                y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
            outs.append(y)
        x = shortcut + self.drop_path(self.proj(torch.cat(outs, dim=-1)))

        y = self.norm2(x)  # (B, H, W, C), contiguous: the adapter reads it in place
        f = self.mlp(y)
        if self.adaptir is not None:
            f = f + self.adaptir(y)
        x = x + self.drop_path(f)
        return x.view(B, H * W, C)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}")


class BasicLayer(nn.Module):
    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                 drop, attn_drop, drop_path):
        super().__init__()
        self.blocks = nn.ModuleList([
            CSwinTransformerBlock(
                dim, input_resolution, num_heads, window_size,
                shift_size=None if i % 2 == 0 else (window_size[0] // 2, window_size[1] // 2),
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
            )
            for i in range(depth)
        ])

    def forward(self, x, x_size):
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


class RSTB(nn.Module):
    """A stage: blocks with a residual around them (no conv: EDT's stages have none)."""

    def __init__(self, **kw):
        super().__init__()
        self.residual_group = BasicLayer(**kw)

    def forward(self, x, x_size):
        return self.residual_group(x, x_size) + x


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, HW, C)


class SwinBody(nn.Module):
    def __init__(self, img_size=48, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=(6, 24),
                 mlp_ratio=2.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1, resi_connection="1conv"):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        res = (img_size, img_size)
        self.layers = nn.ModuleList()
        for i, (d, nh) in enumerate(zip(depths, num_heads)):
            self.layers.append(RSTB(
                dim=embed_dim, input_resolution=res, depth=d, num_heads=nh, window_size=tuple(window_size),
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[sum(depths[:i]): sum(depths[: i + 1])],
            ))
        self.norm = nn.LayerNorm(embed_dim)
        if resi_connection == "1conv":
            self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        elif resi_connection == "3conv":
            self.conv_after_body = nn.Sequential(
                nn.Conv2d(embed_dim, embed_dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(embed_dim // 4, embed_dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(embed_dim // 4, embed_dim, 3, 1, 1),
            )
        else:
            raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        t = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            t = layer(t, (H, W))
        t = self.norm(t).transpose(1, 2).reshape(B, C, H, W)
        return self.conv_after_body(t) + x


class EDT(nn.Module):
    """EDT backbone built for one task (EDT-B by default).

    Args:
        task: "sr_2" | "sr_3" | "sr_4" | "denoise_<sigma>" | "derainH" | "derainL".
        extra_tasks: more task heads/tails to build (e.g. ("sr_3", "sr_4") to hold every
            tensor of a multi-task checkpoint); forward uses `task` only.
        embed_dim, depths, num_heads, window_size, mlp_ratio: transformer body.
        num_feat, depth: head/tail width and number of residual (down/up) blocks.
        img_size: the training resolution of the body; its attention masks are stored.
        img_range: pixel scale inside the network (1.0 as published).
        drop_path_rate: stochastic depth of the body (0.1 as published).
    forward(x): x (N, 3, H, W) in [0, 1], any H and W -> (N, 3, H*s, W*s).
    """

    def __init__(self, task: str = "sr_2", embed_dim: int = 180, depths: Sequence[int] = (6,) * 6,
                 num_heads: Sequence[int] = (6,) * 6, window_size: Sequence[int] = (6, 24),
                 mlp_ratio: float = 2.0, num_feat: int = 32, depth: int = 2, img_size: int = 48,
                 in_chans: int = 3, img_range: float = 1.0, resi_connection: str = "1conv",
                 drop_path_rate: float = 0.1, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 extra_tasks: Sequence[str] = ()):
        super().__init__()
        self.task = task
        self.kind, self.level, self.suffix = parse_task(task)
        self.embed_dim = embed_dim
        self.num_feat = num_feat
        self.depth = depth
        self.window_size = tuple(window_size)
        self.img_range = float(img_range)
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)

        built = []
        for t in (task,) + tuple(extra_tasks):
            kind, level, suffix = parse_task(t)
            if suffix in built:
                continue
            built.append(suffix)
            self._build_head(kind, suffix, in_chans)
        self.body = SwinBody(img_size=img_size, embed_dim=embed_dim, depths=tuple(depths),
                             num_heads=tuple(num_heads), window_size=self.window_size, mlp_ratio=mlp_ratio,
                             qkv_bias=qkv_bias, qk_scale=qk_scale, drop_path_rate=drop_path_rate,
                             resi_connection=resi_connection)
        for suffix in built:
            kind, level, _ = parse_task(self._suffix_task(suffix))
            self._build_tail(kind, level, suffix, in_chans)
        self.built_suffixes = tuple(built)

    @staticmethod
    def _suffix_task(suffix: str) -> str:
        if suffix.startswith("sr_x"):
            return "sr_" + suffix[4:]
        if suffix.startswith("dn_g"):
            return "denoise_" + suffix[4:]
        return "derainH"

    def _build_head(self, kind: str, suffix: str, in_chans: int) -> None:
        nf, depth = self.num_feat, self.depth
        head = nn.ModuleList([nn.Conv2d(in_chans, nf, 3, 1, 1)])
        for i in range(depth):
            head.append(ResBlockDown(nf * 2 ** i, nf * 2 ** (i + 1), down=(kind != "sr")))
        head.append(nn.Conv2d(nf * 2 ** depth, self.embed_dim, 3, 1, 1))
        setattr(self, "head_" + suffix, head)

    def _build_tail(self, kind: str, level, suffix: str, in_chans: int) -> None:
        nf, depth = self.num_feat, self.depth
        tail = nn.ModuleList()
        out_chl = self.embed_dim
        for i in reversed(range(depth)):
            in_chl = self.embed_dim if i == depth - 1 else nf * 2 ** (i + 2)
            out_chl = nf * 2 ** (i + 1)
            tail.append(ResBlockSkip(in_chl, out_chl) if kind == "sr" else UpResBlock(in_chl, out_chl))
        if kind == "sr":
            tail.append(Upsample(level, out_chl))
        tail.append(nn.Conv2d(out_chl, in_chans, 3, 1, 1))
        setattr(self, "tail_" + suffix, tail)

    # -- properties used by inference / injection helpers ------------------------------
    @property
    def scale(self) -> int:
        return self.level if self.kind == "sr" else 1

    @property
    def pad_multiple(self) -> int:
        """Input sides must be multiples of this: the window pattern (lcm of the two window
        sides, both halves use both orientations) times the head's downsampling."""
        a, b = self.window_size
        m = a * b // math.gcd(a, b)
        return m if self.kind == "sr" else m * 2 ** self.depth

    def task_parameters(self):
        """Parameters of this task's head and tail (optionally trained with adapters)."""
        yield from getattr(self, "head_" + self.suffix).parameters()
        yield from getattr(self, "tail_" + self.suffix).parameters()

    def is_other_task_key(self, key: str) -> bool:
        """True for checkpoint keys of task heads/tails this model was not built with."""
        m = re.match(r"(head|tail)_((?:sr_x|dn_g)\d+|dr_[A-Za-z]+)\.", key)
        return bool(m) and m.group(2) not in self.built_suffixes

    # -- forward ----------------------------------------------------------------------
    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """Forward on an input whose sides are multiples of pad_multiple."""
        mean = self.mean.to(x.dtype)
        x_inp = (x - mean) * self.img_range
        head = getattr(self, "head_" + self.suffix)
        tail = getattr(self, "tail_" + self.suffix)
        skips = []
        h = x_inp
        last = len(head) - 1
        for j, blk in enumerate(head):
            if j == 0 or j == last:
                h = blk(h)
            elif self.kind == "sr":
                h = blk(h)
                skips.append(h)
            else:
                h, skip = blk(h)
                skips.append(skip)
        h = self.body(h)
        last = len(tail) - 1
        for j, blk in enumerate(tail):
            if j == last:
                if self.kind == "sr":
                    base = F.interpolate(x_inp, scale_factor=self.level, mode="bilinear", align_corners=False)
                else:
                    base = x_inp
                h = base + blk(h)
            elif self.kind == "sr" and j == last - 1:
                h = blk(h)
            else:
                h = blk(h, skips[-j - 1])
        return h / self.img_range + mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected (N, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.pad_multiple
        H, W = round_up(h, m), round_up(w, m)
        if (H, W) == (h, w):
            return self.forward_core(x)
        s = self.scale
        return self.forward_core(pad_symmetric(x, H, W))[..., : h * s, : w * s]

    def extra_repr(self) -> str:
        return f"task={self.task!r}, scale={self.scale}, pad_multiple={self.pad_multiple}"
