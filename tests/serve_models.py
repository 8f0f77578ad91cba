"""Tiny exported models and test images for the HTTP service's tests (untrained, 32 px)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, MultiCategoryBlock, PointBlock
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.transforms.item import Resize

VOCAB = ["car", "cat", "dog"]


def write_images(folder: Path, n: int = 6) -> list[Path]:
    """`n` small noise JPEGs (48x40) plus a PNG, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(arr).save(paths[-1], quality=90)
    paths.append(folder / "blob.png")
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[10:22, 40:52] = 255
    Image.fromarray(arr).save(paths[-1])
    return paths


def export_multilabel(images: list[Path], out: Path) -> Path:
    """An untrained multi-label resnet18 over VOCAB, exported to `out`."""
    labels = ["cat dog", "car", "", "dog", "car cat", ""]
    df = pd.DataFrame({"path": [str(p) for p in images[:6]], "labels": labels})
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        get_x=lambda r: r["path"],
        get_y=lambda r: r["labels"].split(),
        item_tfms=Resize(32),
    )
    learn = vision_learner(
        dblock.dataloaders(df, bs=3, num_workers=0), "resnet18", pretrained=False
    )
    return learn.export(out)


def export_points(images: list[Path], out: Path) -> Path:
    """An untrained one-point resnet18 (y_range -1..1), exported to `out`."""
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_y=lambda p: torch.tensor([20.0, 15.0]),
        item_tfms=Resize(32),
    )
    dls = dblock.dataloaders([str(p) for p in images[:6]], bs=3, num_workers=0)
    return vision_learner(dls, "resnet18", pretrained=False, y_range=(-1, 1)).export(out)


def with_thresholds(model_dir: Path, out: Path, per_class: list[float]) -> Path:
    """The export `model_dir` exported again to `out` with these per-class thresholds (in its
    config and baked into its model.onnx)."""
    learn = load_learner(model_dir, "cpu")
    learn.thresholds = torch.tensor(per_class, dtype=torch.float32)
    return learn.export(out)


def png_declaring(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header declares `width` x `height` pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)
