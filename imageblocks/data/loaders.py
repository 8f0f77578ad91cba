"""`DataLoader` and `DataLoaders`: batches from worker processes, moved to the device, augmented.

Workers decode and collate whole batches (shared memory back to the main process); the main
process moves each batch to the device (non-blocking from pinned memory on CUDA), turns images
into floats in [0, 1] and runs the batch transforms there, on plain tensors. Under torchrun a
loader reads only its process's `Shard`, which the run gives it; the loader joins no process group.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from imageblocks.data.blocks import TransformBlock
from imageblocks.data.datasets import Datasets, LoaderItems, inference_pipeline
from imageblocks.errors import CollateError, ItemError
from imageblocks.launcher import local_device
from imageblocks.runtime import release_inherited_memory
from imageblocks.show import show_batch


@dataclass(frozen=True)
class Shard:
    """The part of every epoch one process of a data-parallel run loads: `rank` of
    `world_size`, shuffled with the `seed` that every process shares."""

    rank: int
    world_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"Shard rank {self.rank} is outside [0, {self.world_size}): "
                "rank must be at least 0 and below world_size"
            )

    def length(self, n: int, drop_last: bool) -> int:
        """How many of `n` items this process gets: an equal share, the rest dropped or padded."""
        return n // self.world_size if drop_last else -(-n // self.world_size)

    def sampler(self, n: int, shuffle: bool, drop_last: bool) -> torch.utils.data.Sampler:
        """The indices of this process's share of `n` items (no process group needed)."""
        return torch.utils.data.DistributedSampler(
            range(n),
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=self.seed,
        )


def default_device() -> torch.device:
    """CUDA when present (torchrun: this process's GPU), else Apple MPS when present, else CPU."""
    if torch.cuda.is_available():
        return local_device() or torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_workers() -> int:
    """One worker per CPU core (at most 8), as fastai does."""
    return min(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8
    )


def _shape(o: Any) -> tuple:
    return tuple(o.shape) if hasattr(o, "shape") else ()


def _collate_error(samples: Sequence[Any], k: int | None) -> CollateError:
    shapes = [_shape(s) for s in samples]
    what = f"element {k} of each sample" if k is not None else "the samples"
    is_image = all(len(s) == 3 and s[-1] in (1, 3, 4) for s in shapes)
    shown = ", ".join(str(list((s[2], s[0], s[1]) if is_image else s)) for s in shapes[:8]) + (
        " ..." if len(shapes) > 8 else ""
    )
    if is_image:
        fix = (
            "The images have different sizes. Add an item transform that gives every image the "
            "same size, e.g. item_tfms=Resize(224) (or Resize(224, method='squish'/'pad')), or "
            "item_tfms=RandomResizedCrop(128, min_scale=0.35)."
        )
    else:
        fix = (
            "The tensors differ in size. Make every item's value the same shape "
            "(e.g. the same number of points per image)."
        )
    return CollateError(f"Cannot collate {what} into a batch: shapes {shown} (C, H, W). {fix}")


def _stack_images(samples: Sequence[np.ndarray]) -> torch.Tensor:
    """HWC uint8 images -> one (B, C, H, W) tensor, written once; in a worker process straight
    into shared memory, so handing the batch to the main process copies nothing."""
    h, w, c = samples[0].shape
    out = torch.empty((len(samples), c, h, w), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        out.share_memory_()
    dest = out.numpy()
    for i, arr in enumerate(samples):
        dest[i] = arr.transpose(2, 0, 1)
    return out


def collate(samples: Sequence[Any], _k: int | None = None) -> Any:
    """Stack samples into a batch: HWC uint8 images -> (B, 3, H, W), tensors stacked, numbers to
    tensors, strings to tuples; tuples element-wise."""
    first = samples[0]
    if isinstance(first, tuple) or (isinstance(first, list) and not isinstance(first, str)):
        if any(len(s) != len(first) for s in samples):
            raise CollateError("samples have different numbers of elements")
        return tuple(collate([s[k] for s in samples], k) for k in range(len(first)))
    if isinstance(first, Image.Image):
        samples = [np.asarray(s) for s in samples]
        first = samples[0]
    if isinstance(first, np.ndarray):
        if any(s.shape != first.shape for s in samples):
            raise _collate_error(samples, _k)
        if first.dtype == np.uint8 and first.ndim == 3 and first.shape[-1] in (1, 3, 4):
            return _stack_images(samples)
        return torch.from_numpy(np.stack(samples))
    if isinstance(first, torch.Tensor):
        if any(s.shape != first.shape for s in samples):
            raise _collate_error(samples, _k)
        return torch.stack(samples)
    if isinstance(first, (bool, int, float, np.number)):
        return torch.tensor(samples)
    return tuple(samples)


def _worker_init(_: int) -> None:
    # The parent's objects are never collected here: among them may be garbage not yet collected
    # in the parent, such as an ONNX Runtime session (predict's) whose thread pool, destroyed in
    # a forked child, waits forever on the parent's threads; and collecting would write to (copy)
    # their pages.
    gc.freeze()
    torch.set_num_threads(1)  # each worker decodes on one core; the main process keeps the rest
    release_inherited_memory()  # or the trainer's writes to its kept heap copy it (runtime.py)


def _to(b: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(b, torch.Tensor):
        return b.to(device, non_blocking=non_blocking)
    if isinstance(b, tuple):
        return tuple(_to(o, device, non_blocking) for o in b)
    return b


class DataLoader:
    """Batches of a dataset, on a device, with batch transforms applied."""

    def __init__(
        self,
        dataset: Any,
        bs: int = 64,
        shuffle: bool = False,
        drop_last: bool = False,
        num_workers: int = 0,
        device: torch.device | str | None = None,
        after_batch: Sequence[Any] | None = None,
        kinds: Sequence[str] | None = None,
        train: bool = False,
        batch_size: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        shard: Shard | None = None,
    ):
        self.dataset = dataset
        self.bs = int(batch_size if batch_size is not None else bs)
        if self.bs < 1:
            raise ValueError(f"batch size must be at least 1, got {self.bs}")
        self.shuffle, self.train = shuffle, train
        self.drop_last = drop_last and len(dataset) >= self.bs  # never drop the only batch
        self.num_workers = num_workers
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.after_batch = sorted(after_batch or [], key=lambda t: getattr(t, "order", 0))
        self.kinds = tuple(kinds) if kinds is not None else None
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.prefetch_factor = prefetch_factor
        self.shard = shard  # None: every item; set by a data-parallel run to its process's share
        self._loader: torch.utils.data.DataLoader | None = None
        self._loader_shard: Shard | None = None
        self._epoch = 0

    @property
    def n(self) -> int:
        """Number of items."""
        return len(self.dataset)

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.shard is not None:
            n = self.shard.length(n, self.drop_last)
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def _torch_loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None or self._loader_shard != self.shard:
            self._loader_shard = self.shard
            extra: dict[str, Any] = {}
            if self.shard is not None:
                extra["sampler"] = self.shard.sampler(
                    len(self.dataset), self.shuffle, self.drop_last
                )
            if self.num_workers > 0:
                extra.update(
                    worker_init_fn=_worker_init,
                    persistent_workers=self.persistent_workers,
                    prefetch_factor=self.prefetch_factor,
                )
                if "fork" in multiprocessing.get_all_start_methods():
                    # fork lets user lambdas (get_x=lambda r: ...) reach the workers unpickled
                    extra["multiprocessing_context"] = "fork"
            self._loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_size=self.bs,
                shuffle=self.shuffle and "sampler" not in extra,
                drop_last=self.drop_last,
                num_workers=self.num_workers,
                collate_fn=collate,
                pin_memory=self.pin_memory,
                **extra,
            )
        return self._loader

    def process(self, b: Any) -> Any:
        """A collated batch moved to the device, images to float in [0, 1], batch transforms."""
        b = _to(b, self.device, non_blocking=self.pin_memory)
        if not isinstance(b, tuple):
            return b
        kinds = self.kinds or tuple(
            "image"
            if isinstance(o, torch.Tensor) and o.dtype == torch.uint8 and o.ndim == 4
            else "target"
            for o in b
        )
        b = tuple(
            o.float().div_(255) if k == "image" and o.dtype == torch.uint8 else o
            for o, k in zip(b, kinds)
        )
        for t in self.after_batch:
            b = t(b, kinds, self.train)
        return b

    def __iter__(self) -> Iterator[Any]:
        loader = self._torch_loader()
        if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
            loader.sampler.set_epoch(self._epoch)  # a new shuffle, the same on every process
            self._epoch += 1
        try:
            for b in loader:
                yield self.process(b)
        except ItemError as e:
            # a worker's error arrives wrapped in its traceback: keep only our message
            last = str(e).strip().splitlines()[-1]
            raise ItemError(last.removeprefix(f"{ItemError.__module__}.ItemError: ")) from None

    def one_batch(self) -> Any:
        """The first batch, built in this process (no workers started)."""
        if len(self.dataset) == 0:
            raise ValueError(
                "this DataLoader's dataset is empty: check the splitter and the source"
            )
        n = min(self.bs, len(self.dataset))
        # a shuffled loader shows a random batch (seeded by torch.manual_seed), as iteration does
        idxs = torch.randperm(len(self.dataset))[:n].tolist() if self.shuffle else range(n)
        return self.process(collate([self.dataset[i] for i in idxs]))

    def decode(self, b: tuple) -> tuple:
        """Undo the reversible batch transforms (normalisation) for display."""
        kinds = self.kinds or ("image",) + ("target",) * (len(b) - 1)
        for t in reversed(self.after_batch):
            if hasattr(t, "decode"):
                b = t.decode(b, kinds)
        return b

    def to(self, device: torch.device | str) -> DataLoader:
        """This loader, producing batches on `device`."""
        self.device = torch.device(device)
        self.pin_memory = self.device.type == "cuda"
        self._loader = None
        return self

    def show_batch(
        self,
        b: tuple | None = None,
        max_n: int = 9,
        nrows: int | None = None,
        ncols: int | None = None,
        figsize: tuple | None = None,
        **kwargs: Any,
    ):
        """Show a batch's images with their targets; returns the matplotlib figure."""
        return show_batch(self, b, max_n=max_n, nrows=nrows, ncols=ncols, figsize=figsize, **kwargs)


class DataLoaders:
    """A training and a validation `DataLoader` (and more), plus what the learner needs to know:
    the target block (task, loss, vocab), the number of model outputs `c`, the item and batch
    transforms, and, for `test_dl`, the datasets' pipelines and the JPEG draft size."""

    def __init__(
        self,
        *loaders: DataLoader,
        path: Any = ".",
        device: torch.device | str | None = None,
        dsets: Datasets | None = None,
        target_block: TransformBlock | None = None,
        c: int | None = None,
        item_tfms: Sequence[Any] = (),
        batch_tfms: Sequence[Any] = (),
        draft: tuple[int, int] | None = None,
    ):
        self.loaders = list(loaders)
        self.path = path
        self.dsets = dsets
        self.target_block = target_block
        self.c = c
        self.item_tfms = list(item_tfms)
        self.batch_tfms = list(batch_tfms)
        self.draft = draft
        if device is not None:
            for dl in self.loaders:
                dl.to(device)

    @classmethod
    def from_dsets(
        cls,
        *dsets: Any,
        bs: int = 64,
        batch_size: int | None = None,
        shuffle: bool = True,
        device: torch.device | str | None = None,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> DataLoaders:
        """Loaders from datasets: the first is shuffled for training; a `Datasets` gives both splits."""
        bs = batch_size if batch_size is not None else bs
        if len(dsets) == 1 and isinstance(dsets[0], Datasets):
            ds = dsets[0]
            dsets = (ds.train, ds.valid) if len(ds.valid) else (ds.train,)
        loaders = [
            DataLoader(
                d,
                bs=bs,
                shuffle=shuffle and i == 0,
                drop_last=shuffle and i == 0,
                num_workers=num_workers,
                device=device,
                train=i == 0,
                **kwargs,
            )
            for i, d in enumerate(dsets)
        ]
        return cls(*loaders)

    def __getitem__(self, i: int) -> DataLoader:
        return self.loaders[i]

    def __len__(self) -> int:
        return len(self.loaders)

    @property
    def train(self) -> DataLoader:
        """The training loader."""
        return self.loaders[0]

    @property
    def valid(self) -> DataLoader:
        """The validation loader."""
        return self.loaders[1]

    @property
    def device(self) -> torch.device:
        """Where batches are put."""
        return self.train.device

    def to(self, device: torch.device | str) -> DataLoaders:
        """Put every loader's batches on `device`."""
        for dl in self.loaders:
            dl.to(device)
        return self

    def cpu(self) -> DataLoaders:
        """Batches on the CPU."""
        return self.to("cpu")

    @property
    def vocab(self) -> Any:
        """The class names of the target (None for points/regression)."""
        return self.dsets.vocab if self.dsets is not None else None

    @property
    def n_inp(self) -> int:
        """How many elements of a batch are inputs."""
        return self.dsets.n_inp if self.dsets is not None else 1

    @property
    def loss_func(self) -> Any:
        """The loss that fits the target block (BCE for multi-label, CE, MSE for points)."""
        return self.target_block.loss() if self.target_block is not None else None

    def one_batch(self) -> Any:
        """The first training batch."""
        return self.train.one_batch()

    def show_batch(self, *args: Any, **kwargs: Any):
        """Show a training batch."""
        return self.train.show_batch(*args, **kwargs)

    def test_dl(
        self,
        items: Sequence[Any],
        bs: int | None = None,
        with_labels: bool = False,
        **kwargs: Any,
    ) -> DataLoader:
        """A loader for new items (paths, images) with the validation transforms: only the
        input pipelines, unless `with_labels` (then the training vocab judges the labels)."""
        if self.dsets is None:
            raise ValueError(
                "test_dl needs the input pipelines of DataLoaders built by a DataBlock: build "
                "them with DataBlock(...).dataloaders(source), or load_learner(folder)"
            )
        dsets, n = self.dsets, len(items)
        pipelines = dsets.pipelines if with_labels else dsets.pipelines[: dsets.n_inp]
        test = Datasets(
            items,
            splits=(list(range(n)), []),
            n_inp=dsets.n_inp,
            pipelines=pipelines if with_labels else [inference_pipeline(p) for p in pipelines],
            setup=False,  # the training vocab stays: a label outside it is an error
        )
        ds = LoaderItems(test, list(range(n)), self.item_tfms, train=False, draft=self.draft)
        return DataLoader(
            ds,
            bs=bs or self.valid.bs,
            num_workers=kwargs.pop("num_workers", 0),
            device=self.valid.device,
            after_batch=self.valid.after_batch,  # what validation does now (Normalize added too)
            kinds=test.kinds,
            train=False,
            **kwargs,
        )
