"""Shared fixtures: tiny generated datasets in the real on-disk formats."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imageblocks.paths import Path

CLASSES = ["car", "cat", "dog", "person"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own IMAGEBLOCKS_HOME and no network for downloads."""
    monkeypatch.setenv("IMAGEBLOCKS_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def voc(tmp_path) -> Path:
    """A 24-image pascal_2007-style folder: train.csv (fname,labels,is_valid) + train/*.jpg."""
    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    rows = []
    for i in range(24):
        w, h = ((500, 375), (500, 333), (375, 500))[i % 3]
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "train" / f"{i:06d}.jpg", quality=85)
        labels = " ".join(rng.choice(CLASSES, size=int(rng.integers(0, 3)), replace=False))
        rows.append((f"{i:06d}.jpg", labels, bool(i % 2)))
    pd.DataFrame(rows, columns=["fname", "labels", "is_valid"]).to_csv(
        tmp_path / "train.csv", index=False
    )
    return Path(tmp_path)


def blob_image(w: int, h: int, cx: float, cy: float, r: int = 6) -> Image.Image:
    """A dark image with one bright square centred at pixel (cx, cy)."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[int(cy) - r : int(cy) + r, int(cx) - r : int(cx) + r] = 255
    return Image.fromarray(arr)


@pytest.fixture
def biwi(tmp_path) -> Path:
    """A biwi_head_pose-style folder: persons 01..14, frame_XXXXX_rgb.jpg + _pose.txt + rgb.cal."""
    rng = np.random.default_rng(1)
    cal = (
        "517.679 0 320 \n0 517.679 240.5 \n0 0 1 \n\n0 0 0 0 \n\n1 0 0 \n0 1 0 \n0 0 1 \n\n0 0 0 \n"
    )
    for person in range(1, 15):
        d = tmp_path / f"{person:02d}"
        d.mkdir()
        (d / "rgb.cal").write_text(cal)
        for f in range(3, 5):
            x, y, z = rng.uniform(-120, 120), rng.uniform(-90, 90), rng.uniform(800, 1000)
            cx, cy = x * 517.679 / z + 320, y * 517.679 / z + 240.5
            blob_image(640, 480, cx, cy, r=20).save(d / f"frame_{f:05d}_rgb.jpg", quality=95)
            rot = "1 0 0 \n0 1 0 \n0 0 1 \n"
            (d / f"frame_{f:05d}_pose.txt").write_text(rot + f"{x} {y} {z} \n")
    return Path(tmp_path)


def voc_block(voc: Path, item_tfms) -> tuple[pd.DataFrame, object]:
    """The `voc` fixture's train.csv and the book's multi-label DataBlock over it."""
    from imageblocks.data.block import DataBlock
    from imageblocks.data.blocks import ImageBlock, MultiCategoryBlock
    from imageblocks.data.splitters import ColSplitter

    df = pd.read_csv(voc / "train.csv", keep_default_na=False)
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=ColSplitter(),
        get_x=lambda r: voc / "train" / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
        item_tfms=item_tfms,
    )
    return df, dblock


def noise_voc(root: Path) -> Path:
    """`root` with 8 noise JPEGs in train/ and a VOC-style train.csv (labels car/cat/dog)."""
    (root / "train").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        arr = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "train" / f"{i}.jpg")
        rows.append((f"{i}.jpg", ["car", "cat dog", "dog", "car cat"][i % 4], i % 4 == 3))
    pd.DataFrame(rows, columns=["fname", "labels", "is_valid"]).to_csv(
        root / "train.csv", index=False
    )
    return root
