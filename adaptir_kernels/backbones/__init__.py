"""Pre-trained restoration backbones with the published checkpoints' module names:
IPT (Pretrained-IPT / AdaptIR) and EDT (EDT-B / AdaptIR)."""

from .common import CheckpointMismatchError, DropPath, load_pretrained, pad_symmetric, unwrap_state_dict
from .edt import EDT
from .edt import TASKS as EDT_TASKS
from .ipt import IPT
from .ipt import TASK_MAP as IPT_TASK_MAP
from .ipt import TASKS as IPT_TASKS

__all__ = [
    "IPT",
    "EDT",
    "IPT_TASKS",
    "IPT_TASK_MAP",
    "EDT_TASKS",
    "load_pretrained",
    "unwrap_state_dict",
    "CheckpointMismatchError",
    "pad_symmetric",
    "DropPath",
]
