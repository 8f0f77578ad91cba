"""`Datasets`: items, the pipelines that turn an item into (input, target), and the split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from imageblocks.data.blocks import TransformBlock, Vocab, points_inside
from imageblocks.errors import ItemError
from imageblocks.image import decode_image
from imageblocks.transforms.item import ItemTransform
from imageblocks.utils import callable_name


class Rows(Sequence):
    """A DataFrame seen as a sequence of its rows (pandas Series); empty text cells read as ''.

    A column with no value at all (pandas reads an all-empty CSV column as NaN floats) is text
    too: an all-empty `labels` column gives '' (no label), so `r['labels'].split(' ')` works."""

    def __init__(self, df: pd.DataFrame):
        self.df = df
        text = [
            c
            for c in df.columns
            if df[c].dtype == object
            or pd.api.types.is_string_dtype(df[c])
            or (len(df) and df[c].isna().all())
        ]
        self._frame = (
            df.assign(**{c: df[c].astype(object).fillna("") for c in text}) if text else df
        )

    def __len__(self) -> int:
        return len(self._frame)

    def __getitem__(self, i: int) -> pd.Series:
        return self._frame.iloc[int(i)]


def as_items(source: Any) -> Sequence:
    """An indexable sequence of items from a DataFrame, a list or any sequence."""
    if isinstance(source, pd.DataFrame):
        return Rows(source)
    if isinstance(source, (str, bytes)) or not hasattr(source, "__getitem__"):
        return list(source)
    return source


def describe_item(item: Any) -> str:
    """A short description of an item for error messages."""
    if isinstance(item, pd.Series):
        return f"row {item.name} ({', '.join(f'{k}={v!r}' for k, v in item.items())})"
    return repr(item)


def missing_column(item: Any, e: KeyError) -> ItemError | None:
    """An `ItemError` for a getter that looked up a column the DataFrame row does not have."""
    key = e.args[0] if e.args else None
    if not isinstance(item, pd.Series) or not isinstance(key, str) or key in item.index:
        return None
    cols = ", ".join(map(str, item.index))
    return ItemError(
        f"{describe_item(item)}: get_x/get_y looked up {key!r}, which is not a column of the "
        f"DataFrame (columns: {cols}): fix the column name in the getter or the CSV header"
    )


def item_error(item: Any, e: Exception) -> Exception:
    """The error to raise for `item`: `ItemError`s prefixed with the item, missing columns named."""
    if isinstance(e, ItemError):
        return ItemError(f"{describe_item(item)}: {e}")
    if isinstance(e, KeyError):
        return missing_column(item, e) or e
    return e


class ItemErrors:
    """`with ItemErrors(item): ...` raises an `ItemError` or missing column of the block as
    `item_error(item, e)` (named after the item); any other error passes unchanged."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> bool:
        if isinstance(e, (ItemError, KeyError)):
            err = item_error(self.item, e)
            if err is not e:
                raise err from None
        return False


class Pipeline:
    """Getter functions followed by a block's steps: item -> one element of a sample."""

    def __init__(
        self, funcs: Sequence[Callable] | None = None, block: TransformBlock | None = None
    ):
        self.funcs = [f for f in (funcs or []) if f is not None]
        self.block = block or TransformBlock()

    @property
    def kind(self) -> str:
        """ "image", "points" or "target"."""
        return self.block.kind

    def get(self, item: Any) -> Any:
        """The getters' output: what the block's steps start from."""
        for f in self.funcs:
            item = f(item)
        return item

    def steps(self) -> list[tuple[str, Callable]]:
        """Every named step, getters included."""
        return [(callable_name(f), f) for f in self.funcs] + self.block.steps()

    def __call__(self, item: Any) -> Any:
        return self.block.encode(self.get(item))

    def __repr__(self) -> str:
        return "Pipeline: " + " -> ".join(name for name, _ in self.steps())


def inference_pipeline(p: Pipeline) -> Pipeline:
    """An input pipeline for raw test items: the image block without the training getter when
    the items are already paths or images."""
    return Pipeline([], p.block) if p.kind == "image" else p


class DatasetSplit(Sequence):
    """One split (train or valid) of a `Datasets`: indexable samples."""

    def __init__(self, dsets: Datasets, idxs: Sequence[int], name: str):
        self.dsets, self.idxs, self.name = dsets, list(idxs), name

    def __len__(self) -> int:
        return len(self.idxs)

    def __getitem__(self, i: int) -> tuple:
        return self.dsets[self.idxs[i]]

    @property
    def items(self) -> list:
        """This split's raw items."""
        return [self.dsets.items[i] for i in self.idxs]

    @property
    def vocab(self) -> Vocab | None:
        """The vocab of the target block."""
        return self.dsets.vocab

    def __repr__(self) -> str:
        return f"{self.name} split: {len(self)} items"


class Datasets:
    """Items with one pipeline per sample element, split into `train` and `valid`.

    `Datasets(items, [[f1], [f2]])` builds samples `(f1(item), f2(item))`, as in the book.
    """

    def __init__(
        self,
        items: Any = None,
        tfms: Sequence[Any] | None = None,
        splits: tuple[Sequence[int], Sequence[int]] | None = None,
        n_inp: int | None = None,
        pipelines: Sequence[Pipeline] | None = None,
        setup: bool = True,
    ):
        """`setup=False` keeps the blocks as they are (a test set reusing the training
        pipelines must not rebuild their vocab from its own labels)."""
        self.source = items
        self.items = as_items(items if items is not None else [])
        if pipelines is None:
            tfms = tfms if tfms is not None else [[]]
            pipelines = [Pipeline(t if isinstance(t, (list, tuple)) else [t]) for t in tfms]
        self.pipelines = list(pipelines)
        self.n_inp = n_inp if n_inp is not None else max(1, len(self.pipelines) - 1)
        if splits is None:
            splits = (list(range(len(self.items))), [])
        self.splits = (list(splits[0]), list(splits[1]))
        self._check_splits()
        self.train = DatasetSplit(self, self.splits[0], "train")
        self.valid = DatasetSplit(self, self.splits[1], "valid")
        if setup:
            self._setup_blocks()

    def _check_splits(self) -> None:
        n = len(self.items)
        for name, idx in zip(("training", "validation"), self.splits):
            bad = [i for i in idx if not 0 <= int(i) < n]
            if bad:
                raise IndexError(
                    f"the splitter gave {name} indices out of range [0, {n}): {bad[:5]}"
                )

    def _setup_blocks(self) -> None:
        for p in self.pipelines:
            if type(p.block).setup is TransformBlock.setup:
                continue
            values = []
            for i in self.splits[0]:
                with ItemErrors(self.items[i]):
                    values.append(p.get(self.items[i]))
            p.block.setup(values)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of each sample element ("image", "points", "target")."""
        return tuple(p.kind for p in self.pipelines)

    @property
    def vocab(self) -> Vocab | None:
        """The vocab of the (last) block that has one."""
        for p in reversed(self.pipelines):
            if getattr(p.block, "vocab", None) is not None:
                return p.block.vocab
        return None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        item = self.items[i]
        with ItemErrors(item):
            return tuple(p(item) for p in self.pipelines)

    def subset(self, i: int) -> DatasetSplit:
        """Split `i`: 0 = train, 1 = valid."""
        return (self.train, self.valid)[i]

    def __repr__(self) -> str:
        return f"Datasets: {len(self.train)} training, {len(self.valid)} validation items"


class LoaderItems(torch.utils.data.Dataset):
    """The loader's view of a split: item -> (uint8 HWC image, scaled points, targets).

    This is the hot path run in worker processes: JPEG draft decoding to the size the item or
    batch transforms will produce, points scaled to [-1, 1], item transforms, numpy out.

    With `cache_bytes`, each process keeps what it loaded for the next epochs, up to that many
    bytes: for training the decoded (draft-size) images, which random item transforms then crop
    differently every epoch; for validation, whose transforms are fixed, the finished samples.
    Files are read and decoded once instead of once per epoch.
    """

    def __init__(
        self,
        dsets: Datasets,
        idxs: Sequence[int],
        item_tfms: Sequence[ItemTransform] = (),
        train: bool = False,
        draft: tuple[int, int] | None = None,
        cache_bytes: int = 0,
    ):
        self.dsets, self.idxs = dsets, list(idxs)
        self.item_tfms = sorted(item_tfms, key=lambda t: getattr(t, "order", 0))
        self.train, self.draft = train, draft
        self.cache_bytes = cache_bytes
        self._cache: dict[int, Any] = {}
        self._cached = 0

    def _remember(self, i: int, value: Any, nbytes: int) -> None:
        if self._cached + nbytes <= self.cache_bytes:
            self._cache[i] = value
            self._cached += nbytes

    def __len__(self) -> int:
        return len(self.idxs)

    def __getitem__(self, i: int) -> tuple:
        if not self.train and i in self._cache:
            return self._cache[i]
        item = self.dsets.items[self.idxs[i]]
        with ItemErrors(item):
            out = self._load(item, i)
        if not self.train and self.cache_bytes:
            self._remember(i, out, sum(getattr(o, "nbytes", 64) for o in out))
        return out

    def _decode(self, p: Pipeline, item: Any, i: int | None) -> tuple:
        if self.train and i in self._cache:
            return self._cache[i]
        img, size = decode_image(p.get(item), draft=self.draft)
        if self.train and self.cache_bytes and i is not None:
            self._remember(i, (img, size), img.width * img.height * len(img.getbands()))
        return img, size

    def _load(self, item: Any, i: int | None = None) -> tuple:
        outs: list[Any] = []
        img, size, pts_at = None, None, []
        for p in self.dsets.pipelines:
            if p.kind == "image":
                img, size = self._decode(p, item, i)
                outs.append(None)
            elif p.kind == "points":
                pts_at.append(len(outs))
                outs.append(p(item).numpy())
            else:
                outs.append(p(item))
        if pts_at and size is None:
            raise ItemError("points need an image block before them to know the image size")
        w, h = size if size is not None else (1, 1)
        for k in pts_at:  # pixels, checked to lie in the image -> [-1, 1] of the full-size image
            outside = getattr(self.dsets.pipelines[k].block, "outside", "error")
            outs[k] = points_inside(outs[k], w, h, outside)
            outs[k] = outs[k] * np.array([2.0 / w, 2.0 / h], np.float32) - 1.0
        pts = outs[pts_at[0]] if pts_at else None
        if img is not None:
            for t in self.item_tfms:
                img, pts = t(img, pts, self.train)
            outs[[p.kind for p in self.dsets.pipelines].index("image")] = np.asarray(img)
        if pts_at:
            outs[pts_at[0]] = torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32))
        return tuple(outs)
