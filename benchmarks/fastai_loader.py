"""fastai's side of the loader benchmark; run with the fastai virtualenv's Python.

Prints one JSON line: images/s through one training epoch of each recipe (the book's code).
"""

import json
import sys
import time

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import (
    DataBlock,
    FuncSplitter,
    ImageBlock,
    MultiCategoryBlock,
    Normalize,
    Path,
    PointBlock,
    RandomResizedCrop,
    aug_transforms,
    get_image_files,
    imagenet_stats,
    tensor,
)


def epoch_rate(dl, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        n, t0 = 0, time.perf_counter()
        for xb, _yb in dl:
            n += len(xb)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def main(pascal: str, biwi: str, workers: int, bs: int, epochs: int) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = Path(pascal)
    df = pd.read_csv(path / "train.csv")

    def get_x(r):
        return path / "train" / r["fname"]

    def get_y(r):
        return r["labels"].split(" ")

    def splitter(df):
        return df.index[~df["is_valid"]].tolist(), df.index[df["is_valid"]].tolist()

    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=splitter,
        get_x=get_x,
        get_y=get_y,
        item_tfms=RandomResizedCrop(128, min_scale=0.35),
    )
    df["labels"] = df["labels"].fillna("")
    dls = dblock.dataloaders(df, bs=bs, num_workers=workers, device="cpu")
    out = {
        "multilabel": epoch_rate(dls.train, epochs),
        "multilabel_valid": epoch_rate(dls.valid, epochs),
    }

    bpath = Path(biwi)
    cal = np.genfromtxt(bpath / "01" / "rgb.cal", skip_footer=6)

    def img2pose(x):
        return Path(f"{str(x)[:-7]}pose.txt")

    def get_ctr(f):
        ctr = np.genfromtxt(img2pose(f), skip_header=3)
        c1 = ctr[0] * cal[0][0] / ctr[2] + cal[0][2]
        c2 = ctr[1] * cal[1][1] / ctr[2] + cal[1][2]
        return tensor([c1, c2])

    biwi_block = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_items=get_image_files,
        get_y=get_ctr,
        splitter=FuncSplitter(lambda o: o.parent.name == "13"),
        batch_tfms=[*aug_transforms(size=(240, 320)), Normalize.from_stats(*imagenet_stats)],
    )
    dls = biwi_block.dataloaders(bpath, bs=bs, num_workers=workers, device="cpu")
    out["points"] = epoch_rate(dls.train, epochs)
    out["points_valid"] = epoch_rate(dls.valid, epochs)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
