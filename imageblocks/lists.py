"""`L`: the list the book prints as ``(#n) [...]``, indexable by tensors, masks and index lists."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch


class L(list):
    """A list with the book's repr, `.sorted()`, `.map()` and indexing by tensors or index lists."""

    max_shown = 10

    def __init__(self, items: Iterable | None = None):
        super().__init__([] if items is None else items)

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        if isinstance(idx, np.ndarray):
            if idx.ndim == 0:
                return super().__getitem__(int(idx))
            idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(int)
            return L(super(L, self).__getitem__(int(i)) for i in idx)
        if isinstance(idx, (list, tuple)):
            if len(idx) and isinstance(idx[0], (bool, np.bool_)):
                if len(idx) != len(self):
                    raise IndexError(f"boolean mask of length {len(idx)} for a list of {len(self)}")
                return L(o for o, keep in zip(self, idx) if keep)
            return L(super(L, self).__getitem__(int(i)) for i in idx)
        if isinstance(idx, slice):
            return L(super().__getitem__(idx))
        return super().__getitem__(idx)

    def sorted(self, key: Callable | None = None, reverse: bool = False) -> L:
        """A sorted copy."""
        return L(sorted(self, key=key, reverse=reverse))

    def map(self, f: Callable) -> L:
        """`f` applied to every element."""
        return L(f(o) for o in self)

    def filter(self, f: Callable) -> L:
        """The elements for which `f` is true."""
        return L(o for o in self if f(o))

    def __repr__(self) -> str:
        shown = ",".join(repr(o) for o in list.__getitem__(self, slice(0, self.max_shown)))
        more = "..." if len(self) > self.max_shown else ""
        return f"(#{len(self)}) [{shown}{more}]"


def first(x: Iterable) -> Any:
    """The first element of any iterable (the first batch of a DataLoader), or None."""
    return next(iter(x), None)
