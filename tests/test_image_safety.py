"""Image decoding meets the world: only self-contained decoders (no Ghostscript), one EXIF
orientation rule for every format and path, header-only probes, `check` on empty input and
`python -m imageblocks`."""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, ImageFile
from typer.testing import CliRunner

from imageblocks.cli import app
from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, PointBlock
from imageblocks.errors import ItemError
from imageblocks.image import IMAGE_FORMATS, ImageProbe, decode_image, probe_image
from imageblocks.learn.learner import vision_learner
from imageblocks.transforms.item import Resize

REPO = Path(__file__).resolve().parents[1]

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
    b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
)
PS = b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nshowpage\n%%EOF\n"
PDF = b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"

# --- formats that run other programs --------------------------------------------------------


@pytest.fixture
def fake_ghostscript(tmp_path, monkeypatch) -> Path:
    """A `gs` first on PATH that leaves a marker file if anything runs it; the marker's path."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "ghostscript-ran"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 1\n")
    gs.chmod(gs.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches the lookup
    return marker


def test_image_formats_are_self_contained_pillow_decoders():
    Image.init()
    assert set(IMAGE_FORMATS) <= set(Image.OPEN), "every name must be a Pillow opener"
    assert {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"} <= set(IMAGE_FORMATS)
    assert not {"EPS", "PDF", "PSD", "WMF"} & set(IMAGE_FORMATS)


@pytest.mark.parametrize("payload", [EPS, PS, PDF], ids=["eps", "ps", "pdf"])
def test_postscript_and_pdf_under_image_names_start_no_process(payload, tmp_path, fake_ghostscript):
    if payload is not PDF:  # the premise: unrestricted, Pillow takes these for EPS
        assert Image.open(io.BytesIO(payload)).format == "EPS"
    images = tmp_path / "images"
    images.mkdir()
    for name in ("photo.jpg", "scan.png", "page.tiff"):
        (images / name).write_bytes(payload)
    photo = images / "photo.jpg"
    for source in (photo, payload):
        for draft in (None, (64, 64)):
            with pytest.raises(ItemError, match="Not a readable image") as err:
                decode_image(source, draft=draft)
            assert source is payload or "photo.jpg" in str(err.value)
    with pytest.raises(ItemError, match=r"Not a readable image: photo\.jpg"):
        probe_image(payload, "photo.jpg")
    dblock = DataBlock(blocks=(ImageBlock,), splitter=lambda items: ([0], [0]))
    with pytest.raises(ItemError, match="Not a readable image"):  # the training path
        dblock.dataloaders([photo], bs=1, num_workers=0, device="cpu").train.one_batch()
    result = CliRunner().invoke(app, ["check", "--images", str(images)])
    assert result.exit_code == 1
    assert result.stdout.count("Not a readable image") == 3, result.stdout
    assert not fake_ghostscript.exists(), "decoding started Ghostscript"


# --- EXIF orientation -----------------------------------------------------------------------

# The stored pixels: 48 wide, 32 high, blue, with a red 10x10 square at the stored top-left.
STORED = np.zeros((32, 48, 3), np.uint8)
STORED[..., 2] = 255
STORED[:10, :10] = (255, 0, 0)
# Where a viewer shows the stored top-left corner, from the EXIF specification's definitions,
# and the displayed pixels (np.rot90 turns counter-clockwise for k > 0).
SHOWN = {
    6: ("top-right", np.rot90(STORED, -1)),  # 0th row is the visual right side: 90 deg clockwise
    8: ("bottom-left", np.rot90(STORED, 1)),  # 0th row is the visual left side: 90 deg counter
    3: ("bottom-right", np.rot90(STORED, 2)),
}


def _encoded(fmt: str, orientation: int, **kw) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"WEBP": {"lossless": True}, "JPEG": {"quality": 95}}.get(fmt, {}) | kw
    buf = io.BytesIO()
    Image.fromarray(STORED).save(buf, fmt, exif=exif, **kw)
    return buf.getvalue()


def _png_exif_after_pixels(orientation: int) -> bytes:
    """A PNG whose eXIf chunk comes after IDAT (allowed by older writers)."""
    buf = io.BytesIO()
    Image.fromarray(STORED).save(buf, "PNG")
    data = buf.getvalue()
    assert data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND"
    exif = Image.Exif()
    exif[0x0112] = orientation
    tiff = exif.tobytes().removeprefix(b"Exif\x00\x00")
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    out = data[:-12] + chunk + data[-12:]
    with Image.open(io.BytesIO(out)) as img:  # the premise: Pillow finds it, once decoded
        assert "exif" not in img.info and img.getexif()[0x0112] == orientation
    return out


def _corner(arr: np.ndarray) -> str:
    """Which corner of an image holds the red square."""
    h, w = arr.shape[:2]
    red = {
        name: arr[y, x, 0] > 200 and arr[y, x, 2] < 60
        for name, (y, x) in {
            "top-left": (2, 2),
            "top-right": (2, w - 3),
            "bottom-left": (h - 3, 2),
            "bottom-right": (h - 3, w - 3),
        }.items()
    }
    assert sum(red.values()) == 1, red
    return next(name for name, is_red in red.items() if is_red)


CASES = [
    (fmt, o, (lambda f=fmt, o=o: _encoded(f, o)))
    for fmt in ("PNG", "WEBP", "TIFF", "JPEG")
    for o in (6, 8, 3)
] + [
    ("PNG after IDAT", 6, lambda: _png_exif_after_pixels(6)),
    ("PNG after IDAT", 8, lambda: _png_exif_after_pixels(8)),
    ("TIFF lzw", 6, lambda: _encoded("TIFF", 6, compression="tiff_lzw")),  # decoded by libtiff
]


@pytest.mark.parametrize("fmt,orientation,make", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_every_format_shows_the_displayed_frame(fmt, orientation, make):
    data = make()
    corner, shown = SHOWN[orientation]
    h, w = shown.shape[:2]
    probe = probe_image(data, "rotated")
    assert probe == ImageProbe(format=fmt.split()[0], width=w, height=h, orientation=orientation)
    img, full = decode_image(data)
    assert full == img.size == (w, h)
    arr = np.asarray(img)
    assert _corner(arr) == corner
    tolerance = 12 if fmt == "JPEG" else 0
    assert np.abs(arr.astype(int) - shown).mean() <= tolerance
    small, full = decode_image(data, draft=(16, 16))  # the reduced-scale (training) path
    assert full == (w, h) and _corner(np.asarray(small)) == corner
    assert (small.width > small.height) == (w > h)
    # an image opened by the caller (lazily) turns the same way, and only once
    opened, full = decode_image(Image.open(io.BytesIO(data)))
    assert full == (w, h) and np.array_equal(np.asarray(opened), arr)
    again, _ = decode_image(img)  # the decoded image carries no orientation of its own
    assert np.array_equal(np.asarray(again), arr)


def test_xmp_orientation_turns_a_jpeg_as_the_probe_says():
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    buf = io.BytesIO()
    Image.fromarray(STORED).save(buf, "JPEG", quality=95, xmp=xmp)
    probe = probe_image(buf.getvalue())
    img, full = decode_image(buf.getvalue())
    assert (probe.width, probe.height) == full == img.size == (32, 48)
    assert _corner(np.asarray(img)) == "top-right"


def test_a_damaged_exif_block_is_shown_as_stored():
    buf = io.BytesIO()
    Image.fromarray(STORED).save(buf, "PNG", exif=b"Exif\x00\x00not a tiff header")
    assert probe_image(buf.getvalue()).orientation == 1
    img, full = decode_image(buf.getvalue())
    assert full == img.size == (48, 32) and _corner(np.asarray(img)) == "top-left"


# --- probes read headers only ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "PNG after IDAT", "WEBP", "TIFF", "JPEG", "GIF", "BMP"])
def test_probe_decodes_no_pixels(fmt, monkeypatch):
    if fmt == "PNG after IDAT":
        data = _png_exif_after_pixels(6)
    elif fmt in ("GIF", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(STORED).save(buf, fmt)
        data = buf.getvalue()
    else:
        data = _encoded(fmt, 6)

    def no_decoding(self):
        raise AssertionError("probe_image decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    probe = probe_image(data)
    swapped = fmt not in ("GIF", "BMP")  # these carry no EXIF
    assert (probe.width, probe.height) == ((32, 48) if swapped else (48, 32))


def test_probe_of_a_49_megapixel_png_is_fast_and_small():
    buf = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buf, "PNG")
    data = buf.getvalue()
    assert len(data) < 300_000
    tracemalloc.start()
    try:
        start = time.perf_counter()
        probe = probe_image(data, "big.png")
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (probe.format, probe.width, probe.height) == ("PNG", 7000, 7000)
    assert seconds < 0.5 and peak < 5e6, (seconds, peak)


def test_probe_names_the_upload_when_the_header_is_unreadable():
    with pytest.raises(ItemError, match=r"Not a readable image: cut\.png"):
        probe_image(_encoded("PNG", 1)[:20], "cut.png")
    with pytest.raises(ItemError, match=r"Not a readable image: <upload>"):
        probe_image(b"just some text")


# --- predict maps points into the displayed frame -------------------------------------------


def test_points_predict_in_the_displayed_frame(tmp_path):
    torch.manual_seed(0)
    plain = tmp_path / "plain.png"
    Image.fromarray(np.ascontiguousarray(SHOWN[6][1])).save(plain)
    train = [plain] * 3
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_y=lambda p: [(10.0, 20.0)],
        splitter=lambda items: ([0, 1], [2]),
        item_tfms=Resize(32),
    )
    dls = dblock.dataloaders(train, bs=3, num_workers=0, device="cpu")
    learn = vision_learner(dls, "resnet18", pretrained=False, y_range=(-1, 1))
    expected = learn.predict(plain)[0]
    assert ((expected >= 0) & (expected <= torch.tensor([32.0, 48.0]))).all()
    for fmt in ("PNG", "WEBP"):  # lossless: the same displayed pixels as plain.png
        file = tmp_path / f"turned.{fmt.lower()}"
        file.write_bytes(_encoded(fmt, 6))
        assert torch.allclose(learn.predict(file)[0], expected, atol=1e-4), fmt


# --- check on empty input, python -m --------------------------------------------------------


def test_check_fails_on_a_folder_with_no_images(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    result = CliRunner().invoke(app, ["check", "--images", str(empty)])
    assert result.exit_code == 1
    assert f"no images in {empty}" in result.stderr and "no problems" not in result.stdout


def test_check_fails_on_a_csv_with_no_rows(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_encoded("JPEG", 1))
    (tmp_path / "labels.csv").write_text("fname,labels\n")
    args = ["check", "--images", str(tmp_path), "--csv", str(tmp_path / "labels.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "has a header but no rows" in result.stderr and "no problems" not in result.stdout


def test_python_dash_m_runs_the_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "runtime")])}
    run = [sys.executable, "-m", "imageblocks"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert "python -m imageblocks" in helped.stdout and "check" in helped.stdout
    checked = subprocess.run(
        [*run, "check", "--images", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert checked.returncode == 1 and "error: no images in" in checked.stderr, checked.stderr
