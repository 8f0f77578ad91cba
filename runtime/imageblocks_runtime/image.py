"""Image decoding: EXIF orientation, any mode to RGB, JPEG DCT-domain downscaling.

Decoding is the data pipeline's CPU bottleneck. When the loader knows the size it will produce,
`open_image(..., draft=(w, h))` asks libjpeg to decode at 1/2, 1/4 or 1/8 scale directly (Pillow's
`draft`), never below the requested size: several times cheaper than decoding full size.

Large photos: Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, left as the user
sets it) is applied to the size actually decoded, so a 12000x9000 JPEG read for a 128 px crop
decodes at 1/8 scale (1500x1125, about 5 MB) without a warning; decoded at full size (no draft,
or a PNG, which cannot be DCT-scaled) it gets Pillow's warning, and above twice the limit an
`ItemError` that says what to do.

Formats: only those Pillow decodes by itself (`IMAGE_FORMATS`: JPEG, PNG, GIF, BMP, TIFF, WebP,
PPM, ...). A file in any other format, whatever its name, is "Not a readable image": an EPS or PDF
named `photo.jpg` never reaches a plugin that starts an outside program (Ghostscript).

Orientation: one rule for every format and every path (training, predict, the service). The EXIF
orientation is read from the header (`_orientation`), the pixels are turned to the displayed
frame, and the full size reported is the displayed one (orientations 5-8 swap it). `probe_image`
reads the same header, and nothing else, to give a file's format and displayed size.

Bad files raise `ItemError` naming the file: missing, unreadable, not an image, truncated or
corrupt (recoverable JPEG damage is decoded as libjpeg recovers it, as in every Pillow-based
loader). Any mode (grayscale, palette, alpha, CMYK, 16-bit) becomes RGB.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from imageblocks_runtime.errors import ItemError

try:  # libjpeg-turbo without Pillow's Python-level header parsing: the fast path for plain JPEGs
    import simplejpeg
except (
    ImportError
):  # pragma: no cover - simplejpeg is a dependency; Pillow still decodes everything
    simplejpeg = None

IMAGE_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "WEBP",
    "GIF",
    "BMP",
    "DIB",
    "TIFF",
    "PPM",
    "TGA",
    "ICO",
)
"""Pillow formats decoded, all by self-contained decoders: none runs another program (EPS does)."""

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees
_TURN = {  # EXIF orientation -> the transpose that shows the stored pixels as a viewer does
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_XMP_NAMESPACE = b"http://ns.adobe.com/xap/1.0/"  # XMP may carry the orientation too (tiff:)


class ImageTooLarge(ItemError):
    """An image whose pixel count is over Pillow's decompression-bomb limit."""


@dataclass(frozen=True)
class ImageProbe:
    """An image file's format and displayed size (EXIF orientation applied), from its header."""

    format: str
    width: int
    height: int
    orientation: int


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


def _scaled_size(w: int, h: int, draft: tuple[int, int] | None) -> tuple[int, int]:
    """The size libjpeg decodes a (w, h) JPEG to at the smallest DCT scale n/8 that keeps it at
    least `draft` (an upper bound of what it allocates)."""
    if draft is None:
        return w, h
    dw, dh = draft
    for n in range(1, 8):
        sw, sh = -(-w * n // 8), -(-h * n // 8)
        if sw >= dw and sh >= dh:
            return sw, sh
    return w, h


def _too_large(name: str, what: str) -> ImageTooLarge:
    return ImageTooLarge(
        f"Image {name} is too large to decode ({what}; PIL.Image.MAX_IMAGE_PIXELS is "
        f"{Image.MAX_IMAGE_PIXELS}). Downscale the file, or save it as JPEG and add a Resize or "
        "RandomResizedCrop item transform (JPEGs then decode at reduced scale), or raise the "
        "limit (PIL.Image.MAX_IMAGE_PIXELS = None) if you trust the file."
    )


def _check_pixels(size: tuple[int, int], name: str) -> None:
    """Pillow's decompression-bomb limit applied to the size that will really be decoded (a
    DCT-scaled JPEG needs far less memory than its full size): error above twice the limit,
    `DecompressionBombWarning` above it, as `Image.open` does for full-size decodes."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = max(1, size[0]) * max(1, size[1])
    if pixels > 2 * limit:
        raise _too_large(name, f"{size[0]}x{size[1]} = {pixels} pixels to decode")
    if pixels > limit:
        warnings.warn(
            f"{name}: decoding {size[0]}x{size[1]} pixels, more than PIL.Image.MAX_IMAGE_PIXELS "
            f"({limit}); with a resize item transform JPEGs decode at reduced scale",
            Image.DecompressionBombWarning,
            stacklevel=4,
        )


def _decode_plain_jpeg(data: bytes, draft: tuple[int, int] | None, name: str) -> tuple | None:
    """libjpeg-turbo through simplejpeg for a JPEG with no orientation to apply (no EXIF, no XMP)
    in RGB/YCbCr/gray: no Python header parsing, DCT scaling to at least `draft`. None when the
    general path is needed."""
    head = data[:65536]
    if simplejpeg is None or data[:2] != b"\xff\xd8" or b"Exif\x00" in head:
        return None
    if _XMP_NAMESPACE in head:
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # let Pillow decode it, or explain why it cannot
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None
    _check_pixels(_scaled_size(w, h, draft), name)
    dw, dh = draft if draft is not None else (0, 0)
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=dw, min_height=dh)
    except ValueError:
        return None  # truncated or damaged: Pillow decodes what libjpeg recovers, or explains
    return Image.fromarray(arr), (w, h)


def _open_pil(data: bytes, name: str, draft: tuple[int, int] | None) -> Image.Image:
    """A lazily decoded Pillow image in one of `IMAGE_FORMATS`. A JPEG that will be DCT-scaled
    (`draft`) skips the open-time size check of `Image.open`, which counts the full size:
    `_check_pixels` checks the scaled size instead, so a 12000x9000 photo loads for a 128 px crop."""
    if draft is not None and data[:3] == b"\xff\xd8\xff":
        try:
            return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        except (SyntaxError, OSError, ValueError, IndexError, struct.error):
            pass  # not a JPEG this parser accepts: let Image.open identify it
    try:
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise _too_large(name, str(e).split(",")[0]) from None


def _png_exif(data: bytes) -> bytes | None:
    """The payload of a PNG's eXIf chunk, before or after the pixels, found by walking the chunk
    headers: nothing is decompressed, the time is bounded by the number of chunks."""
    pos = 8  # after the signature
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            return data[pos + 8 : pos + 8 + length]
        if kind == b"IEND":
            return None
        pos += 12 + length  # length, type, data, CRC
    return None


def _orientation(img: Image.Image, data: bytes | None = None) -> int:
    """The EXIF orientation (1-8) of an opened image, read from its header in every format (EXIF,
    then XMP, as Pillow's `getexif` does); 1 when absent or unreadable, as viewers show it.

    `data`, the file's bytes, lets a PNG's eXIf chunk be found without decoding the pixels.
    """
    if data is not None and img.format == "PNG" and "exif" not in img.info:
        # Pillow's PNG `getexif` decodes the whole image to look for an eXIf chunk after the
        # pixels; the chunk walk answers from the headers (b"": there is none).
        chunk = _png_exif(data)
        img.info["exif"] = b"Exif\x00\x00" + chunk if chunk is not None else b""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, KeyError, TypeError):
        return 1  # a damaged EXIF block: viewers show the pixels as stored
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _stored_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image's pixels as stored, before any EXIF orientation (recent
    Pillow reports a TIFF's size, and decodes its pixels, already turned)."""
    if img.format == "TIFF" and hasattr(img, "tag_v2"):
        w, h = img.tag_v2.get(256), img.tag_v2.get(257)  # ImageWidth, ImageLength
        if isinstance(w, int) and isinstance(h, int):
            return w, h
    return img.size


def _displayed_size(img: Image.Image, orientation: int) -> tuple[int, int]:
    """The size a viewer shows an opened image at: its stored size, swapped by orientations 5-8."""
    w, h = _stored_size(img)
    return (h, w) if orientation in _SWAPS_AXES else (w, h)


def _turn(img: Image.Image, orientation: int) -> Image.Image:
    """`img` as a viewer shows it for its EXIF `orientation`; the result carries no orientation,
    so turning it again changes nothing."""
    if orientation not in _TURN:
        return img
    out = img.transpose(_TURN[orientation])
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif"):
        out.info.pop(key, None)
    return out


def _unreadable(name: str) -> ItemError:
    return ItemError(
        f"Not a readable image: {name}. The file is not an image, is empty or cut off before its "
        f"header, or is in a format imageblocks does not decode (it reads "
        f"{', '.join(IMAGE_FORMATS)}); convert it to JPEG/PNG or remove it "
        "(`imageblocks check` lists all such files)."
    )


def probe_image(data: bytes, name: str = "<upload>") -> ImageProbe:
    """The format and displayed size of an encoded image, from its header alone.

    No pixel is decoded, so time and memory stay small whatever the pixel count. The size is the
    one `decode_image` reports (EXIF orientations 5-8 swap it). Raises `ItemError` ("Not a
    readable image: NAME ...") for a format outside `IMAGE_FORMATS` or a damaged header, and its
    subclass `ImageTooLarge` above twice Pillow's decompression-bomb limit.
    """
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            orientation = _orientation(img, data)
            (w, h), fmt = _displayed_size(img, orientation), str(img.format)
    except Image.DecompressionBombError as e:
        raise _too_large(name, str(e).split(",")[0]) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error):
        raise _unreadable(name) from None  # UnidentifiedImageError is an OSError
    return ImageProbe(format=fmt, width=w, height=h, orientation=orientation)


def _read(source: str | os.PathLike, name: str) -> bytes:
    try:
        with open(source, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ItemError(
            f"Image file not found: {name}. Check the path your get_x/get_items returns "
            "(a missing folder prefix is the usual cause), or remove the row."
        ) from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise ItemError(
            f"Cannot read image file {name}: {e.strerror or e}. Fix the file or remove the row."
        ) from None


def decode_image(source: Any, draft: tuple[int, int] | None = None) -> tuple[Image.Image, tuple]:
    """`open_image`, plus the (width, height) the image has at full size (before any draft).

    The full size is the displayed one: an EXIF rotation by 90 degrees swaps width and height.
    """
    if isinstance(source, Image.Image):
        source.load()  # first: a decoder may turn the pixels itself (Pillow's TIFF does)
        img = to_rgb(_turn(source, _orientation(source)))
        return (img.copy() if img is source else img), img.size
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255 if arr.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        img = to_rgb(Image.fromarray(arr))
        return img, img.size
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        data = _read(source, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):  # a file object
        data = source.read()
    else:
        raise ItemError(
            f"Cannot make an image from {name}: get_x should return a path, bytes, a PIL image, "
            "an array or a tensor."
        )
    fast = _decode_plain_jpeg(data, draft, name)
    if fast is not None:
        return fast
    try:
        img = _open_pil(data, name, draft)
        orientation = _orientation(img, data)
        full_size = _displayed_size(img, orientation)
        if draft is not None and isinstance(img, JpegImagePlugin.JpegImageFile):
            w, h = draft  # the draft is in the displayed frame, the DCT scaling in the stored one
            img.draft(img.mode, (h, w) if orientation in _SWAPS_AXES else (w, h))
            _check_pixels(img.size, name)  # Image.open, skipped, would count the full size
        img.load()
        img = _turn(img, _orientation(img))  # what the decoder left: Pillow turns a TIFF itself
    except ItemError:
        raise
    except UnidentifiedImageError:
        raise _unreadable(name) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise ItemError(
            f"Could not decode image {name}: {e}. The file is truncated or corrupt; "
            "re-export it or remove it from the dataset."
        ) from None
    try:
        return to_rgb(img), full_size
    except (ValueError, OSError) as e:
        raise ItemError(
            f"Cannot convert image {name} (mode {img.mode}) to RGB: {e}. Save it as an 8-bit "
            "RGB or grayscale JPEG/PNG."
        ) from None
