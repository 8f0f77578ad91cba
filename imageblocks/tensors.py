"""Small tensor helpers the book uses: `tensor`, `to_cpu`, `to_device`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def tensor(x: Any, *rest: Any, **kwargs: Any) -> torch.Tensor:
    """A tensor from numbers, lists (of numpy scalars too) or arrays: `tensor([c1, c2])`."""
    if rest:
        x = (x, *rest)
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)) and any(isinstance(o, torch.Tensor) for o in x):
        return torch.stack([torch.as_tensor(o) for o in x])
    arr = np.asarray(x)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return torch.as_tensor(arr, **kwargs)


def to_device(b: Any, device: torch.device | str) -> Any:
    """`b` (a tensor, or nested tuples/lists/dicts of them) moved to `device`."""
    if isinstance(b, torch.Tensor):
        return b.to(device)
    if isinstance(b, (list, tuple)):
        return type(b)(to_device(o, device) for o in b)
    if isinstance(b, dict):
        return {k: to_device(v, device) for k, v in b.items()}
    return b


def to_cpu(b: Any) -> Any:
    """`b` moved to the CPU (the book: `x, y = to_cpu(dls.train.one_batch())`)."""
    return to_device(b, "cpu")
