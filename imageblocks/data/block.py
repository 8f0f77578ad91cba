"""`DataBlock`: blocks + how to get items, inputs and targets + a split + transforms."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from imageblocks.data.blocks import TransformBlock, as_block
from imageblocks.data.datasets import Datasets, LoaderItems, Pipeline, describe_item
from imageblocks.data.loaders import DataLoader, DataLoaders, default_device, default_workers
from imageblocks.data.splitters import RandomSplitter
from imageblocks.data.summary import summarize
from imageblocks.errors import ItemError


def _listify(o: Any) -> list:
    if o is None:
        return []
    if isinstance(o, (list, tuple)):
        return list(o)
    return [o]


DEFAULT_CACHE_MB = 256  # per loading process: the demo datasets fit, real VOC mostly does


class DataBlock:
    """How to build `Datasets` and `DataLoaders` from a source (a DataFrame, a folder, a list)."""

    def __init__(
        self,
        blocks: Sequence[Any] | None = None,
        dl_type: Any = None,
        getters: Sequence[Callable | None] | None = None,
        n_inp: int | None = None,
        item_tfms: Any = None,
        batch_tfms: Any = None,
        get_items: Callable | None = None,
        splitter: Callable | None = None,
        get_y: Callable | Sequence[Callable] | None = None,
        get_x: Callable | Sequence[Callable] | None = None,
    ):
        block_specs = list(blocks) if blocks is not None else [TransformBlock, TransformBlock]
        self.blocks = [as_block(b) for b in block_specs]
        self.n_inp = n_inp if n_inp is not None else max(1, len(self.blocks) - 1)
        if getters is not None:
            self.getters = list(getters)
        else:
            xs = _listify(get_x) or [None]
            ys = _listify(get_y) or [None]
            n_y = len(self.blocks) - self.n_inp
            self.getters = (xs * self.n_inp)[: self.n_inp] + (ys * max(n_y, 1))[:n_y]
        if len(self.getters) != len(self.blocks):
            raise ValueError(f"{len(self.getters)} getters for {len(self.blocks)} blocks")
        self.get_items = get_items
        self.splitter = splitter if splitter is not None else RandomSplitter(0.2, seed=42)
        self.item_tfms = _listify(item_tfms)
        self.batch_tfms = _listify(batch_tfms)

    # --- building --------------------------------------------------------------------------
    def _fresh_blocks(self) -> list[TransformBlock]:
        """Copies of the blocks, so each `datasets()` call learns its own vocab."""
        return [copy.deepcopy(b) for b in self.blocks]

    def collect_items(self, source: Any) -> Any:
        """The items: `get_items(source)`, or the source itself."""
        items = self.get_items(source) if self.get_items is not None else source
        if len(items) == 0:
            raise ValueError(f"no items found in {source!r}: check the path or get_items")
        return items

    def split(self, items: Any) -> tuple[list[int], list[int]]:
        """Train and validation indices from the splitter, checked."""
        train, valid = self.splitter(items)
        train, valid = [int(i) for i in train], [int(i) for i in valid]
        if len(train) == 0:
            raise ValueError(
                "the splitter put no item in the training set: check its column/folder/function"
            )
        return train, valid

    def datasets(self, source: Any, verbose: bool = False) -> Datasets:
        """Items from `source`, split, with one pipeline per block."""
        items = self.collect_items(source)
        splits = self.split(items)
        pipelines = [Pipeline([g], b) for g, b in zip(self.getters, self._fresh_blocks())]
        return Datasets(items, splits=splits, n_inp=self.n_inp, pipelines=pipelines)

    def draft_size(self) -> tuple[int, int] | None:
        """The (w, h) the loader may decode JPEGs down to: the first resize's output size."""
        for t in self.item_tfms:
            if getattr(t, "size", None) is not None:
                return t.size[1], t.size[0]
        if self.item_tfms:
            return None
        for t in self.batch_tfms:
            if getattr(t, "size", None) is not None:
                return t.size[1], t.size[0]
        return None

    def dataloaders(
        self,
        source: Any,
        path: Any = ".",
        verbose: bool = False,
        bs: int = 64,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> DataLoaders:
        """A training loader (shuffled, last partial batch dropped) and a validation loader;
        `val_bs`, `shuffle`, `num_workers`, `device`, `cache_mb` are `dataloaders_from`'s.

        A batch size larger than the training set gives one (smaller) batch per epoch. An empty
        validation split is allowed, with a warning: training runs and reports no validation
        loss or metrics (None)."""
        dsets = self.datasets(source, verbose=verbose)
        if not dsets.splits[1]:
            warnings.warn(
                f"the splitter put all {len(dsets.splits[0])} items in the training set and none "
                "in the validation set: training will report no validation loss or metrics. "
                "Use a splitter that keeps some items for validation (e.g. RandomSplitter(0.2)).",
                UserWarning,
                stacklevel=2,
            )
        return self.dataloaders_from(dsets, path, bs=batch_size or bs, **kwargs)

    def dataloaders_from(
        self,
        dsets: Datasets,
        path: Any = ".",
        bs: int = 64,
        val_bs: int | None = None,
        shuffle: bool = True,
        num_workers: int | None = None,
        device: torch.device | str | None = None,
        cache_mb: float | None = None,
        **kwargs: Any,
    ) -> DataLoaders:
        """`DataLoaders` for existing `Datasets`; each loading process keeps up to `cache_mb`
        of decoded images for the next epochs (default `$IMAGEBLOCKS_CACHE_MB` or 256; 0: off)."""
        device = torch.device(device) if device is not None else default_device()
        workers = default_workers() if num_workers is None else num_workers
        draft = self.draft_size()
        kinds = dsets.kinds
        target = dsets.pipelines[-1].block if len(dsets.pipelines) > dsets.n_inp else None
        pairs = getattr(target, "flip_pairs", None)
        item_tfms = _with_flip_pairs(self.item_tfms, pairs)
        batch_tfms = _with_flip_pairs(self.batch_tfms, pairs)
        if cache_mb is None:
            cache_mb = float(os.environ.get("IMAGEBLOCKS_CACHE_MB", DEFAULT_CACHE_MB))
        cache_bytes = int(cache_mb * 2**20)

        def make(idxs: Sequence[int], train: bool, batch: int) -> DataLoader:
            ds = LoaderItems(
                dsets, idxs, item_tfms, train=train, draft=draft, cache_bytes=cache_bytes
            )
            return DataLoader(
                ds,
                bs=batch,
                shuffle=shuffle and train,
                drop_last=shuffle and train,
                num_workers=workers,
                device=device,
                after_batch=batch_tfms,
                kinds=kinds,
                train=train,
                **kwargs,
            )

        loaders = [make(dsets.splits[0], True, bs), make(dsets.splits[1], False, val_bs or bs)]
        return DataLoaders(
            *loaders,
            path=path,
            dsets=dsets,
            target_block=target,
            c=_n_out(dsets, target),
            item_tfms=item_tfms,
            batch_tfms=batch_tfms,
            draft=draft,
        )

    def summary(self, source: Any, bs: int = 4, show_batch: bool = False, **kwargs: Any) -> None:
        """Print every step for one sample and one batch; explain a collation failure."""
        summarize(self, source, bs=bs, show_batch=show_batch, **kwargs)

    def check(self, source: Any) -> list[tuple[Any, str]]:
        """Load every item once, as the loaders do, and return `(item, reason)` for each one
        that fails, all in one scan: missing, unreadable or non-image files, truncated images,
        NaN or out-of-image points, validation labels outside the vocab, getter errors.

        The reason starts with the item (its row or path). An empty list: every item loads."""
        dsets = self.datasets(source)
        problems = []
        for split in dsets.splits:
            ds = LoaderItems(dsets, split, self.item_tfms, train=False, draft=self.draft_size())
            for i in range(len(ds)):
                try:
                    ds[i]
                except Exception as e:  # noqa: BLE001 - every failure is a problem to list
                    item = dsets.items[split[i]]
                    reason = str(e) if isinstance(e, ItemError) else f"{type(e).__name__}: {e}"
                    if not isinstance(e, ItemError):
                        reason = f"{describe_item(item)}: {reason}"
                    problems.append((item, reason))
        return problems


def _with_flip_pairs(tfms: list[Any], pairs: Any) -> list[Any]:
    """The transforms, those that mirror points (with a `flip_pairs`) copied and told the
    target's pairs: the transforms know no block, the block's pairs reach them as data."""
    if not pairs:
        return list(tfms)
    out = []
    for t in tfms:
        if hasattr(t, "flip_pairs"):
            t = copy.copy(t)
            t.flip_pairs = pairs
        out.append(t)
    return out


def _n_out(dsets: Datasets, target: TransformBlock | None) -> int | None:
    """Model outputs the target needs: the vocab size, or the number of values of one target."""
    if target is None:
        return None
    if getattr(target, "vocab", None) is not None:
        return len(target.vocab)
    if not dsets.splits[0]:
        return None
    try:
        return int(torch.as_tensor(dsets.pipelines[-1](dsets.items[dsets.splits[0][0]])).numel())
    except (ItemError, TypeError, ValueError):
        return None
