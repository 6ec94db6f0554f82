"""Degradations, tasks and datasets for fine-tuning and evaluation."""

from .datasets import (
    SAMPLE_PHOTOS,
    DataError,
    EvalImages,
    Record,
    ShardedStream,
    TrainPatches,
    list_images,
    read_image,
    resolve_records,
    sample_photos,
)
from .degradations import (
    TASKS,
    Task,
    add_gaussian_noise,
    bicubic_downscale,
    degrade,
    get_task,
    imresize,
    jpeg_compress,
    mod_crop,
    rng_for,
)

__all__ = [
    "DataError",
    "EvalImages",
    "Record",
    "SAMPLE_PHOTOS",
    "ShardedStream",
    "TASKS",
    "Task",
    "TrainPatches",
    "add_gaussian_noise",
    "bicubic_downscale",
    "degrade",
    "get_task",
    "imresize",
    "jpeg_compress",
    "list_images",
    "mod_crop",
    "read_image",
    "resolve_records",
    "rng_for",
    "sample_photos",
]
