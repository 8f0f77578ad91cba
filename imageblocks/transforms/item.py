"""Item transforms: per-image crops and resizes run in the loader's workers, points follow.

The validation geometry (`Resize`, `RandomResizedCrop`'s centre crop, the pad modes,
`source_region`) is the runtime's (`imageblocks_runtime.preprocess`), so the loaders, `predict`
and the PyTorch-free runtime run the same code; this module adds what only training does: the
random box of `RandomResizedCrop` and `FlipItem`. Each transform maps `(image, points, train)` to
`(image, points)`, `points` an `(n, 2)` float array in the image's relative coordinates [-1, 1].
"""

from __future__ import annotations

import math
import random

from PIL import Image

from imageblocks.transforms.pairs import FlipPairs, check_flip_pairs, pair_permutation
from imageblocks_runtime import preprocess
from imageblocks_runtime.preprocess import (
    Box,
    ItemTransform,
    PadMode,
    Resize,
    ResizeMethod,
    move_points,
    source_region,
)

__all__ = [
    "ITEM_TRANSFORMS",
    "Box",
    "FlipItem",
    "ItemTransform",
    "PadMode",
    "RandomResizedCrop",
    "Resize",
    "ResizeMethod",
    "item_tfm_from_config",
    "move_points",
    "source_region",
]


class RandomResizedCrop(preprocess.RandomResizedCrop):
    """A random crop of `min_scale..max_scale` of the area and aspect in `ratio`, resized to `size`.

    On validation: the centre of the image (slightly more than `size`, by `val_xtra`), resized.
    """

    def _train_box(self, w: int, h: int) -> Box:
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = random.uniform(self.min_scale, self.max_scale) * w * h
            aspect = math.exp(random.uniform(*log_ratio))
            cw, ch = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if cw <= w and ch <= h:
                x0, y0 = random.uniform(0, w - cw), random.uniform(0, h - ch)
                return (x0, y0, x0 + cw, y0 + ch)
        side = min(w, h)  # fall back to the largest centred square
        return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)

    def __call__(self, img, points, train):
        w, h = img.size
        return self.crop(img, points, self._train_box(w, h) if train else self.valid_box(w, h))


class FlipItem(ItemTransform):
    """Horizontal flip with probability `p` on the training set; the `flip_pairs` of points
    (set by the DataBlock from its `PointBlock`) swap identities, as a mirror does."""

    order = 2

    def __init__(self, p: float = 0.5, flip_pairs: FlipPairs | None = None):
        self.p = p
        self.flip_pairs = check_flip_pairs(flip_pairs)

    def config(self) -> dict:
        """As `ItemTransform.config`, less the flip pairs: config.json records the target's."""
        out = super().config()
        out.pop("flip_pairs", None)
        return out

    def __call__(self, img, points, train):
        if not train or random.random() >= self.p:
            return img, points
        if points is not None:
            points = points.copy()
            points[:, 0] = -points[:, 0]
            if self.flip_pairs:
                points = points[pair_permutation(self.flip_pairs, len(points))]
        return img.transpose(Image.FLIP_LEFT_RIGHT), points


ITEM_TRANSFORMS: dict[str, type[ItemTransform]] = {
    c.__name__: c for c in (Resize, RandomResizedCrop, FlipItem)
}


def item_tfm_from_config(config: dict) -> ItemTransform:
    """Rebuild an item transform from `ItemTransform.config()` (no code is loaded)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in ITEM_TRANSFORMS:
        raise ValueError(f"unknown item transform {name!r}; known: {sorted(ITEM_TRANSFORMS)}")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return ITEM_TRANSFORMS[name](**config)
