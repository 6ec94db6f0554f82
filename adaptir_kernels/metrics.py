"""PSNR and SSIM with the conventions of BasicSR and published restoration tables.

- Both images are first brought to 8 bits: float images in [0, 1] are clipped, scaled
  by 255 and rounded (`to_uint8`); uint8 images are used as they are.
- `y_channel=True` scores the Y channel of BT.601 YCbCr (MATLAB's rgb2ycbcr:
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B on 0-255, not rounded);
  otherwise all RGB channels are scored.
- `crop_border` pixels are removed from each side before scoring (the scale for SR).
- SSIM: Wang et al.'s index with an 11x11 Gaussian window of sigma 1.5, C1 = (0.01 L)^2,
  C2 = (0.03 L)^2 with L = 255, over the valid region (no padding), averaged over the
  positions and then over the channels.
All arithmetic is float64.
"""

from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency of the package
    torch = None

__all__ = ["calculate_psnr", "calculate_ssim", "gaussian_window", "rgb_to_y", "score", "to_uint8"]

ArrayLike = Union[np.ndarray, "torch.Tensor"]


def to_uint8(img: ArrayLike) -> np.ndarray:
    """An image as uint8 (H, W, C) or (H, W).

    Accepts uint8 arrays (returned as they are), float arrays or tensors in [0, 1]
    (clipped, times 255, rounded), and tensors of shape (C, H, W) or (1, C, H, W).
    """
    if torch is not None and isinstance(img, torch.Tensor):
        t = img.detach()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of shape {tuple(t.shape)}")
            t = t[0]
        if t.dim() == 3:
            t = t.permute(1, 2, 0)
        if t.dtype == torch.uint8:
            return t.cpu().numpy()
        arr = t.to(torch.float64).cpu().numpy()
    else:
        arr = np.asarray(img)
        if arr.dtype == np.uint8:
            return arr
        arr = arr.astype(np.float64)
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma on the 16-235 scale from an RGB image on the 0-255 scale (float64)."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"rgb_to_y expects an (H, W, 3) image, got shape {img.shape}")
    return img @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0


def _prepare(img1: ArrayLike, img2: ArrayLike, crop_border: int, y_channel: bool) -> Tuple[np.ndarray, np.ndarray]:
    a, b = to_uint8(img1), to_uint8(img2)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    if y_channel and a.ndim == 3 and a.shape[-1] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if crop_border:
        c = int(crop_border)
        if a.shape[0] <= 2 * c or a.shape[1] <= 2 * c:
            raise ValueError(f"crop_border={c} leaves nothing of an image of size {a.shape[:2]}")
        a, b = a[c:-c, c:-c], b[c:-c, c:-c]
    return a, b


def calculate_psnr(img1: ArrayLike, img2: ArrayLike, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit images (peak 255); inf if identical."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The normalised 1-D Gaussian of `size` taps; the 2-D window is its outer product."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r * r) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of an (H, W, C) array with the window k x k."""
    n = k.size
    h, w = x.shape[:2]
    rows = sum(k[i] * x[i : h - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[:, i : w - n + 1 + i] for i in range(n))


def calculate_ssim(img1: ArrayLike, img2: ArrayLike, crop_border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity (11x11 Gaussian window, sigma 1.5), mean over channels."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    k = gaussian_window(11, 1.5)
    if a.shape[0] < k.size or a.shape[1] < k.size:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels after cropping, got {a.shape[:2]}")
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    mu_a, mu_b = _filter_valid(a, k), _filter_valid(b, k)
    var_a = _filter_valid(a * a, k) - mu_a * mu_a
    var_b = _filter_valid(b * b, k) - mu_b * mu_b
    cov = _filter_valid(a * b, k) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean(axis=(0, 1)).mean())


def score(restored: ArrayLike, gt: ArrayLike, task) -> Tuple[float, float]:
    """(PSNR, SSIM) with the conventions of `task` (a Task or a task name)."""
    from .data.degradations import get_task

    t = get_task(task) if isinstance(task, str) else task
    return (
        calculate_psnr(restored, gt, t.crop_border, t.y_channel),
        calculate_ssim(restored, gt, t.crop_border, t.y_channel),
    )
