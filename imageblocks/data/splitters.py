"""Splitters: functions of the items that return `(train_indices, valid_indices)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

Splits = tuple[list[int], list[int]]
Splitter = Callable[[Any], Splits]


def RandomSplitter(valid_pct: float = 0.2, seed: int | None = None) -> Splitter:
    """Split at random: `valid_pct` of the items go to validation (reproducible with `seed`)."""
    if not 0 <= valid_pct <= 1:
        raise ValueError(f"valid_pct must be between 0 and 1, got {valid_pct}")

    def _split(items: Any) -> Splits:
        idx = np.random.default_rng(seed).permutation(len(items))
        cut = int(valid_pct * len(items))
        return idx[cut:].tolist(), idx[:cut].tolist()

    return _split


def IndexSplitter(valid_idx: Sequence[int]) -> Splitter:
    """Validation is the items at `valid_idx`; the rest is training."""

    def _split(items: Any) -> Splits:
        valid = sorted({int(i) for i in valid_idx})
        if valid and (valid[0] < 0 or valid[-1] >= len(items)):
            raise IndexError(
                f"IndexSplitter: indices must be in [0, {len(items)}), got {valid[-1]}"
            )
        vs = set(valid)
        return [i for i in range(len(items)) if i not in vs], valid

    return _split


def _mask_split(mask: Sequence[bool]) -> Splits:
    mask = np.asarray(mask, dtype=bool)
    return np.flatnonzero(~mask).tolist(), np.flatnonzero(mask).tolist()


def _rows(items: Any) -> Sequence[Any]:
    """The items as a sequence: rows for a DataFrame."""
    if isinstance(items, pd.DataFrame):
        return [items.iloc[i] for i in range(len(items))]
    return items


def FuncSplitter(func: Callable[[Any], bool]) -> Splitter:
    """Validation is every item for which `func(item)` is true."""

    def _split(items: Any) -> Splits:
        return _mask_split([bool(func(o)) for o in _rows(items)])

    return _split


def MaskSplitter(mask: Sequence[bool]) -> Splitter:
    """Validation is where `mask` is true."""
    return lambda items: _mask_split(mask)


def ColSplitter(col: str | int = "is_valid", on: Any = None) -> Splitter:
    """Split a DataFrame by a column: true values (or values in `on`) go to validation."""

    def _split(df: Any) -> Splits:
        if not isinstance(df, pd.DataFrame):
            raise TypeError("ColSplitter needs a DataFrame as the DataBlock's source")
        missing = col not in df.columns if isinstance(col, str) else col >= len(df.columns)
        if missing:
            raise KeyError(
                f"ColSplitter: the DataFrame has no column {col!r} (columns: {list(df.columns)})"
            )
        values = df[col] if isinstance(col, str) else df.iloc[:, col]
        if on is None:
            mask = values.map(lambda v: str(v).strip().lower() in ("true", "1", "yes"))
        else:
            mask = values.isin(on if isinstance(on, (list, tuple, set)) else [on])
        return _mask_split(mask.to_numpy())

    return _split


def _parent_name(o: Any, level: int) -> str:
    p = Path(o)
    for _ in range(level):
        p = p.parent
    return p.name


def _folder_splitter(level: int, train_name: str, valid_name: str) -> Splitter:
    """Split paths by the name of the folder `level` steps up (1: the parent)."""

    def _split(items: Any) -> Splits:
        names = [_parent_name(o, level) for o in items]
        return (
            [i for i, n in enumerate(names) if n == train_name],
            [i for i, n in enumerate(names) if n == valid_name],
        )

    return _split


def GrandparentSplitter(train_name: str = "train", valid_name: str = "valid") -> Splitter:
    """Split image paths by their grandparent folder (`train/<class>/x.jpg`, `valid/<class>/y.jpg`)."""
    return _folder_splitter(2, train_name, valid_name)


def ParentSplitter(train_name: str = "train", valid_name: str = "valid") -> Splitter:
    """Split image paths by their parent folder name."""
    return _folder_splitter(1, train_name, valid_name)
