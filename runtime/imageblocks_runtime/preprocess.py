"""The validation pre-processing, in NumPy and Pillow: decode, item transforms, points to pixels.

The one implementation of the validation geometry, used by the training package's loaders (its
`Resize` is this one; its `RandomResizedCrop` adds the random box to this one's centre crop),
by `learn.predict`, and by the runtime, so all of them give the same pixels to the network.

Each transform maps `(image, points, train)` to `(image, points)`: `image` is an RGB PIL image
(possibly decoded at reduced JPEG scale), `points` an `(n, 2)` float array of (x, y) in the
image's relative coordinates [-1, 1] (or None). Every geometric step is one PIL `resize` with a
source `box` (crop and resize in one resample); the points go through the same box mapping.
`source_region` says which region of the original image the output shows, and `to_pixels` maps
[-1, 1] points of the output back to the original image's pixels.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
from PIL import Image

from imageblocks_runtime.image import decode_image
from imageblocks_runtime.utils import parse_size

__all__ = [
    "Box",
    "ItemTransform",
    "PadMode",
    "RandomResizedCrop",
    "Resize",
    "ResizeMethod",
    "draft_size",
    "move_points",
    "prepare",
    "source_region",
    "to_pixels",
    "valid_tfms",
]

Box = tuple[float, float, float, float]


class ResizeMethod(str, Enum):
    """How `Resize` reaches the target aspect ratio."""

    Crop = "crop"
    Pad = "pad"
    Squish = "squish"


class PadMode(str, Enum):
    """How padding pixels are filled."""

    Zeros = "zeros"
    Border = "border"
    Reflection = "reflection"


def move_points(points: np.ndarray | None, src: tuple[int, int], box: Box) -> np.ndarray | None:
    """Relative points of a `src` (w, h) image, in the relative frame of the `box` region."""
    if points is None:
        return None
    w, h = src
    x0, y0, x1, y1 = box
    px = (points[:, 0] + 1) * (w / 2)
    py = (points[:, 1] + 1) * (h / 2)
    out = np.empty_like(points)
    out[:, 0] = (px - x0) / (x1 - x0) * 2 - 1
    out[:, 1] = (py - y0) / (y1 - y0) * 2 - 1
    return out


def _pad_array(
    arr: np.ndarray, top: int, bottom: int, left: int, right: int, mode: str
) -> np.ndarray:
    np_mode = {"zeros": "constant", "border": "edge", "reflection": "reflect"}[mode]
    pads = ((top, bottom), (left, right), (0, 0))
    if np_mode == "reflect" and (
        max(top, bottom) >= arr.shape[0] or max(left, right) >= arr.shape[1]
    ):
        np_mode = "symmetric" if min(arr.shape[:2]) > 1 else "edge"
    return np.pad(arr, pads, mode=np_mode)


def inside(box: Box, w: int, h: int) -> Box:
    """`box` clamped to the image (float rounding can put an edge at -1e-15, which PIL rejects)."""
    x0, y0, x1, y1 = box
    return (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))


class ItemTransform:
    """Base class: a callable on `(image, points, train)`; `size` is its output (h, w)."""

    order = 0
    size: tuple[int, int] | None = None

    def __call__(
        self, img: Image.Image, points: np.ndarray | None, train: bool
    ) -> tuple[Image.Image, np.ndarray | None]:
        raise NotImplementedError

    def _params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def config(self) -> dict:
        """A JSON-able description (config.json's `item_tfms`), read back by `valid_tfms`."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self._params().items()}
        return {"name": type(self).__name__, **params}

    def valid_box(self, w: int, h: int) -> Box:
        """The region of a (w, h) source image that the validation output shows, in pixels."""
        return (0.0, 0.0, float(w), float(h))

    def __repr__(self) -> str:
        return f"{type(self).__name__} -- {self._params()}"


class Resize(ItemTransform):
    """Resize to `size` by cropping (random on train, centre on valid), padding or squishing."""

    order = 1

    def __init__(
        self,
        size: int | tuple[int, int],
        method: ResizeMethod | str = ResizeMethod.Crop,
        pad_mode: PadMode | str = PadMode.Reflection,
        resample: int = Image.BILINEAR,
    ):
        self.size = parse_size(size)
        self.method = ResizeMethod(method).value
        self.pad_mode = PadMode(pad_mode).value
        self.resample = resample

    def _crop_box(self, w: int, h: int, fx: float, fy: float) -> Box:
        out_h, out_w = self.size
        scale = max(out_w / w, out_h / h)
        cw, ch = out_w / scale, out_h / scale
        x0, y0 = (w - cw) * fx, (h - ch) * fy
        return inside((x0, y0, x0 + cw, y0 + ch), w, h)

    def _pad_geometry(self, w: int, h: int) -> tuple[int, int, int, int, Box]:
        out_h, out_w = self.size
        scale = min(out_w / w, out_h / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        left, top = (out_w - nw) // 2, (out_h - nh) // 2
        sx, sy = w / nw, h / nh  # the padded output shows this (virtual) region of the source
        return nw, nh, left, top, (-left * sx, -top * sy, (out_w - left) * sx, (out_h - top) * sy)

    def valid_box(self, w, h):
        if self.method == "crop":
            return self._crop_box(w, h, 0.5, 0.5)
        if self.method == "pad":
            return self._pad_geometry(w, h)[4]
        return (0.0, 0.0, float(w), float(h))

    def __call__(self, img, points, train):
        w, h = img.size
        out_h, out_w = self.size
        if self.method == "squish":
            box = (0.0, 0.0, float(w), float(h))
            return img.resize((out_w, out_h), self.resample), move_points(points, (w, h), box)
        if self.method == "crop":
            fx, fy = (random.random(), random.random()) if train else (0.5, 0.5)
            box = self._crop_box(w, h, fx, fy)
            resized = img.resize((out_w, out_h), self.resample, box=box)
            return resized, move_points(points, (w, h), box)
        nw, nh, left, top, box = self._pad_geometry(w, h)
        arr = np.asarray(img.resize((nw, nh), self.resample))
        arr = _pad_array(arr, top, out_h - nh - top, left, out_w - nw - left, self.pad_mode)
        return Image.fromarray(arr), move_points(points, (w, h), box)


class RandomResizedCrop(ItemTransform):
    """The validation side of a random crop of `min_scale..max_scale` of the area and aspect in
    `ratio`: the centre of the image (slightly more than `size`, by `val_xtra`), resized to
    `size`. The training package's `RandomResizedCrop` adds the random box for training."""

    order = 1

    def __init__(
        self,
        size: int | tuple[int, int],
        min_scale: float = 0.08,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        resample: int = Image.BILINEAR,
        val_xtra: float = 0.14,
        max_scale: float = 1.0,
    ):
        self.size = parse_size(size)
        self.min_scale, self.max_scale = min_scale, max_scale
        self.ratio = ratio
        self.resample = resample
        self.val_xtra = val_xtra

    def valid_box(self, w: int, h: int) -> Box:
        out_h, out_w = self.size
        # squish to size + xtra, then centre-crop size: the crop is this fraction of each side
        xtra = math.ceil(max(out_h, out_w) * self.val_xtra / 8) * 8
        fx, fy = out_w / (out_w + xtra), out_h / (out_h + xtra)
        cw, ch = w * fx, h * fy
        return ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)

    def crop(self, img: Image.Image, points: np.ndarray | None, box: Box) -> tuple:
        """`img` cut to `box` and resized to `size` in one resample; `points` follow."""
        w, h = img.size
        box = inside(box, w, h)
        out_h, out_w = self.size
        return img.resize((out_w, out_h), self.resample, box=box), move_points(points, (w, h), box)

    def __call__(self, img, points, train):
        return self.crop(img, points, self.valid_box(*img.size))


VALID_TRANSFORMS: dict[str, type[ItemTransform]] = {
    c.__name__: c for c in (Resize, RandomResizedCrop)
}
TRAIN_ONLY = ("FlipItem",)  # item transforms that leave a validation image as it is


def valid_tfms(configs: Sequence[dict[str, Any]]) -> list[ItemTransform]:
    """The validation item transforms that config.json's checked `item_tfms` describe, in the
    order the loader runs them (training-only ones, a flip, are left out)."""
    out = []
    for config in configs:
        config = dict(config)
        name = config.pop("name", None)
        if name in TRAIN_ONLY:
            continue
        if name not in VALID_TRANSFORMS:
            raise ValueError(f"unknown item transform {name!r}; known: {sorted(VALID_TRANSFORMS)}")
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        out.append(VALID_TRANSFORMS[name](**config))
    return sorted(out, key=lambda t: t.order)


def draft_size(
    item_tfms: Sequence[dict[str, Any]], batch_tfms: Sequence[dict[str, Any]] = ()
) -> tuple[int, int] | None:
    """The (w, h) the loader decodes JPEGs down to, from config.json's transforms: the first item
    transform's size; with item transforms but none sized, None; else the first batch resize's."""
    for tfms in (item_tfms, batch_tfms):
        for t in tfms:
            if t.get("size") is not None:
                h, w = parse_size(t["size"])
                return w, h
        if tfms:
            return None
    return None


def source_region(tfms: Sequence[ItemTransform], w: int, h: int) -> Box:
    """The region of a (w, h) image that the validation transforms' output shows, in pixels."""
    x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
    cw, ch = w, h
    for t in tfms:
        bx0, by0, bx1, by1 = t.valid_box(cw, ch)
        sx, sy = (x1 - x0) / cw, (y1 - y0) / ch
        x0, y0, x1, y1 = x0 + bx0 * sx, y0 + by0 * sy, x0 + bx1 * sx, y0 + by1 * sy
        if t.size is not None:
            ch, cw = t.size
    return (x0, y0, x1, y1)


def to_pixels(points: np.ndarray, region: Box) -> np.ndarray:
    """Points (n, 2) in [-1, 1] of the transformed image, in pixels (float32) of the original
    image whose `region` (`source_region`) the transformed image shows."""
    x0, y0, x1, y1 = region
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    return (pts + 1) / 2 * np.array([x1 - x0, y1 - y0], np.float32) + np.array([x0, y0], np.float32)


def prepare(
    source: Any, tfms: Sequence[ItemTransform], draft: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """`source` (a path, bytes, a PIL image) decoded as the validation loader decodes it (JPEG
    draft scale, EXIF turn, RGB) and through the validation item transforms: a uint8 (H, W, 3)
    array, and the (w, h) of the original image."""
    img, size = decode_image(source, draft=draft)
    for t in tfms:
        img, _ = t(img, None, False)
    return np.asarray(img), size
