"""`PILImage` and decoding that also accepts a torch tensor; the decoding itself (EXIF
orientation, any mode to RGB, JPEG DCT-domain downscaling, the pixel budget, `probe_image`) is
the runtime's (`imageblocks_runtime.image`), re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from imageblocks_runtime import image as _runtime
from imageblocks_runtime.image import (
    IMAGE_FORMATS,
    ImageProbe,
    ImageTooLarge,
    _scaled_size,
    probe_image,
    to_rgb,
)

__all__ = [
    "IMAGE_FORMATS",
    "ImageProbe",
    "ImageTooLarge",
    "PILImage",
    "_scaled_size",
    "decode_image",
    "open_image",
    "probe_image",
    "to_rgb",
]


class PILImage(Image.Image):
    """An RGB Pillow image that prints as the book shows and knows `.shape` (h, w)."""

    @classmethod
    def create(cls, source: Any, draft: tuple[int, int] | None = None) -> PILImage:
        """An RGB image from a path, bytes, a PIL image, an array (HWC) or a tensor (CHW)."""
        img = open_image(source, draft=draft)
        img.__class__ = cls
        return img

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), as the book prints it."""
        return self.size[1], self.size[0]

    def to_thumb(self, h: int, w: int | None = None) -> PILImage:
        """A copy that fits in (w, h), keeping the aspect ratio."""
        out = self.copy()
        out.thumbnail((w or h, h))
        out.__class__ = type(self)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__} mode={self.mode} size={self.size[0]}x{self.size[1]}"


def _tensor_array(source: torch.Tensor) -> np.ndarray:
    """A uint8 HWC (or HW) array of an image tensor: CHW or HWC, floats in [0, 1] or 0-255."""
    arr = source.detach().cpu()
    if arr.is_floating_point():
        arr = (arr.clamp(0, 1) * 255).round()
    arr = arr.to(torch.uint8).numpy()
    arr = arr.transpose(1, 2, 0) if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else arr
    return arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr


def decode_image(source: Any, draft: tuple[int, int] | None = None) -> tuple[Image.Image, tuple]:
    """`imageblocks_runtime.image.decode_image`, which also takes an image tensor (CHW)."""
    if isinstance(source, torch.Tensor):
        source = _tensor_array(source)
    return _runtime.decode_image(source, draft)


def open_image(source: Any, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode `source` (also a tensor) to an RGB PIL image, EXIF rotation applied, optionally
    at reduced size (`draft=(w, h)`: the smallest JPEG DCT scale still at least that)."""
    return decode_image(source, draft)[0]
