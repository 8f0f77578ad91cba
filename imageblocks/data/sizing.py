"""The model input size of DataLoaders, and changing it (and the batch size) between phases.

Progressive resizing trains on small images first and larger ones at the end. The size a
loader produces is set by its transforms: the item transforms that crop or resize in the
workers (`Resize`, `RandomResizedCrop`) and the batch transforms that resample to a size
(`AffineWarp`, as `aug_transforms(size=...)` builds it). `set_input_size` gives every one of
them the new size, decodes JPEGs at the matching reduced scale, and restarts the workers, in
place: a learner holding the DataLoaders trains and exports at the new size.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from imageblocks.data.datasets import LoaderItems
from imageblocks.data.loaders import DataLoader, DataLoaders
from imageblocks.utils import parse_size

__all__ = ["input_size", "set_input_size"]


def _sized(tfms: Sequence[Any]) -> list[Any]:
    """The transforms of `tfms` that output a size."""
    return [t for t in tfms if getattr(t, "size", None) is not None]


def input_size(dls: DataLoaders) -> tuple[int, int]:
    """The (height, width) of the images the model sees: the last sized transform's output."""
    sized = _sized([*dls.item_tfms, *dls.valid.after_batch])
    if not sized:
        raise ValueError(
            "these DataLoaders set no image size (no Resize, RandomResizedCrop or "
            "aug_transforms(size=...)): add one so that the size can be planned and changed"
        )
    return tuple(sized[-1].size)  # type: ignore[return-value]


def _resized(tfms: Sequence[Any], size: tuple[int, int]) -> list[Any]:
    """Copies of `tfms` in which each sized transform outputs `size` (the others as they are)."""
    out = []
    for t in tfms:
        if getattr(t, "size", None) is not None:
            t = copy.copy(t)
            t.size = size
        out.append(t)
    return out


def _draft(dls: DataLoaders, size: tuple[int, int]) -> tuple[int, int] | None:
    """The JPEG decode size for `size`: (w, h) when the loaders decoded at a reduced scale."""
    return None if dls.draft is None else (size[1], size[0])


def _reloaded(dl: DataLoader, size: tuple[int, int], draft: Any, bs: int | None) -> None:
    """`dl` producing `size` (and batches of `bs`) from its next iteration: new workers."""
    ds = dl.dataset
    if isinstance(ds, LoaderItems):
        dl.dataset = LoaderItems(
            ds.dsets,
            ds.idxs,
            _resized(ds.item_tfms, size),
            train=ds.train,
            draft=draft,
            cache_bytes=ds.cache_bytes,
        )
    dl.after_batch = _resized(dl.after_batch, size)
    if bs is not None:
        if bs < 1:
            raise ValueError(f"batch size must be at least 1, got {bs}")
        dl.bs = int(bs)
        dl.drop_last = dl.shuffle and len(dl.dataset) >= dl.bs
    dl._loader = None  # the next iteration starts workers holding the new dataset


def set_input_size(
    dls: DataLoaders, size: int | Sequence[int], bs: int | None = None
) -> DataLoaders:
    """Make `dls` produce images of `size` (N or (h, w)) and, when given, training batches of
    `bs`, in place; returns `dls`. Nothing changes when the size and batch size are already so."""
    size = parse_size(size, name="size", min_side=8)
    if size == input_size(dls) and (bs is None or bs == dls.train.bs):
        return dls
    draft = _draft(dls, size)
    for i, dl in enumerate(dls.loaders):
        _reloaded(dl, size, draft, bs if i == 0 else None)
    dls.item_tfms = _resized(dls.item_tfms, size)
    dls.batch_tfms = _resized(dls.batch_tfms, size)
    dls.draft = draft
    return dls
