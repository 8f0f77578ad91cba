"""Blocks: what a raw input or target becomes (image, one-hot labels, points, numbers).

A block is a short list of named steps applied after the getter, plus a `kind` that tells the
loader and the batch transforms how to treat it: "image", "points" or "target". A target block
also knows its `task` (what a model trained on it does) and its `loss()`; `task_of` is the one
answer to "which task is this" for the whole package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from imageblocks.errors import ItemError
from imageblocks.image import PILImage
from imageblocks.lists import L
from imageblocks.losses import (
    BCEWithLogitsLossFlat,
    CrossEntropyLossFlat,
    FlattenedLoss,
    MSELossFlat,
)
from imageblocks.transforms.pairs import check_flip_pairs
from imageblocks.utils import callable_name
from imageblocks_runtime.tasks import Task

Step = tuple[str, Callable[[Any], Any]]


class Vocab(L):
    """The sorted class names: prints as a list, indexes by tensors to an `L`, maps names to ints."""

    def __init__(self, items: Iterable = ()):
        super().__init__(items)
        self.o2i = {o: i for i, o in enumerate(self)}

    def __repr__(self) -> str:
        return repr(list(self))


def split_labels(value: Any) -> list[str]:
    """A list of labels from a list, or a space-separated string; empty and NaN give no label."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        value = value.split()
    return [str(v).strip() for v in value if str(v).strip() != ""]


class TransformBlock:
    """A block of named steps; the default keeps the value as it is."""

    kind = "target"
    task: Task | None = None  # None: not a target a model can be trained on by itself

    def __init__(self, type_tfms: Sequence[Callable] | None = None):
        self.type_tfms = list(type_tfms or [])

    def setup(self, values: Sequence[Any]) -> None:
        """Learn what the block needs (a vocab) from the training values."""

    def steps(self) -> list[Step]:
        """The named steps applied to a getter's output."""
        return [(callable_name(f), f) for f in self.type_tfms]

    def encode(self, value: Any) -> Any:
        """The value after every step."""
        for _, f in self.steps():
            value = f(value)
        return value

    def decode(self, value: Any) -> Any:
        """The value in a human's terms (labels, pixel points)."""
        return value

    def loss(self) -> FlattenedLoss | None:
        """The loss that fits this block as a target (None: the user must pass one)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ImageBlock(TransformBlock):
    """An image: decoded to an RGB `PILImage`."""

    kind = "image"

    def __init__(self, cls: type = PILImage):
        super().__init__([cls.create])
        self.cls = cls

    def steps(self) -> list[Step]:
        return [(f"{self.cls.__name__}.create", self.cls.create)]


class _VocabBlock(TransformBlock):
    """A target whose labels come from a vocab: the one given, or one built by `setup` from the
    training set's values (with `#na#` first when `add_na`)."""

    def __init__(self, vocab: Sequence[str] | None, add_na: bool) -> None:
        super().__init__()
        self.given_vocab, self.add_na = vocab, add_na
        self.vocab: Vocab | None = Vocab(vocab) if vocab is not None else None

    def setup(self, values):
        if self.given_vocab is None:
            self.vocab = self._vocab_from(values)

    def _vocab_from(self, values: Sequence[Any]) -> Vocab:
        return Vocab((["#na#"] if self.add_na else []) + self._labels(values))

    def _labels(self, values: Sequence[Any]) -> list[str]:
        """The labels found in the training set's values, in vocab order."""
        raise NotImplementedError(f"{type(self).__name__} must say how it reads its labels")


class CategoryBlock(_VocabBlock):
    """A single label out of a vocab (sorted, inferred from the training set unless given)."""

    task = Task.CATEGORY

    def __init__(self, vocab: Sequence[str] | None = None, sort: bool = True, add_na: bool = False):
        super().__init__(vocab, add_na)
        self.sort = sort

    def _labels(self, values: Sequence[Any]) -> list[str]:
        names = dict.fromkeys(str(v) for v in values)
        return sorted(names) if self.sort else list(names)

    def categorize(self, value: Any) -> torch.Tensor:
        """The label's index in the vocab."""
        key = str(value)
        if key not in self.vocab.o2i:
            raise ItemError(
                f"label {key!r} is not in the vocab {list(self.vocab)[:20]} (built from the training "
                "set): fix the label, or pass vocab=[...] to the block to allow it"
            )
        return torch.tensor(self.vocab.o2i[key])

    def steps(self):
        params = {"vocab": self.given_vocab, "sort": self.sort, "add_na": self.add_na}
        return [(f"Categorize -- {params}", self.categorize)]

    def decode(self, value):
        return self.vocab[int(value)]

    def loss(self) -> CrossEntropyLossFlat:
        """Cross-entropy: one label per item."""
        return CrossEntropyLossFlat()


class MultiCategoryBlock(_VocabBlock):
    """Several labels (or none) out of a sorted vocab, one-hot encoded as floats."""

    task = Task.MULTILABEL

    def __init__(
        self, encoded: bool = False, vocab: Sequence[str] | None = None, add_na: bool = False
    ):
        super().__init__(vocab, add_na)
        self.encoded = encoded

    def _vocab_from(self, values: Sequence[Any]) -> Vocab:
        if self.encoded:  # one-hot targets already: the vocab is their positions
            n = len(values[0]) if len(values) else 0
            return Vocab(str(i) for i in range(n))
        return super()._vocab_from(values)

    def _labels(self, values: Sequence[Any]) -> list[str]:
        return sorted({label for v in values for label in split_labels(v)})

    def categorize(self, value: Any) -> torch.Tensor:
        """The indices of the labels in the vocab."""
        idxs = []
        for label in split_labels(value):
            if label not in self.vocab.o2i:
                raise ItemError(
                    f"label {label!r} is not in the vocab (built from the training set: "
                    f"{len(self.vocab)} classes): fix the label, move the item to the training set, "
                    "or pass vocab=[...] to MultiCategoryBlock"
                )
            idxs.append(self.vocab.o2i[label])
        return torch.tensor(sorted(set(idxs)), dtype=torch.long)

    def one_hot(self, idxs: torch.Tensor) -> torch.Tensor:
        """A float vector with 1 at each index (all zeros for an image with no label)."""
        out = torch.zeros(len(self.vocab))
        out[idxs] = 1.0
        return out

    def steps(self):
        if self.encoded:
            return [
                ("EncodedMultiCategorize", lambda v: torch.as_tensor(np.asarray(v, np.float32)))
            ]
        params = {"vocab": self.given_vocab, "sort": True, "add_na": self.add_na}
        c = len(self.vocab) if self.vocab is not None else None
        return [
            (f"MultiCategorize -- {params}", self.categorize),
            (f"OneHotEncode -- {{'c': {c}}}", self.one_hot),
        ]

    def decode(self, value):
        return self.vocab[torch.as_tensor(value) > 0.5]

    def loss(self) -> BCEWithLogitsLossFlat:
        """Binary cross-entropy on logits: each label independent of the others."""
        return BCEWithLogitsLossFlat()


def to_points(value: Any) -> torch.Tensor:
    """(n, 2) float points in pixels, (x, y), from a pair, a list of pairs or an array."""
    try:
        t = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(-1, 2)
    except (ValueError, TypeError, RuntimeError):
        raise ItemError(
            f"point {value!r} is not (x, y) numbers in pixels: fix the annotation or the getter"
        ) from None
    if not torch.isfinite(t).all():
        raise ItemError(
            f"point {t.tolist()} is not finite (NaN or infinite): fix the annotation or drop "
            "the item (a missing key point cannot be a training target)"
        )
    return t


POINT_SLACK = 0.1  # how far outside its image a point may lie, as a fraction of the image size


def points_inside(points: np.ndarray, w: int, h: int, outside: str = "error") -> np.ndarray:
    """`points` (n, 2) in pixels of a (w, h) image, checked to lie in it. Up to `POINT_SLACK`
    (10%) of the image's width/height outside is accepted as it is (annotations at the edge;
    fastai keeps such points too); what happens to points farther out is `outside`'s choice:
    "error" (`ItemError`), "clamp" (moved to the nearest edge) or "keep"."""
    if outside == "keep":
        return points
    hi = np.array([w, h], np.float32)
    if outside == "clamp":
        return np.clip(points, 0.0, hi).astype(np.float32)
    margin = POINT_SLACK * hi
    bad = ((points < -margin) | (points > hi + margin)).any(axis=1)
    if bad.any():
        pt = [round(float(v), 2) for v in points[int(np.flatnonzero(bad)[0])]]
        raise ItemError(
            f"point {pt} (x, y) is outside the {w}x{h} image (by more than "
            f"{POINT_SLACK:.0%} of its size): points are in pixels of the full-size image, x "
            "across and y down. Fix the annotation (x and y swapped? another scale?), drop the "
            "item, or use PointBlock(outside='clamp') or 'keep'"
        )
    return points


class PointBlock(TransformBlock):
    """Key points in pixels, (n, 2) as (x, y); scaled to [-1, 1] of the image in the loader.

    A point must be finite and lie in its full-size image (0 <= x <= width, 0 <= y <= height),
    or at most 10% of the image's size outside it (kept as it is, its target a little beyond
    [-1, 1]); farther out, the loader raises `ItemError` naming the item. `outside="clamp"`
    moves every outside point to the nearest edge instead; `"keep"` keeps them all.

    `flip_pairs=[(0, 1), ...]` names the landmarks that are each other's mirror (left eye,
    right eye): a transform that mirrors the image swaps their identities, in augmentation and
    in `learn.tta`, and the export records them.
    """

    kind = "points"
    task = Task.POINTS

    def __init__(self, outside: str = "error", flip_pairs: Sequence[Sequence[int]] | None = None):
        super().__init__([to_points])
        if outside not in ("error", "clamp", "keep"):
            raise ValueError(f"outside must be 'error', 'clamp' or 'keep', not {outside!r}")
        self.outside = outside
        self.flip_pairs = check_flip_pairs(flip_pairs)

    def steps(self):
        return [("TensorPoint.create", to_points)]

    def loss(self) -> MSELossFlat:
        """Mean squared error of the [-1, 1] coordinates."""
        return MSELossFlat()


def to_float_tensor(value: Any) -> torch.Tensor:
    """A float tensor from numbers."""
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


class RegressionBlock(TransformBlock):
    """One or more continuous targets, as a float tensor."""

    task = Task.REGRESSION

    def __init__(self, n_out: int | None = None):
        super().__init__([to_float_tensor])
        self.n_out = n_out

    def steps(self):
        return [("RegressSetup", to_float_tensor)]

    def loss(self) -> MSELossFlat:
        """Mean squared error."""
        return MSELossFlat()


def task_of(block: TransformBlock | None) -> Task | None:
    """The task of a target block (None for no block, or one with no task of its own)."""
    return block.task if isinstance(block, TransformBlock) else None


def as_block(b: Any) -> TransformBlock:
    """A block instance from a block, a block class or a callable returning one."""
    if b is None:
        return TransformBlock()
    if isinstance(b, TransformBlock):
        return b
    if isinstance(b, type) and issubclass(b, TransformBlock):
        return b()
    if callable(b):
        out = b()
        if isinstance(out, TransformBlock):
            return out
    raise TypeError(f"{b!r} is not a block: use ImageBlock, MultiCategoryBlock, PointBlock, ...")
