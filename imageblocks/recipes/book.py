"""The book's two chapter-6 recipes on the demo datasets, as plain functions the CLI, the
benchmarks and the docs share: multi-label (PASCAL-style) and key points (BIWI-style)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, MultiCategoryBlock, PointBlock
from imageblocks.data.loaders import DataLoaders
from imageblocks.data.sources import URLs, get_image_files, untar_data
from imageblocks.data.splitters import FuncSplitter
from imageblocks.paths import Path
from imageblocks.transforms.batch import aug_transforms
from imageblocks.transforms.item import RandomResizedCrop
from imageblocks.transforms.normalize import Normalize, imagenet_stats


class MultiLabelGetters:
    """The book's `get_x`/`get_y` for a pascal_2007-style folder (picklable, no lambda)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def get_x(self, r: pd.Series) -> Path:
        """The image path of a CSV row."""
        return self.path / "train" / r["fname"]

    def get_y(self, r: pd.Series) -> list[str]:
        """The labels of a CSV row."""
        return r["labels"].split(" ")


def valid_split(df: pd.DataFrame) -> tuple[list[int], list[int]]:
    """The book's splitter: the `is_valid` column."""
    return df.index[~df["is_valid"]].tolist(), df.index[df["is_valid"]].tolist()


def multilabel_block(path: Path, size: int = 128, min_scale: float = 0.35) -> DataBlock:
    """The book's PASCAL DataBlock."""
    g = MultiLabelGetters(path)
    return DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=valid_split,
        get_x=g.get_x,
        get_y=g.get_y,
        item_tfms=RandomResizedCrop(size, min_scale=min_scale),
    )


class HeadCentre:
    """The book's `get_ctr` for a biwi_head_pose-style folder: the head centre in pixels."""

    def __init__(self, path: Path):
        self.cal = np.genfromtxt(Path(path) / "01" / "rgb.cal", skip_footer=6)

    @staticmethod
    def img2pose(x: Any) -> Path:
        """The pose file of an image file."""
        return Path(f"{str(x)[:-7]}pose.txt")

    def __call__(self, f: Any) -> torch.Tensor:
        ctr = np.genfromtxt(self.img2pose(f), skip_header=3)
        c1 = ctr[0] * self.cal[0][0] / ctr[2] + self.cal[0][2]
        c2 = ctr[1] * self.cal[1][1] / ctr[2] + self.cal[1][2]
        return torch.tensor([c1, c2])


def is_person_13(o: Any) -> bool:
    """The book's validation split: every image of person 13."""
    return o.parent.name == "13"


def points_block(path: Path, size: tuple[int, int] = (240, 320)) -> DataBlock:
    """The book's BIWI DataBlock."""
    return DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_items=get_image_files,
        get_y=HeadCentre(path),
        splitter=FuncSplitter(is_person_13),
        batch_tfms=[*aug_transforms(size=size), Normalize.from_stats(*imagenet_stats)],
    )


def demo_dataloaders(bs: int = 64, **kwargs: Any) -> tuple[DataLoaders, DataLoaders, Path, Path]:
    """DataLoaders of both demo datasets (generated on first use)."""
    pascal = untar_data(URLs.DEMO_MULTILABEL)
    biwi = untar_data(URLs.DEMO_POINTS)
    df = pd.read_csv(pascal / "train.csv")
    dls_multi = multilabel_block(pascal).dataloaders(df, bs=bs, **kwargs)
    dls_points = points_block(biwi).dataloaders(biwi, bs=bs, **kwargs)
    return dls_multi, dls_points, pascal, biwi
