"""`set_seed`: one call seeds every generator a training run draws from.

Item transforms draw from Python's `random`, shuffling and batch augmentation from torch, some
user code from NumPy; loader workers are seeded from torch's generator. Seeding all three makes
the split, the batches and (on CPU) the first losses repeat exactly.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int, reproducible: bool = False) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and CUDA); `reproducible` also asks
    cuDNN for deterministic algorithms (slower)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if reproducible:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
