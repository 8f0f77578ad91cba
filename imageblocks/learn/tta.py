"""Test-time augmentation: predictions averaged over augmented copies of a set (`learn.tta`).

As fastai's `tta`: `n` passes through the model with the training transforms, averaged (or their
maximum, `use_max`), blended with the plain validation prediction by `beta`
(`(1 - beta) * augmented + beta * plain`). Unlike fastai, key points are put back in place
before they are averaged: each pass's points are mapped through the inverse of the very
matrices that warped its images (`geometry.warp_points(..., inverse=True)`), and mirrored landmark pairs swap
back, so the passes average positions in one frame, the original image's.

For labels the item transforms run as in training (random crops), as fastai's do. For points
they run as in validation: an item transform's random crop is not recorded, so it could not be
undone; the batch transforms (flip, rotation, zoom, warp, lighting) give the augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from imageblocks.data.blocks import Task, task_of
from imageblocks.data.datasets import LoaderItems
from imageblocks.data.loaders import DataLoader
from imageblocks.learn.predict import activation, get_preds
from imageblocks.transforms.base import Kinds
from imageblocks.transforms.geometry import AffineWarp, warp_points
from imageblocks.transforms.normalize import Normalize
from imageblocks.transforms.pairs import FlipPairs

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner

__all__ = ["augment", "tta", "unaugment_points"]

# one warp of a pass: its matrices, the image size before and after, align_corners
Warp = tuple[Tensor, tuple[int, int], tuple[int, int], bool]


def _order(t: Any) -> int:
    return getattr(t, "order", 0)


def _augments(t: Any) -> bool:
    """Whether a batch transform changes a training batch at random (an unknown one may)."""
    if isinstance(t, Normalize):
        return False
    if isinstance(t, AffineWarp):
        return t.is_random
    return getattr(t, "p", 1.0) > 0


def augment(xs: Sequence[Tensor], kinds: Kinds, tfms: Sequence[Any]) -> tuple[tuple, list[Warp]]:
    """Inputs `xs` through the batch transforms `tfms` in training mode, and the warps drawn
    (what `unaugment_points` needs to map points found in the result back)."""
    xs, warps = tuple(xs), []
    for t in sorted(tfms, key=_order):
        if not isinstance(t, AffineWarp):
            xs = t(xs, kinds, True)
            continue
        image = next((x for x, k in zip(xs, kinds) if k == "image"), None)
        in_hw = tuple(image.shape[-2:]) if image is not None else None
        xs, mats = t.warp(xs, kinds, train=True)
        if image is not None and (mats is not None or t.align_corners):
            if mats is None:  # a resize with align_corners moves normalised points too
                mats = torch.eye(3, device=image.device).expand(image.shape[0], 3, 3)
            out = next(x for x, k in zip(xs, kinds) if k == "image")
            warps.append((mats, in_hw, tuple(out.shape[-2:]), t.align_corners))
    return xs, warps


def unaugment_points(points: Tensor, warps: Sequence[Warp], pairs: FlipPairs | None) -> Tensor:
    """Points (B, n, 2) predicted on an augmented batch, mapped back into the frame of the plain
    prediction: through the inverse of each warp, last first, mirrored pairs swapped back, then
    through what validation does to points (an `align_corners` resize moves them)."""
    for mats, in_hw, out_hw, align_corners in reversed(warps):
        points = warp_points(points, mats, in_hw, out_hw, align_corners, pairs, inverse=True)
    for _, in_hw, out_hw, align_corners in warps:
        if align_corners:
            eye = torch.eye(3, device=points.device).expand(len(points), 3, 3)
            points = warp_points(points, eye, in_hw, out_hw, align_corners)
    return points


@torch.no_grad()
def _augmented_pass(
    learn: Learner, dl: DataLoader, tfms: Sequence[Any], pairs: FlipPairs | None
) -> Tensor:
    """One pass of `dl` (a loader with no batch transforms) through `tfms` and the model: the
    activated predictions, points mapped back onto the plain images."""
    learn.model.eval()
    n_inp = learn.dls.n_inp
    kinds = dl.kinds[:n_inp] if dl.kinds is not None else ("image",) * n_inp
    points = task_of(learn.dls.target_block) is Task.POINTS
    act, out = activation(learn.loss_func), []
    for b in dl:
        xs, warps = augment(b[:n_inp] if isinstance(b, tuple) else (b,), kinds, tfms)
        xs, _ = learn.split_batch(xs)
        with learn.autocast():
            p = act(learn.model(*xs).float())
        if points:
            p = unaugment_points(p.reshape(len(p), -1, 2), warps, pairs).reshape(p.shape)
        out.append(p)
    return torch.cat(out)


def _loader(dl: DataLoader, dataset: Any, after_batch: Sequence[Any]) -> DataLoader:
    """A loader like `dl` (batch size, workers, device, kinds) over `dataset`, in order."""
    return DataLoader(
        dataset,
        bs=dl.bs,
        num_workers=dl.num_workers,
        device=dl.device,
        after_batch=after_batch,
        kinds=dl.kinds,
        train=False,
    )


def _listify(o: Any) -> list[Any]:
    return list(o) if isinstance(o, (list, tuple)) else [o]


def _item_tfms(dl: DataLoader, item_tfms: Any) -> list[Any] | None:
    """The item transforms of the passes (`dl`'s own when None); None for a loader whose
    dataset was not built by a DataBlock (its items are used as they are)."""
    if isinstance(dl.dataset, LoaderItems):
        return dl.dataset.item_tfms if item_tfms is None else _listify(item_tfms)
    if item_tfms is not None:
        raise ValueError(
            "tta(item_tfms=...) needs a loader built by a DataBlock (or dls.test_dl): this "
            f"loader's dataset is a {type(dl.dataset).__name__}; leave item_tfms out"
        )
    return None


def _dataset(dl: DataLoader, item_tfms: Any, train: bool) -> Any:
    """`dl`'s items through `item_tfms` (its own when None), as in training when `train`."""
    ds = dl.dataset
    if not isinstance(ds, LoaderItems) or (item_tfms is None and not train):
        return ds
    tfms = ds.item_tfms if item_tfms is None else _listify(item_tfms)
    cache = ds.cache_bytes  # training mode caches the decoded images for the next passes
    return LoaderItems(ds.dsets, ds.idxs, tfms, train=train, draft=ds.draft, cache_bytes=cache)


def _batch_tfms(dl: DataLoader, batch_tfms: Any) -> list[Any]:
    """The batch transforms of the passes: `dl`'s own, or `batch_tfms` with `dl`'s
    normalisation kept (the model's input contract) when they bring none of their own."""
    if batch_tfms is None:
        return list(dl.after_batch)
    tfms = _listify(batch_tfms)
    if not any(isinstance(t, Normalize) for t in tfms):
        tfms += [t for t in dl.after_batch if isinstance(t, Normalize)]
    return sorted(tfms, key=_order)


def tta(
    learn: Learner,
    dl: DataLoader,
    n: int,
    item_tfms: Any,
    batch_tfms: Any,
    beta: float | None,
    use_max: bool,
) -> tuple:
    """(predictions, targets) of `dl`: the mean (`use_max`: the maximum) of `n` augmented passes,
    blended with the plain prediction as `torch.lerp(augmented, plain, beta)`; `beta=None` gives
    `((augmented, plain), targets)`. `item_tfms`/`batch_tfms` replace the loader's. The
    defaults (fastai's) are `Learner.tta`'s."""
    if n < 1:
        raise ValueError(f"tta needs at least one augmented pass: n={n}")
    points = task_of(learn.dls.target_block) is Task.POINTS
    tfms, items = _batch_tfms(dl, batch_tfms), _item_tfms(dl, item_tfms)
    item_random = bool(items) and not points
    if not item_random and not any(_augments(t) for t in tfms):
        raise ValueError(
            "tta found no random transform to augment with (this loader's batch transforms "
            f"only resize/normalise: {tfms}): pass batch_tfms=aug_transforms(size=...), e.g. "
            "for a model loaded with load_learner"
        )
    plain = dl
    if item_tfms is not None or batch_tfms is not None:
        plain = _loader(dl, _dataset(dl, item_tfms, train=False), tfms)
    preds, targs = get_preds(learn, plain)
    augmented = _loader(dl, _dataset(dl, item_tfms, train=item_random), [])
    pairs = getattr(learn.dls.target_block, "flip_pairs", None)
    passes = [_augmented_pass(learn, augmented, tfms, pairs) for _ in range(n)]
    aug = torch.stack([p.reshape(preds.shape) for p in passes])
    aug = aug.max(0)[0] if use_max else aug.mean(0)
    if use_max:
        return torch.stack([preds, aug]).max(0)[0], targs
    if beta is None:
        return (aug, preds), targs
    return torch.lerp(aug, preds, beta), targs
