"""Synthetic degradations and the task table, following the field's conventions.

Images are numpy arrays of shape (H, W, 3) (or (H, W)), uint8 on the 0-255 scale, RGB.
Every random degradation takes a `numpy.random.Generator`, so a result is a pure
function of the image and the seed (see `rng_for`).

- `imresize` is MATLAB's `imresize(img, scale, 'bicubic')`: cubic kernel with a = -0.5,
  the kernel widened by 1/scale when downscaling (antialiasing), symmetric padding,
  normalised weights, one dimension at a time (rows first). As in MATLAB, a uint8 image
  is rounded back to uint8 after each pass (halves away from zero, as MATLAB's uint8
  conversion: at x2 and x4 many values fall exactly on a half); a float image stays
  float64.
- `add_gaussian_noise`: img + sigma * N(0, 1) on the 0-255 scale, clipped to [0, 255],
  then brought back as the task's protocol says (`quantize`): rounded to uint8 (BasicSR's
  `clip=True, rounds=True`), truncated to uint8 (numpy's float-to-uint8 cast, what
  AdaptIR's pipeline does for training and for the lr4_noise30 test set), or not
  quantised: float32 in [0, 1], the package's convention for float images (AdaptIR's
  denoising test sets). The noise tasks follow AdaptIR's protocol (`Task.noise_train`,
  `Task.noise_eval`), so that scores and trained adapters compare with the published
  ones; the difference is small (truncation lowers values by half a level on average:
  at most a few hundredths of a dB).
- `jpeg_compress`: Pillow's JPEG encoder at quality q (4:2:0 chroma subsampling, as
  Pillow and OpenCV both default to), decoded back to RGB.
- Hybrids: lr4_noise30 = bicubic x4 then noise sigma 30; lr4_jpeg30 = bicubic x4 then
  JPEG quality 30 (the order used by AdaptIR's data pipeline). AdaptIR hands its RGB
  arrays to OpenCV's encoder, which takes them for BGR: its JPEG stage converts colours
  with R and B exchanged, a stronger degradation than a JPEG of the RGB image (LQ about
  0.4-0.9 dB lower in Y-PSNR). lr4_jpeg30 does the same (`reverse_channels=True`), so
  its scores compare with the published table; `jpeg_<q>` tasks compress the RGB image.
- low_light and derain have no synthetic model: they need paired LQ/GT data.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "Task",
    "TASKS",
    "add_gaussian_noise",
    "bicubic_downscale",
    "cubic",
    "degrade",
    "get_task",
    "imresize",
    "jpeg_compress",
    "lr4_jpeg30",
    "lr4_noise30",
    "mod_crop",
    "rng_for",
    "task_names",
]


# -- randomness ---------------------------------------------------------------------
def _key(k: Union[int, str]) -> int:
    if isinstance(k, str):
        return zlib.crc32(k.encode("utf-8"))
    k = int(k)
    if k < 0:
        raise ValueError(f"random keys must be non-negative, got {k}")
    return k


def rng_for(seed: int, *keys: Union[int, str]) -> np.random.Generator:
    """A generator that depends only on (seed, *keys); strings are hashed with CRC32."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([_key(seed), *map(_key, keys)])))


# -- MATLAB bicubic imresize ----------------------------------------------------------
def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """The (out_len, in_len) float64 matrix of one resize pass along one dimension."""
    # Downscaling stretches the kernel by 1/scale (antialiasing), keeping unit area.
    stretch = min(scale, 1.0)
    width = 4.0 / stretch

    def kernel(t: np.ndarray) -> np.ndarray:
        return stretch * cubic(stretch * t)

    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input indices
    w = kernel(u[:, None] - idx)
    w /= w.sum(axis=1, keepdims=True)
    # Symmetric padding: index sequence 1..n, n..1 repeated (MATLAB's mirror rule).
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], cols.shape)
    np.add.at(mat, (rows, cols), w)
    return mat


def _output_size(in_len: int, scale: float) -> int:
    # MATLAB: ceil(scale * in). Integer arithmetic for 1/k avoids ceil(33.000000000004).
    inv = 1.0 / scale
    if scale < 1 and abs(inv - round(inv)) < 1e-9:
        k = int(round(inv))
        return -(-in_len // k)
    return int(math.ceil(scale * in_len - 1e-9))


def imresize(
    img: np.ndarray,
    scale: Optional[float] = None,
    output_shape: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    """MATLAB-compatible bicubic resize of an (H, W) or (H, W, C) image.

    Give either `scale` (same factor for both dimensions; 0.25 downscales by 4) or
    `output_shape` (H_out, W_out). uint8 in, uint8 out (rounded after each pass, as
    MATLAB does); any other dtype is computed and returned as float64.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {img.shape}")
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    in_h, in_w = img.shape[:2]
    if in_h < 1 or in_w < 1:
        raise ValueError(f"cannot resize an empty image of shape {img.shape}")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        scales = (float(scale), float(scale))
        out_h, out_w = _output_size(in_h, scale), _output_size(in_w, scale)
    else:
        out_h, out_w = (int(v) for v in output_shape)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"output_shape must be positive, got {output_shape}")
        scales = (out_h / in_h, out_w / in_w)
    is_uint8 = img.dtype == np.uint8
    out = img if is_uint8 else img.astype(np.float64)
    # MATLAB resizes the dimension with the smaller scale first; rows first on ties.
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    sizes = (out_h, out_w)
    for dim in order:
        mat = _resize_matrix(img.shape[dim], sizes[dim], scales[dim])
        res = np.moveaxis(np.tensordot(mat, out.astype(np.float64), axes=([1], [dim])), 0, dim)
        out = np.floor(np.clip(res, 0, 255) + 0.5).astype(np.uint8) if is_uint8 else res
    return out


def bicubic_downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """MATLAB `imresize(img, 1/factor, 'bicubic')` for an integer factor (2, 3, 4 ...)."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    if factor == 1:
        return np.array(img, copy=True)
    return imresize(img, scale=1.0 / factor)


def mod_crop(img: np.ndarray, factor: int) -> np.ndarray:
    """Crop the bottom/right so that H and W are multiples of factor (BasicSR's mod_crop)."""
    h, w = img.shape[:2]
    return img[: h - h % factor, : w - w % factor]


# -- noise and JPEG -------------------------------------------------------------------
def _as_uint8(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"{what} expects a uint8 image on the 0-255 scale, got dtype {img.dtype}")
    return img


NOISE_QUANTIZE = ("round", "truncate", "none")


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator,
                       quantize: str = "round") -> np.ndarray:
    """Additive white Gaussian noise with standard deviation sigma on the 0-255 scale,
    clipped to [0, 255]. quantize: "round" (to uint8, BasicSR), "truncate" (to uint8
    towards zero, as numpy's cast in AdaptIR's pipeline) or "none" (not quantised:
    float32 in [0, 1], the noisy values / 255)."""
    img = _as_uint8(img, "add_gaussian_noise")
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    if quantize not in NOISE_QUANTIZE:
        raise ValueError(f"quantize must be one of {NOISE_QUANTIZE}, got {quantize!r}")
    noisy = np.clip(img.astype(np.float64) + float(sigma) * rng.standard_normal(img.shape), 0, 255)
    if quantize == "none":
        return (noisy / 255.0).astype(np.float32)
    return (np.round(noisy) if quantize == "round" else noisy).astype(np.uint8)


def jpeg_compress(img: np.ndarray, quality: int, reverse_channels: bool = False) -> np.ndarray:
    """Encode with Pillow's JPEG encoder at `quality` (1-95) and decode again.

    reverse_channels: the encoder sees the channels in reverse order (what OpenCV's
    encoder does with an RGB array, taking it for BGR); the result is in the input's order."""
    from PIL import Image

    img = _as_uint8(img, "jpeg_compress")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    if reverse_channels and img.ndim == 3:
        return np.ascontiguousarray(jpeg_compress(np.ascontiguousarray(img[..., ::-1]), quality)[..., ::-1])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as dec:
        mode = "L" if img.ndim == 2 else "RGB"
        return np.asarray(dec.convert(mode)).copy()


def lr4_noise30(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return add_gaussian_noise(bicubic_downscale(img, 4), 30, rng, quantize="truncate")


def lr4_jpeg30(img: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    return jpeg_compress(bicubic_downscale(img, 4), 30, reverse_channels=True)


# -- tasks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """A restoration task: how LQ is made from GT (if it can be) and how it is scored.

    The synthetic model is at most two stages: a MATLAB bicubic downscale by `scale`,
    then either Gaussian noise (`noise_sigma`) or JPEG (`jpeg_quality`). Tasks with
    `paired=True` have no synthetic model and need LQ/GT pairs. Metrics: PSNR/SSIM on
    the Y channel (`y_channel`) or on RGB, with `crop_border` pixels removed per side.
    `noise_train` / `noise_eval`: how noisy LQ is quantised for training patches and for
    evaluation images (`add_gaussian_noise`'s quantize); "none" gives float32 LQ in [0, 1].
    """

    name: str
    scale: int = 1
    noise_sigma: Optional[float] = None
    jpeg_quality: Optional[int] = None
    jpeg_reverse_channels: bool = False  # JPEG of the B, G, R image, as AdaptIR's OpenCV pipeline
    noise_train: str = "round"
    noise_eval: str = "round"
    paired: bool = False
    y_channel: bool = True
    crop_border: int = 0
    description: str = ""

    @property
    def can_synthesize(self) -> bool:
        return not self.paired

    def __post_init__(self):
        for field in ("noise_train", "noise_eval"):
            if getattr(self, field) not in NOISE_QUANTIZE:
                raise ValueError(f"Task {field} must be one of {NOISE_QUANTIZE}, got {getattr(self, field)!r}")

    def synthesize(self, gt: np.ndarray, rng: Optional[np.random.Generator] = None,
                   stage: str = "eval") -> np.ndarray:
        """LQ from a uint8 GT image whose size is a multiple of `scale`, for evaluation
        (stage="eval") or as training data (stage="train"): they differ in how noise is
        quantised (`noise_eval`, `noise_train`)."""
        if self.paired:
            raise ValueError(f"task {self.name!r} has no synthetic degradation; it needs paired LQ/GT data")
        return self.corrupt(bicubic_downscale(gt, self.scale), rng, stage)

    def corrupt(self, clean_lq: np.ndarray, rng: Optional[np.random.Generator] = None,
                stage: str = "eval") -> np.ndarray:
        """The second stage alone (noise or JPEG) applied to a clean LQ-sized image."""
        if stage not in ("train", "eval"):
            raise ValueError(f"stage must be 'train' or 'eval', got {stage!r}")
        if self.noise_sigma is not None:
            if rng is None:
                raise ValueError(f"task {self.name!r} is random: pass a numpy Generator (see rng_for)")
            return add_gaussian_noise(clean_lq, self.noise_sigma, rng,
                                      quantize=self.noise_train if stage == "train" else self.noise_eval)
        if self.jpeg_quality is not None:
            return jpeg_compress(clean_lq, self.jpeg_quality, reverse_channels=self.jpeg_reverse_channels)
        return clean_lq


def _sr(factor: int) -> Task:
    return Task(f"sr_{factor}", scale=factor, crop_border=factor,
                description=f"bicubic super-resolution x{factor} (MATLAB imresize)")


def _denoise(sigma: int) -> Task:
    # AdaptIR: training patches truncated to uint8, test images kept in float.
    return Task(f"denoise_{sigma}", noise_sigma=sigma, y_channel=False, noise_train="truncate", noise_eval="none",
                description=f"Gaussian denoising, sigma {sigma} on the 0-255 scale")


def _jpeg(quality: int) -> Task:
    return Task(f"jpeg_{quality}", jpeg_quality=quality,
                description=f"JPEG artefact removal, quality {quality} (Pillow)")


TASKS: Dict[str, Task] = {
    t.name: t
    for t in (
        _sr(2), _sr(3), _sr(4),
        _denoise(15), _denoise(25), _denoise(30), _denoise(50),
        _jpeg(10), _jpeg(20), _jpeg(30), _jpeg(40),
        Task("lr4_noise30", scale=4, noise_sigma=30, crop_border=4, noise_train="truncate", noise_eval="truncate",
             description="bicubic x4 then Gaussian noise sigma 30 (truncated to uint8, as AdaptIR's pipeline)"),
        Task("lr4_jpeg30", scale=4, jpeg_quality=30, jpeg_reverse_channels=True, crop_border=4,
             description="bicubic x4 then JPEG quality 30 (of the B, G, R image, as AdaptIR's pipeline)"),
        Task("low_light", paired=True, y_channel=False,
             description="low-light enhancement (paired data, e.g. LOL)"),
        Task("derainL", paired=True, description="light rain removal (paired data, e.g. Rain100L)"),
        Task("derainH", paired=True, description="heavy rain removal (paired data, e.g. Rain100H)"),
    )
}

_ALIASES = {
    "lowlight": "low_light",
    "low-light": "low_light",
    "derain": "derainH",
    "derain_l": "derainL",
    "derain_h": "derainH",
}


def task_names() -> Sequence[str]:
    return tuple(TASKS)


def get_task(name: str) -> Task:
    """Look a task up by name; `sr_<k>`, `denoise_<sigma>` and `jpeg_<q>` accept any value."""
    key = _ALIASES.get(name, name)
    if key in TASKS:
        return TASKS[key]
    m = re.fullmatch(r"(sr|x|denoise|noise|jpeg)_?(\d+)", key)
    if m:
        kind, val = m.group(1), int(m.group(2))
        if kind in ("sr", "x") and 1 < val <= 8:
            return _sr(val)
        if kind in ("denoise", "noise") and 0 < val <= 255:
            return _denoise(val)
        if kind == "jpeg" and 1 <= val <= 100:
            return _jpeg(val)
    raise ValueError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}")


def degrade(img: np.ndarray, task: Union[str, Task], rng: Optional[np.random.Generator] = None,
            stage: str = "eval") -> np.ndarray:
    """Synthesize the LQ image of `task` from a uint8 GT image (mod-cropped by the caller),
    for evaluation or (stage="train") as training data: see Task.synthesize."""
    t = get_task(task) if isinstance(task, str) else task
    img = _as_uint8(img, f"degrade({t.name!r})")
    h, w = img.shape[:2]
    if h % t.scale or w % t.scale:
        raise ValueError(
            f"image of size {h}x{w} is not a multiple of the task scale {t.scale}; mod_crop it first"
        )
    return t.synthesize(img, rng, stage)
