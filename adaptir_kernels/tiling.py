"""Inference on large images with bounded memory.

- `tiled_forward(fn, x, tile, margin, ...)`: overlapping tiles, each tile's border of
  `margin` pixels discarded (except on the image border) and the remaining interiors
  averaged where they overlap, the way the published IPT chop blends its 48x48 tiles.
  Memory: the input, the output, a one-channel weight map and one batch of tiles.
- `restore(model, x, ...)`: the backbone's own inference: IPT in 48x48 tiles (stride
  12, margin 12, as published), EDT on the whole image with mirror padding to its
  window multiple, or EDT in tiles when `tile` is given (to bound memory).

A tqdm progress bar is shown when there are many tiles (progress=None), always
(progress=True) or never (progress=False).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn

from .backbones.common import pad_symmetric, round_up

__all__ = ["tile_starts", "tiled_forward", "restore", "PROGRESS_MIN_TILES"]

PROGRESS_MIN_TILES = 64

Pair = Union[int, Tuple[int, int]]


def _pair(v: Pair) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def tile_starts(length: int, tile: int, stride: int) -> List[int]:
    """Start offsets of tiles of size `tile` covering [0, length), `stride` apart, the
    last one flush with the end."""
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _progress_bar(total: int, progress: Optional[bool], desc: str):
    show = total >= PROGRESS_MIN_TILES if progress is None else bool(progress)
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tile", leave=False)


def tiled_forward(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: Pair,
    margin: Pair = 0,
    stride: Optional[Pair] = None,
    scale: int = 1,
    batch_size: int = 16,
    progress: Optional[bool] = None,
    desc: str = "tiles",
) -> torch.Tensor:
    """Run `fn` (image (B, C, th, tw) -> (B, C', th*scale, tw*scale)) over overlapping
    tiles of x (N, C, H, W) and blend the results into (N, C', H*scale, W*scale).

    Args:
        tile: tile size (th, tw) or an int.
        margin: pixels (input resolution) dropped from each tile side that is not on the
            image border; at least the model's receptive-field radius for a seamless
            result.
        stride: distance between tile starts; default tile - 2 * margin (each pixel
            then comes from one tile except where the last tile is pulled back). Must not
            exceed tile - 2 * margin, else pixels would be left uncovered.
        scale: output/input size ratio of fn.
        batch_size: tiles (times N) per call of fn.
    Inputs smaller than a tile are mirror-padded to the tile size and the result is cropped.
    """
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {tuple(x.shape)}")
    th, tw = _pair(tile)
    mh, mw = _pair(margin)
    if th <= 0 or tw <= 0:
        raise ValueError(f"tile must be positive, got {(th, tw)}")
    if mh < 0 or mw < 0 or 2 * mh >= th or 2 * mw >= tw:
        raise ValueError(f"margin {(mh, mw)} must be >= 0 and less than half the tile {(th, tw)}")
    sh, sw = _pair(stride) if stride is not None else (th - 2 * mh, tw - 2 * mw)
    if not (0 < sh <= th - 2 * mh and 0 < sw <= tw - 2 * mw):
        raise ValueError(
            f"stride {(sh, sw)} must be in [1, tile - 2*margin] = [1, {(th - 2 * mh, tw - 2 * mw)}] "
            "so that the kept tile interiors cover the image")
    N, _, h, w = x.shape
    if h < th or w < tw:
        H, W = max(h, th), max(w, tw)
        out = tiled_forward(fn, pad_symmetric(x, H, W), (th, tw), (mh, mw), (sh, sw), scale,
                            batch_size, progress, desc)
        return out[..., : h * scale, : w * scale]

    ys, xs = tile_starts(h, th, sh), tile_starts(w, tw, sw)
    coords = [(y, x0) for y in ys for x0 in xs]
    per_call = max(1, int(batch_size) // max(1, N))
    s = int(scale)
    out = None
    weight = None
    bar = _progress_bar(len(coords), progress, desc)
    try:
        for i in range(0, len(coords), per_call):
            chunk = coords[i: i + per_call]
            batch = torch.cat([x[:, :, y: y + th, x0: x0 + tw] for y, x0 in chunk], dim=0)
            res = fn(batch)
            if res.shape[-2:] != (th * s, tw * s):
                raise ValueError(
                    f"fn returned tiles of size {tuple(res.shape[-2:])}, expected {(th * s, tw * s)} (scale={s})")
            if out is None:
                out = res.new_zeros((N, res.shape[1], h * s, w * s))
                weight = res.new_zeros((1, 1, h * s, w * s))
            for k, (y, x0) in enumerate(chunk):
                t0 = 0 if y == 0 else mh
                b0 = th if y + th == h else th - mh
                l0 = 0 if x0 == 0 else mw
                r0 = tw if x0 + tw == w else tw - mw
                piece = res[k * N: (k + 1) * N, :, t0 * s: b0 * s, l0 * s: r0 * s]
                oy, ox = (y + t0) * s, (x0 + l0) * s
                out[:, :, oy: oy + piece.shape[-2], ox: ox + piece.shape[-1]] += piece
                weight[:, :, oy: oy + piece.shape[-2], ox: ox + piece.shape[-1]] += 1
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return out / weight


@torch.no_grad()
def restore(
    model: nn.Module,
    x: torch.Tensor,
    tile: Optional[Pair] = None,
    margin: Optional[Pair] = None,
    stride: Optional[Pair] = None,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """Restore an image batch x (N, 3, H, W) with an IPT or EDT model in eval mode, under
    no_grad, returning (N, 3, H*s, W*s). The model's training flag is restored after.

    IPT: tiles of the model's patch size (48); margin/stride default to 12 as published
    (a wider margin given alone takes the stride it leaves, patch - 2 * margin).
    EDT: tile=None runs the whole (mirror-padded) image at once; tile=T runs T x T tiles
    (T rounded up to the model's pad multiple) with margin (default 16, or T/8 if
    larger) to bound memory on large images; an image within one tile runs whole.
    Other models: tile is required; scale is read from model.scale (default 1).
    """
    from .backbones import EDT, IPT

    was_training = model.training
    model.eval()
    try:
        if isinstance(model, IPT):
            P = model.patch_size
            if tile is not None and _pair(tile) != (P, P):
                raise ValueError(f"IPT runs on {P}x{P} tiles only, got tile={tile}")
            margin = P // 4 if margin is None else margin
            if stride is None:  # the published P/4, or less where a wider margin leaves less
                stride = tuple(max(1, min(P // 4, P - 2 * mg)) for mg in _pair(margin))
            return tiled_forward(
                model.forward_patch, x, tile=P, margin=margin, stride=stride, scale=model.scale,
                batch_size=batch_size or model.tile_batch_size,
                progress=model.progress if progress is None else progress, desc="IPT tiles")
        if isinstance(model, EDT) and tile is None:
            return model(x)
        if tile is None:
            raise ValueError(f"tile= is required for {type(model).__name__}")
        th, tw = _pair(tile)
        if isinstance(model, EDT):
            m = model.pad_multiple
            th, tw = round_up(th, m), round_up(tw, m)
            if x.shape[-2] <= th and x.shape[-1] <= tw:
                return model(x)  # one tile: the whole image, padded as little as it needs
        if margin is None:
            margin = (max(16, th // 8), max(16, tw // 8))
            margin = (min(margin[0], (th - 1) // 2), min(margin[1], (tw - 1) // 2))
        return tiled_forward(
            model, x, tile=(th, tw), margin=margin, stride=stride, scale=int(getattr(model, "scale", 1)),
            batch_size=batch_size or 4, progress=progress, desc=f"{type(model).__name__} tiles")
    finally:
        model.train(was_training)
