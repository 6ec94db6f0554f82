"""Image sources, training patches, evaluation images and a resumable sharded sampler.

Sources (`resolve_records`):
- a folder of high-quality images: LQ is synthesised on the fly from each GT image;
- paired LQ/GT folders (`lq=`), or one folder holding `lq/` and `gt/` style subfolders;
  files are matched by name (DIV2K's `0001x4.png`, Rain100's `rain-1.png`/`norain-1.png`
  and `_lq`/`_gt` suffixes are understood);
- a list file: one image per line (GT only) or `LQ GT` per line, paths relative to the
  list file; blank lines and `#` comments are skipped.

Training samples are random LQ patches (48 pixels by default) with the matching GT
patch, flipped and rotated by multiples of 90 degrees (BasicSR's `augment`). Each
sample's randomness comes from its key (index, epoch, slot) and the run's seed only, so
a run can be resumed, or sharded across ranks, without replaying any random stream.
For synthesised pairs the LQ patch equals the same crop of the degraded whole image:
the bicubic stage is computed with a margin, and JPEG on a window aligned to its
16-pixel blocks.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .degradations import Task, bicubic_downscale, get_task, mod_crop, rng_for

__all__ = [
    "DataError",
    "EvalImages",
    "IMAGE_EXTENSIONS",
    "Record",
    "SAMPLE_PHOTOS",
    "ShardedStream",
    "TrainPatches",
    "augment",
    "list_images",
    "read_image",
    "records_from_folder",
    "records_from_list",
    "records_from_pairs",
    "resolve_records",
    "sample_photos",
    "to_tensor",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Photographs shipped inside scikit-image (skimage.data), with the licence its
# documentation states for each.
SAMPLE_PHOTOS: Dict[str, str] = {
    "astronaut": "public domain (NASA; Eileen Collins)",
    "chelsea": "CC0 (photographer Stefan van der Walt)",
    "coffee": "CC0 (photographer Rachel Michetti)",
    "rocket": "public domain (SpaceX; DSCOVR launch)",
}


class DataError(ValueError):
    """A data source that cannot be used; the message names the folder or file."""


Image = Union[str, np.ndarray]


@dataclass(frozen=True)
class Record:
    """One image (GT) and optionally its degraded counterpart (LQ): paths or uint8 arrays."""

    name: str
    gt: Image
    lq: Optional[Image] = None


# -- reading ------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str) -> List[str]:
    """Sorted paths of the image files directly inside `folder`."""
    if not os.path.exists(folder):
        raise DataError(f"data folder not found: {folder}")
    if not os.path.isdir(folder):
        raise DataError(f"not a folder: {folder}")
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise DataError(f"cannot list folder {folder}: {err}") from err
    files = [os.path.join(folder, n) for n in names if _is_image(n) and os.path.isfile(os.path.join(folder, n))]
    if not files:
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise DataError(f"no images ({exts}) found in folder {folder}")
    return files


def read_image(path: str) -> np.ndarray:
    """An image file as a uint8 RGB array (H, W, 3); DataError naming the file otherwise."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                raise DataError(f"cannot read image {path}: {im.mode} (16/32-bit) images are not supported")
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError as err:
        raise DataError(f"image not found: {path}") from err
    except DataError:
        raise
    except Exception as err:  # PIL raises several types for corrupt or unknown files
        raise DataError(f"cannot read image {path}: {err}") from err
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"image {path} is empty")
    return np.ascontiguousarray(arr)


def _image_size(img: Image) -> Tuple[int, int]:
    """(height, width) of an in-memory image, or of a file from its header."""
    if isinstance(img, np.ndarray):
        return int(img.shape[0]), int(img.shape[1])
    try:
        from PIL import Image as PILImage

        with PILImage.open(img) as im:
            w, h = im.size
        return h, w
    except Exception:  # unreadable here: read_image says why when the image is drawn
        return 1 << 30, 1 << 30


def _load(img: Image, name: str) -> np.ndarray:
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"in-memory image {name!r} must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
        return img
    return read_image(img)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 (0-255) or float (in [0, 1], e.g. LQ kept unquantised) -> float32
    (3, H, W) in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
    return t.div_(255.0) if img.dtype == np.uint8 else t


# -- sources ------------------------------------------------------------------------
def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def records_from_folder(folder: str) -> List[Record]:
    return [Record(_stem(p), p) for p in list_images(folder)]


def _match_key(stem: str) -> str:
    s = stem.lower()
    s = re.sub(r"^(no)?rain[-_]?", "", s)
    s = re.sub(r"([-_.]?(x\d+|lq|gt|lr|hr|sr|low|high|input|target|rain|norain|noisy|clean))$", "", s)
    return s


def records_from_pairs(lq_dir: str, gt_dir: str) -> List[Record]:
    """Pair the files of two folders by name."""
    lq_files, gt_files = list_images(lq_dir), list_images(gt_dir)
    gt_by_stem = {_stem(p): p for p in gt_files}
    gt_by_key: Dict[str, List[str]] = {}
    for p in gt_files:
        gt_by_key.setdefault(_match_key(_stem(p)), []).append(p)
    records, missing = [], []
    for lq in lq_files:
        stem = _stem(lq)
        gt = gt_by_stem.get(stem)
        if gt is None:
            cands = gt_by_key.get(_match_key(stem), [])
            gt = cands[0] if len(cands) == 1 else None
        if gt is None:
            missing.append(os.path.basename(lq))
        else:
            records.append(Record(_stem(gt), gt, lq))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} LQ image(s) in {lq_dir} have no GT image of the same name in {gt_dir}: {shown}")
    return records


def records_from_list(list_file: str) -> List[Record]:
    """Read `GT` or `LQ GT` lines (whitespace or comma separated; `#` starts a comment).
    A line that names one existing file as a whole is that file, spaces and `#` in its
    name included; with a comma on the line, only commas separate (names may hold spaces)."""
    if not os.path.isfile(list_file):
        raise DataError(f"list file not found: {list_file}")
    base = os.path.dirname(os.path.abspath(list_file))
    records = []
    try:
        with open(list_file, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read list file {list_file}: {err}") from err
    for lineno, line in enumerate(lines, 1):
        whole = line.strip()
        if whole and os.path.isfile(whole if os.path.isabs(whole) else os.path.join(base, whole)):
            line = whole
            parts = [whole]
        else:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p.strip() for p in line.split(",")] if "," in line else line.split()
            parts = [p for p in parts if p]
        if len(parts) not in (1, 2):
            raise DataError(f"{list_file}:{lineno}: expected 'GT' or 'LQ GT', got {line!r}")
        paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in parts]
        for p in paths:
            if not os.path.isfile(p):
                raise DataError(f"{list_file}:{lineno}: image not found: {p}")
        if len(paths) == 1:
            records.append(Record(_stem(paths[0]), paths[0]))
        else:
            records.append(Record(_stem(paths[1]), paths[1], paths[0]))
    if not records:
        raise DataError(f"list file {list_file} names no images")
    if len({r.lq is None for r in records}) > 1:
        raise DataError(f"list file {list_file} mixes 'GT' lines and 'LQ GT' lines")
    return records


_LQ_DIRS = ("lq", "lr", "input", "low", "rain", "rainy", "noisy", "degraded")
_GT_DIRS = ("gt", "hq", "hr", "target", "high", "norain", "clean")


def _paired_subfolders(folder: str) -> Optional[Tuple[str, str]]:
    subs = {d.lower(): os.path.join(folder, d) for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))}
    lq = next((subs[d] for d in _LQ_DIRS if d in subs), None)
    gt = next((subs[d] for d in _GT_DIRS if d in subs), None)
    return (lq, gt) if lq and gt else None


def resolve_records(data: str, lq: Optional[str] = None) -> List[Record]:
    """Records from a GT folder, paired folders (lq=...), a folder of lq/gt subfolders, or a list file."""
    if not os.path.exists(data):
        raise DataError(f"data not found: {data}")
    if os.path.isfile(data):
        if lq is not None:
            raise DataError("a list file already names LQ images; do not also pass an LQ folder")
        return records_from_list(data)
    if lq is not None:
        return records_from_pairs(lq, data)
    if os.path.isdir(data):
        pair = _paired_subfolders(data)
        if pair is not None:
            return records_from_pairs(*pair)
    return records_from_folder(data)


def sample_photos(names: Sequence[str] = ("astronaut", "chelsea", "coffee")) -> List[Record]:
    """Photographs shipped with scikit-image, as in-memory GT records (licences: SAMPLE_PHOTOS)."""
    try:
        from skimage import data as skdata
    except ImportError as err:
        raise DataError("the built-in sample photographs need scikit-image (pip install scikit-image)") from err
    records = []
    for n in names:
        if n not in SAMPLE_PHOTOS:
            raise DataError(f"unknown sample photo {n!r}; available: {', '.join(SAMPLE_PHOTOS)}")
        img = np.ascontiguousarray(getattr(skdata, n)()[..., :3])
        records.append(Record(n, img))
    return records


# -- augmentation and cropping ------------------------------------------------------------
def augment(imgs: Sequence[np.ndarray], rng: np.random.Generator) -> List[np.ndarray]:
    """The same random horizontal flip, vertical flip and transpose (rot90) for all images."""
    hflip, vflip, rot = rng.random(3) < 0.5
    out = []
    for im in imgs:
        if hflip:
            im = im[:, ::-1]
        if vflip:
            im = im[::-1]
        if rot:
            im = im.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(im))
    return out


def _window(start: int, size: int, limit: int, margin: int, align: int) -> Tuple[int, int]:
    lo = max(0, (start - margin) // align * align)
    hi = min(limit, -(-(start + size + margin) // align) * align)
    return lo, hi


def synthesize_patch(gt: np.ndarray, task: Task, y: int, x: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The LQ patch at LQ position (y, x) of the degraded whole GT image (size x size)."""
    s = task.scale
    hl, wl = gt.shape[0] // s, gt.shape[1] // s
    jpeg = task.jpeg_quality is not None
    align, margin = (16, 16) if jpeg else (1, 0)
    y0, y1 = _window(y, size, hl, margin, align)
    x0, x1 = _window(x, size, wl, margin, align)
    if s > 1:
        b = 3  # bicubic support is 2 LQ pixels each side
        gy0, gy1 = max(0, y0 - b), min(hl, y1 + b)
        gx0, gx1 = max(0, x0 - b), min(wl, x1 + b)
        clean = bicubic_downscale(gt[gy0 * s : gy1 * s, gx0 * s : gx1 * s], s)
        clean = clean[y0 - gy0 : y1 - gy0, x0 - gx0 : x1 - gx0]
    else:
        clean = gt[y0:y1, x0:x1]
    lq = task.corrupt(np.ascontiguousarray(clean), rng, stage="train")
    return lq[y - y0 : y - y0 + size, x - x0 : x - x0 + size]


# -- datasets -----------------------------------------------------------------------
class _Images:
    def __init__(self, records: Sequence[Record], cache: Optional[bool]):
        if not records:
            raise DataError("no images to use")
        self.records = list(records)
        self.cache = len(self.records) <= 64 if cache is None else cache
        self._cache: Dict[Tuple[int, str], np.ndarray] = {}

    def _get(self, i: int, which: str) -> np.ndarray:
        key = (i, which)
        if key in self._cache:
            return self._cache[key]
        rec = self.records[i]
        img = _load(getattr(rec, which), rec.name)
        if self.cache:
            self._cache[key] = img
        return img


def _align_pair(lq: np.ndarray, gt: np.ndarray, scale: int, rec: Record) -> Tuple[np.ndarray, np.ndarray]:
    eh, ew = lq.shape[0] * scale, lq.shape[1] * scale
    if gt.shape[0] < eh or gt.shape[1] < ew or gt.shape[0] - eh >= scale or gt.shape[1] - ew >= scale:
        raise DataError(
            f"LQ {rec.lq if isinstance(rec.lq, str) else rec.name} is {lq.shape[0]}x{lq.shape[1]} but GT "
            f"{rec.gt if isinstance(rec.gt, str) else rec.name} is {gt.shape[0]}x{gt.shape[1]}; "
            f"expected {eh}x{ew} for scale {scale}"
        )
    return lq, gt[:eh, :ew]


class TrainPatches(Dataset):
    """Random (LQ, GT) training patches: float32 tensors (3, p, p) and (3, p*s, p*s) in [0, 1].

    Index with an int or with a key tuple (index, *salt) as `ShardedStream` yields; the
    crop, the augmentation and the noise are drawn from rng_for(seed, index, *salt).
    """

    def __init__(
        self,
        records: Sequence[Record],
        task: Union[str, Task],
        patch_size: int = 48,
        seed: int = 0,
        augment: bool = True,
        cache: Optional[bool] = None,
    ):
        self.task = get_task(task) if isinstance(task, str) else task
        self.images = _Images(records, cache)
        self.patch_size = int(patch_size)
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        self.seed = int(seed)
        self.augment = augment
        paired = {r.lq is not None for r in self.images.records}
        if len(paired) > 1:
            raise DataError("some records have LQ images and some do not")
        self.paired = paired.pop()
        if not self.paired and self.task.paired:
            raise DataError(
                f"task {self.task.name!r} has no synthetic degradation: give paired data "
                f"(--lq FOLDER, a folder with lq/ and gt/ subfolders, or an 'LQ GT' list file)"
            )
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Every image gives an LQ image of at least one patch: found now, from the files'
        headers, rather than when a data worker first draws the image."""
        s, p = self.task.scale, self.patch_size
        small = []
        for rec in self.images.records:
            src = rec.lq if self.paired else rec.gt
            h, w = _image_size(src)
            if not self.paired:
                h, w = h // s, w // s
            if h < p or w < p:
                small.append(f"{src if isinstance(src, str) else rec.name} ({h}x{w} LQ)")
        if small:
            shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            raise DataError(f"{len(small)} image(s) give an LQ image smaller than the {p}-pixel patch: {shown}; "
                            f"use a smaller --patch-size or remove them")

    def __len__(self) -> int:
        return len(self.images.records)

    def __getitem__(self, key) -> Tuple[torch.Tensor, torch.Tensor]:
        index, *salt = key if isinstance(key, tuple) else (key,)
        index = int(index)
        rng = rng_for(self.seed, index, *salt)
        rec = self.images.records[index]
        s, p = self.task.scale, self.patch_size
        gt = self.images._get(index, "gt")
        if self.paired:
            lq, gt = _align_pair(self.images._get(index, "lq"), gt, s, rec)
        else:
            gt = mod_crop(gt, s)
        hl, wl = gt.shape[0] // s, gt.shape[1] // s
        if hl < p or wl < p:
            where = rec.gt if isinstance(rec.gt, str) else rec.name
            raise DataError(
                f"image {where} gives a {hl}x{wl} LQ image, smaller than the {p}-pixel patch; "
                f"use a smaller --patch-size or remove the image"
            )
        y = int(rng.integers(0, hl - p + 1))
        x = int(rng.integers(0, wl - p + 1))
        gt_patch = gt[y * s : (y + p) * s, x * s : (x + p) * s]
        if self.paired:
            lq_patch = lq[y : y + p, x : x + p]
        else:
            lq_patch = synthesize_patch(gt, self.task, y, x, p, rng)
        if self.augment:
            lq_patch, gt_patch = augment([lq_patch, gt_patch], rng)
        return to_tensor(lq_patch), to_tensor(gt_patch)


class EvalImages(Dataset):
    """Whole evaluation images: dicts with name, lq and gt ((H, W, 3) uint8 arrays, except
    a synthesised LQ the task keeps unquantised: float32 in [0, 1], `Task.noise_eval`).

    Synthesised LQ uses rng_for(seed, name), so it does not depend on the folder's order.
    """

    def __init__(self, records: Sequence[Record], task: Union[str, Task], seed: int = 0, cache: Optional[bool] = None):
        self.task = get_task(task) if isinstance(task, str) else task
        self.images = _Images(records, cache)
        self.seed = int(seed)
        for rec in self.images.records:
            if rec.lq is None and self.task.paired:
                raise DataError(
                    f"task {self.task.name!r} has no synthetic degradation: give paired data "
                    f"(--lq FOLDER, a folder with lq/ and gt/ subfolders, or an 'LQ GT' list file)"
                )

    def __len__(self) -> int:
        return len(self.images.records)

    def __getitem__(self, i: int) -> Dict[str, object]:
        rec = self.images.records[i]
        s = self.task.scale
        gt = self.images._get(i, "gt")
        if rec.lq is not None:
            lq, gt = _align_pair(self.images._get(i, "lq"), gt, s, rec)
        else:
            gt = np.ascontiguousarray(mod_crop(gt, s))
            lq = self.task.synthesize(gt, rng_for(self.seed, rec.name))
        return {"name": rec.name, "lq": lq, "gt": gt}


# -- sampling -----------------------------------------------------------------------
class ShardedStream(Sampler):
    """An endless, resumable stream of sample keys for one rank of a (possibly) distributed run.

    Epoch e is a permutation of range(n) drawn from (seed, e), padded by wrapping around
    to a multiple of world_size (as DistributedSampler does); rank r takes slots
    r, r + world_size, ... Each key is (index, epoch, slot), unique within the run.
    `start` is the number of keys this rank has already consumed, so resuming after k
    steps of batch b is ShardedStream(..., start=k * b).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0, shuffle: bool = True):
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.seed, self.rank, self.world_size = n, int(seed), rank, world_size
        self.start, self.shuffle = int(start), shuffle
        self.per_rank = math.ceil(n / world_size)
        self._cached: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._cached[0] != epoch:
            order = rng_for(self.seed, "epoch", epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
            total = self.per_rank * self.world_size
            order = np.resize(order, total)  # wraps around to pad
            self._cached = (epoch, order)
        return self._cached[1]

    def key(self, pos: int) -> Tuple[int, int, int]:
        epoch, off = divmod(pos, self.per_rank)
        slot = off * self.world_size + self.rank
        return int(self.epoch_order(epoch)[slot]), epoch, slot

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:
        pos = self.start
        while True:
            yield self.key(pos)
            pos += 1
