"""Decoding (modes, EXIF, draft, bad files) and item transforms (points follow the pixels)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imageblocks.errors import ItemError
from imageblocks.image import PILImage, decode_image, open_image
from imageblocks.transforms.item import FlipItem, RandomResizedCrop, Resize
from tests.conftest import blob_image


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode,value",
    [
        ("L", 128),
        ("LA", (128, 255)),
        ("RGBA", (10, 20, 30, 255)),
        ("CMYK", (0, 0, 0, 0)),
        ("P", 3),
        ("I;16", 40000),
        ("I", 70000),
        ("F", 0.5),
    ],
)
def test_any_mode_becomes_rgb(mode, value):
    img = open_image(Image.new(mode, (8, 6), value))
    assert img.mode == "RGB" and img.size == (8, 6)


def test_16_bit_png_keeps_its_range(tmp_path):
    arr = np.full((4, 4), 65535 // 2, np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = open_image(tmp_path / "a.png")
    assert abs(int(np.asarray(img)[0, 0, 0]) - 128) <= 1


def test_transparent_pixels_become_white():
    img = open_image(Image.new("RGBA", (2, 2), (255, 0, 0, 0)))
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]


def test_cmyk_jpeg_and_grayscale_jpeg_decode():
    assert open_image(_jpeg(Image.new("CMYK", (16, 16), (0, 255, 255, 0)))).mode == "RGB"
    gray = open_image(_jpeg(Image.new("L", (64, 48), 200)), draft=(16, 12))
    assert gray.mode == "RGB" and gray.size == (16, 12)


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _jpeg(img, exif=exif)
    out, full = decode_image(data)
    assert out.size == (20, 40) and full == (20, 40)
    small, full = decode_image(data, draft=(5, 10))
    assert full == (20, 40) and small.size[0] < small.size[1]


def test_draft_decodes_no_smaller_than_asked():
    data = _jpeg(Image.new("RGB", (500, 375), (0, 128, 0)))
    img, full = decode_image(data, draft=(128, 128))
    assert full == (500, 375) and 128 <= img.size[1] <= 188 and img.size[0] < 500
    img, _ = decode_image(data, draft=(64, 40))
    assert 40 <= img.size[1] <= 94 and 64 <= img.size[0] <= 125


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(ItemError, match="not found: .*missing.jpg"):
        open_image(tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    with pytest.raises(ItemError, match="Not a readable image: .*notes.jpg"):
        open_image(tmp_path / "notes.jpg")
    (tmp_path / "cut.jpg").write_bytes(_jpeg(Image.new("RGB", (300, 300), (1, 2, 3)))[:400])
    with pytest.raises(ItemError, match="cut.jpg.*truncated or corrupt"):
        open_image(tmp_path / "cut.jpg")


def test_pilimage_shape_thumb_and_repr():
    img = PILImage.create(np.zeros((480, 640, 3), np.uint8))
    assert img.shape == (480, 640) and repr(img) == "PILImage mode=RGB size=640x480"
    assert img.to_thumb(160).size == (160, 120)


def _blob_centre(img: Image.Image) -> tuple[float, float]:
    arr = np.asarray(img).astype(np.float64).mean(-1)
    ys, xs = np.mgrid[: arr.shape[0], : arr.shape[1]]
    return (arr * xs).sum() / arr.sum() + 0.5, (arr * ys).sum() / arr.sum() + 0.5


def _rel(x: float, y: float, w: int, h: int) -> np.ndarray:
    return np.array([[x * 2 / w - 1, y * 2 / h - 1]], np.float32)


def _px(p: np.ndarray, w: int, h: int) -> tuple[float, float]:
    return (p[0, 0] + 1) * w / 2, (p[0, 1] + 1) * h / 2


@pytest.mark.parametrize(
    "tfm",
    [
        Resize(96),
        Resize((64, 128), method="squish"),
        Resize(100, method="pad", pad_mode="zeros"),
        RandomResizedCrop(128, min_scale=0.35),
        FlipItem(p=1.0),
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_points_land_where_the_pixels_went(tfm, train):
    import random

    random.seed(3)
    w, h, cx, cy = 400, 300, 230.0, 130.0
    img = blob_image(w, h, cx, cy, r=10)
    out, pts = tfm(img, _rel(cx, cy, w, h), train)
    ow, oh = out.size
    if tfm.size is not None:
        assert (oh, ow) == tfm.size
    px, py = _px(pts, ow, oh)
    bx, by = _blob_centre(out)
    if 0 < px < ow and 0 < py < oh:
        assert abs(px - bx) < 1.0 and abs(py - by) < 1.0


def test_random_resized_crop_validation_is_a_deterministic_centre_crop():
    img = blob_image(500, 375, 250, 187)
    a, _ = RandomResizedCrop(128, min_scale=0.35)(img, None, False)
    b, _ = RandomResizedCrop(128, min_scale=0.35)(img, None, False)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    cx, cy = _blob_centre(a)
    assert abs(cx - 64) < 1 and abs(cy - 64) < 1


def test_resize_pad_keeps_the_whole_image():
    out, _ = Resize(100, method="pad", pad_mode="zeros")(
        Image.new("RGB", (200, 100), "white"), None, False
    )
    arr = np.asarray(out)
    assert out.size == (100, 100) and arr[0, 50].sum() == 0 and arr[50, 50].sum() == 765


def test_fast_jpeg_path_matches_pillow_decoding(tmp_path):
    """Plain JPEGs take the libjpeg-turbo path (simplejpeg); the result matches Pillow's."""
    yy, xx = np.mgrid[:375, :500]
    arr = np.stack([xx * 255 // 500, yy * 255 // 375, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=90)
    fast, full = decode_image(tmp_path / "a.jpg", draft=(128, 128))
    assert full == (500, 375) and 128 <= fast.size[1] < 375 and fast.size[0] >= 128
    ref = Image.open(tmp_path / "a.jpg").convert("RGB").resize(fast.size, Image.BOX)
    diff = np.abs(np.asarray(fast, np.int16) - np.asarray(ref, np.int16))
    assert diff.mean() < 3.0  # the same picture, scaled in the DCT domain instead


def test_crop_resize_of_a_dct_scaled_jpeg_stays_inside_the_image(tmp_path):
    """125x94 (a 500x375 JPEG at 1/4 scale) centre-cropped to 48: no negative box edge."""
    img = Image.new("RGB", (125, 94), (10, 20, 30))
    out, _ = Resize(48)(img, None, False)
    assert out.size == (48, 48)
    out, _ = RandomResizedCrop(48)(img, None, False)
    assert out.size == (48, 48)
