"""End to end: tiny models on tiny generated data learn what an untrained model cannot."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, MultiCategoryBlock, PointBlock
from imageblocks.data.splitters import ColSplitter
from imageblocks.learn.callbacks import Callback
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.metrics import accuracy_multi, mean_average_precision, pixel_error
from imageblocks.learn.optimizer import decay_groups, set_group_hypers
from imageblocks.transforms.item import Resize
from tests.conftest import voc_block


def _shapes_dataset(root, n: int = 96, size: int = 48, seed: int = 0) -> pd.DataFrame:
    """Images holding a square, a disk, both or neither; labels by shape, colours random."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = Image.fromarray(rng.integers(60, 200, (size, size, 3), dtype=np.uint8))
        d = ImageDraw.Draw(img)
        labels = [name for name in ("square", "disk") if rng.random() < 0.5]
        for name in labels:
            r = int(rng.integers(7, 11))
            x, y = rng.integers(r, size - r, 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (d.rectangle if name == "square" else d.ellipse)(
                [x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0), width=2
            )
        img.save(root / f"{i:03d}.png")
        rows.append((f"{i:03d}.png", " ".join(labels), i % 3 == 0))
    return pd.DataFrame(rows, columns=["fname", "labels", "is_valid"])


def test_multilabel_model_learns_shapes(tmp_path):
    torch.manual_seed(0)
    df = _shapes_dataset(tmp_path)
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=ColSplitter(),
        get_x=lambda r: tmp_path / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
        item_tfms=Resize(48),
    )
    dls = dblock.dataloaders(df, bs=16, num_workers=0)
    learn = vision_learner(dls, "efficientnet_lite0", metrics=partial(accuracy_multi, thresh=0.5))
    preds, targs = learn.get_preds()
    untrained = float(mean_average_precision(preds, targs, sigmoid=False))
    loss_before = learn.validate()[0]
    learn.fine_tune(2, base_lr=1e-2, freeze_epochs=2)
    preds, targs = learn.get_preds()
    trained = float(mean_average_precision(preds, targs, sigmoid=False))
    assert trained >= 0.9 and trained > untrained + 0.2
    assert learn.validate()[0] < loss_before

    export = learn.export(tmp_path / "model")
    again = load_learner(export)
    img = tmp_path / df["fname"][0]
    a, b = learn.predict(img), again.predict(img)
    assert list(a[0]) == list(b[0]) and torch.allclose(a[2], b[2], atol=1e-5)


def _blob_dataset(root, n: int = 320, w: int = 48, h: int = 48, r: int = 6, seed: int = 0) -> list:
    """One bright square per image at a random place: the key point is its centre."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        arr[int(cy) - r : int(cy) + r, int(cx) - r : int(cx) + r] = 255
        Image.fromarray(arr).save(root / f"{i:03d}.png")
        items.append((root / f"{i:03d}.png", (int(cx), int(cy)), i % 4 == 0))
    return items


def test_point_model_finds_the_blob(tmp_path):
    torch.manual_seed(0)
    items = _blob_dataset(tmp_path)
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_x=lambda o: o[0],
        get_y=lambda o: o[1],
        splitter=lambda its: (
            [i for i, o in enumerate(its) if not o[2]],
            [i for i, o in enumerate(its) if o[2]],
        ),
    )
    dls = dblock.dataloaders(items, bs=16, num_workers=0)
    learn = vision_learner(dls, "resnet18", pretrained=False, y_range=(-1, 1))
    preds, targs = learn.get_preds()
    centre = pixel_error(torch.zeros_like(targs), targs, (48, 48))
    learn.fit_one_cycle(10, 1e-2)
    preds, targs = learn.get_preds()
    err = pixel_error(preds, targs, (48, 48))
    assert err < 0.5 * centre, (
        f"pixel error {err:.1f} vs {centre:.1f} for always guessing the centre"
    )
    pix, rel, _ = learn.predict(items[0][0])
    assert pix.shape == (1, 2) and 0 <= pix[0, 0] <= 48 and 0 <= pix[0, 1] <= 48
    assert torch.allclose(pix, (rel + 1) / 2 * 48)


@pytest.mark.parametrize("precision", ["bf16"])
def test_mixed_precision_trains(tmp_path, precision):
    torch.manual_seed(0)
    items = _blob_dataset(tmp_path, n=32)
    dblock = DataBlock(blocks=(ImageBlock, PointBlock), get_x=lambda o: o[0], get_y=lambda o: o[1])
    dls = dblock.dataloaders(items, bs=8, num_workers=0)
    learn = vision_learner(dls, "resnet18", pretrained=False, y_range=(-1, 1)).to_bf16()
    learn.fit_one_cycle(1, 1e-3)
    assert np.isfinite(learn.recorder.values[-1][1])


class _DecaySeen(Callback):
    """Records the optimiser and the weight decay of its decaying groups when a fit starts."""

    def __init__(self) -> None:
        self.opts: list = []
        self.wds: set[float] = set()

    def before_fit(self, learn) -> None:
        self.opts.append(learn.opt)
        self.wds |= {g["weight_decay"] for g in learn.opt.param_groups if g["decay"]}


@pytest.mark.parametrize(
    "train",
    [
        lambda learn, cbs: learn.fit(1, 1e-3, wd=0.5, cbs=cbs),
        lambda learn, cbs: learn.fit_one_cycle(1, 1e-3, wd=0.5, cbs=cbs),
        lambda learn, cbs: learn.fine_tune(1, 1e-3, freeze_epochs=1, wd=0.5, cbs=cbs),
    ],
    ids=["fit", "fit_one_cycle", "fine_tune"],
)
def test_wd_holds_for_that_fit_only_and_keeps_the_optimiser_state(voc, train):
    torch.manual_seed(0)
    df, dblock = voc_block(voc, Resize(32))
    learn = vision_learner(
        dblock.dataloaders(df, bs=4, num_workers=0), "resnet18", pretrained=False
    )
    head_weight = learn.layer_groups()[-1][-1]
    learn.fit(1, 1e-3)
    opt, steps_before = learn.opt, int(learn.opt.state[head_weight]["step"])
    seen = _DecaySeen()
    train(learn, [seen])
    assert seen.wds == {0.5} and all(o is opt for o in seen.opts)  # the fit used wd=0.5
    assert learn.wd == 1e-2 and learn.opt is opt  # nothing overwritten, nothing rebuilt
    assert {g["weight_decay"] for g in opt.param_groups if g["decay"]} == {1e-2}
    assert int(opt.state[head_weight]["step"]) > steps_before  # Adam's moments carried on


def test_norm_layers_and_biases_do_not_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = decay_groups(model, [list(model.parameters())], wd=0.1)
    decays = {id(p): g["decay"] for g in groups for p in g["params"]}
    assert decays == {
        id(model[0].weight): True,
        id(model[0].bias): False,
        id(model[1].weight): False,
        id(model[1].bias): False,
        id(model[3].weight): True,
        id(model[3].bias): False,
    }
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_group_hypers(opt, [1e-3], mom=0.9)
    assert all(g["lr"] == 1e-3 and g["betas"][0] == 0.9 for g in opt.param_groups)
