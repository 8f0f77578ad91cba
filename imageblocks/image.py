"""`PILImage` and image decoding: EXIF orientation, any mode to RGB, JPEG DCT-domain downscaling.

Decoding is the data pipeline's CPU bottleneck. When the loader knows the size it will produce,
`open_image(..., draft=(w, h))` asks libjpeg to decode at 1/2, 1/4 or 1/8 scale directly (Pillow's
`draft`), never below the requested size: several times cheaper than decoding full size.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from imageblocks.errors import ItemError

try:  # libjpeg-turbo without Pillow's Python-level header parsing: the fast path for plain JPEGs
    import simplejpeg
except (
    ImportError
):  # pragma: no cover - simplejpeg is a dependency; Pillow still decodes everything
    simplejpeg = None

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees


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


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` in RGB: grayscale, palette, alpha, CMYK and 16-bit/float images converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(source: Any, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode `source` to an RGB PIL image, EXIF rotation applied, optionally at reduced size.

    `draft=(w, h)` lets a JPEG decode at the smallest DCT scale that is still at least (w, h).
    Errors name the file and what to do.
    """
    return decode_image(source, draft)[0]


def _decode_plain_jpeg(data: bytes, draft: tuple[int, int] | None) -> tuple | None:
    """libjpeg-turbo through simplejpeg for a JPEG without EXIF in RGB/YCbCr/gray: no Python
    header parsing, DCT scaling to at least `draft`. None when the general path is needed."""
    if simplejpeg is None or data[:2] != b"\xff\xd8" or b"Exif\x00" in data[:65536]:
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray", "RGB"):
            return None
        dw, dh = draft if draft is not None else (0, 0)
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=dw, min_height=dh)
    except ValueError:
        return None  # let Pillow decode it, or explain why it cannot
    return Image.fromarray(arr), (w, h)


def decode_image(source: Any, draft: tuple[int, int] | None = None) -> tuple[Image.Image, tuple]:
    """`open_image`, plus the (width, height) the image has at full size (before any draft)."""
    if isinstance(source, Image.Image):
        img = to_rgb(ImageOps.exif_transpose(source) or source)
        return img, img.size
    if isinstance(source, torch.Tensor):
        arr = source.detach().cpu()
        if arr.is_floating_point():
            arr = (arr.clamp(0, 1) * 255).round()
        arr = arr.to(torch.uint8).numpy()
        arr = arr.transpose(1, 2, 0) if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else arr
        arr = arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr
        img = to_rgb(Image.fromarray(arr))
        return img, img.size
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255 if arr.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        img = to_rgb(Image.fromarray(arr))
        return img, img.size
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)) and str(source).lower().endswith((".jpg", ".jpeg")):
        try:
            with open(source, "rb") as f:
                source = f.read()
        except FileNotFoundError:
            raise ItemError(
                f"Image file not found: {name}. Check the path your get_x/get_items returns "
                "(a missing folder prefix is the usual cause), or remove the row."
            ) from None
    if isinstance(source, (bytes, bytearray)):
        fast = _decode_plain_jpeg(source, draft)
        if fast is not None:
            return fast
    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        img = Image.open(fp)
        full_w, full_h = img.size
        if draft is not None and img.format == "JPEG":  # a JPEG's EXIF is in its header: cheap
            w, h = draft
            turned = img.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPS_AXES
            img.draft(img.mode, (h, w) if turned else (w, h))
        img.load()
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)  # any format, once decoded
        if orientation in _SWAPS_AXES:
            full_w, full_h = full_h, full_w
    except FileNotFoundError:
        raise ItemError(
            f"Image file not found: {name}. Check the path your get_x/get_items returns "
            "(a missing folder prefix is the usual cause), or remove the row."
        ) from None
    except UnidentifiedImageError:
        raise ItemError(
            f"Not a readable image: {name}. The file is not an image, or in a format Pillow "
            "cannot read; convert it to JPEG/PNG or remove it (`imageblocks check` lists all such files)."
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ItemError(
            f"Could not decode image {name}: {e}. The file is truncated or corrupt; "
            "re-export it or remove it from the dataset."
        ) from None
    if orientation != 1:
        img = ImageOps.exif_transpose(img) or img
    return to_rgb(img), (full_w, full_h)
