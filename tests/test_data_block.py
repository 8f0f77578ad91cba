"""The book's data cells: DataBlock, Datasets, DataLoaders, splitters, summary."""

from __future__ import annotations

import string
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import (
    CategoryBlock,
    ImageBlock,
    MultiCategoryBlock,
    PointBlock,
    RegressionBlock,
    Task,
    TransformBlock,
    task_of,
)
from imageblocks.data.datasets import Datasets
from imageblocks.data.loaders import DataLoader, DataLoaders
from imageblocks.data.splitters import (
    ColSplitter,
    FuncSplitter,
    GrandparentSplitter,
    IndexSplitter,
    ParentSplitter,
    RandomSplitter,
)
from imageblocks.errors import CollateError, ItemError
from imageblocks.image import PILImage
from imageblocks.lists import first
from imageblocks.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, MSELossFlat
from imageblocks.paths import Path
from imageblocks.transforms.item import RandomResizedCrop, Resize
from imageblocks.transforms.normalize import Normalize
from tests.conftest import voc_block


def _getters(path):
    def get_x(r):
        return path / "train" / r["fname"]

    def get_y(r):
        return r["labels"].split(" ")

    return get_x, get_y


def _splitter(df):
    return df.index[~df["is_valid"]].tolist(), df.index[df["is_valid"]].tolist()


def test_empty_datablock_splits_80_20_and_returns_rows(voc):
    df = pd.read_csv(voc / "train.csv")
    dsets = DataBlock().datasets(df)
    assert (len(dsets.train), len(dsets.valid)) == (20, 4)
    x, y = dsets.train[0]
    assert isinstance(x, pd.Series) and x["fname"] == y["fname"]
    again = DataBlock().datasets(df)
    assert again.splits == dsets.splits  # seeded by default


def test_book_split_sizes_on_real_voc_labels():
    # the real VOC 2007 label list and split
    df = pd.read_csv(Path(__file__).parent / "data" / "voc2007_train.csv")
    dsets = DataBlock().datasets(df)
    assert (len(dsets.train), len(dsets.valid)) == (4009, 1002)
    dsets = DataBlock(splitter=_splitter, get_y=lambda r: r["labels"]).datasets(df)
    assert (len(dsets.train), len(dsets.valid)) == (2501, 2510)


def test_lambdas_and_functions_as_getters(voc):
    df = pd.read_csv(voc / "train.csv")
    dsets = DataBlock(get_x=lambda r: r["fname"], get_y=lambda r: r["labels"]).datasets(df)
    x, y = dsets.train[0]
    assert isinstance(x, str) and x.endswith(".jpg") and isinstance(y, str)
    get_x, get_y = _getters(voc)
    x, y = DataBlock(get_x=get_x, get_y=get_y).datasets(df).train[0]
    assert isinstance(x, Path) and x.exists() and isinstance(y, list)


def test_multicategory_sorted_vocab_one_hot_and_empty_labels(voc):
    df = pd.read_csv(voc / "train.csv")
    get_x, get_y = _getters(voc)
    dsets = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), get_x=get_x, get_y=get_y).datasets(
        df
    )
    img, y = dsets.train[0]
    assert isinstance(img, PILImage) and repr(img).startswith("PILImage mode=RGB size=")
    vocab = dsets.train.vocab
    assert list(vocab) == sorted(vocab) and repr(vocab).startswith("['")
    assert y.dtype == torch.float32 and y.shape == (len(vocab),)
    idxs = torch.where(y == 1.0)[0]
    assert list(vocab[idxs]) == sorted(get_y(dsets.train.items[0]) if y.sum() else [])
    empties = [i for i, r in enumerate(dsets.train.items) if r["labels"] == ""]
    assert empties, "fixture has images with no label"
    assert dsets.train[empties[0]][1].sum() == 0


def test_label_outside_vocab_names_item(voc):
    df = pd.read_csv(voc / "train.csv")
    df.loc[1, "labels"] = "unicorn"  # row 1 is in the validation split
    get_x, get_y = _getters(voc)
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock), splitter=_splitter, get_x=get_x, get_y=get_y
    )
    dsets = dblock.datasets(df)
    with pytest.raises(ItemError, match=r"row 1 .*'unicorn' is not in the vocab"):
        dsets.valid[0]


def test_dataloaders_batch_shapes_and_types(voc):
    df = pd.read_csv(voc / "train.csv")
    get_x, get_y = _getters(voc)
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=_splitter,
        get_x=get_x,
        get_y=get_y,
        item_tfms=RandomResizedCrop(128, min_scale=0.35),
    )
    dls = dblock.dataloaders(df, bs=4, num_workers=0, device="cpu")
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 128, 128) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert y.shape == (4, len(dls.vocab)) and set(y.unique().tolist()) <= {0.0, 1.0}
    assert len(dls.train) == 3 and len(dls.valid) == 3
    seen = sum(len(b[0]) for b in dls.valid)
    assert seen == 12


def test_workers_give_the_same_validation_batches(voc):
    df = pd.read_csv(voc / "train.csv")
    get_x, get_y = _getters(voc)
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=_splitter,
        get_x=get_x,
        get_y=get_y,
        item_tfms=Resize(64),
    )
    one = [b[0] for b in dblock.dataloaders(df, bs=4, num_workers=0, device="cpu").valid]
    two = [b[0] for b in dblock.dataloaders(df, bs=4, num_workers=2, device="cpu").valid]
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_summary_explains_collate_failure(voc, capsys):
    df = pd.read_csv(voc / "train.csv")
    get_x, get_y = _getters(voc)
    dblock = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), get_x=get_x, get_y=get_y)
    with pytest.raises(CollateError):
        dblock.summary(df)
    out = capsys.readouterr().out
    assert "Found 24 items" in out and "2 datasets of sizes 20,4" in out
    assert "applying get_y gives" in out and "OneHotEncode" in out
    assert "[3, 375, 500]" in out and "[3, 333, 500]" in out
    assert "Resize(" in out and "RandomResizedCrop(" in out


def test_summary_walks_a_working_pipeline(voc, capsys):
    df = pd.read_csv(voc / "train.csv")
    get_x, get_y = _getters(voc)
    DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=_splitter,
        get_x=get_x,
        get_y=get_y,
        item_tfms=RandomResizedCrop(128, min_scale=0.35),
    ).summary(df)
    out = capsys.readouterr().out
    assert "2 datasets of sizes 12,12" in out
    assert "size 4x3x128x128" in out and "Applying batch_tfms" in out


def test_points_scaled_to_unit_range(biwi):
    from imageblocks.data.sources import get_image_files

    cal = np.genfromtxt(biwi / "01" / "rgb.cal", skip_footer=6)

    def img2pose(x):
        return Path(f"{str(x)[:-7]}pose.txt")

    def get_ctr(f):
        ctr = np.genfromtxt(img2pose(f), skip_header=3)
        return torch.tensor(
            [ctr[0] * cal[0][0] / ctr[2] + cal[0][2], ctr[1] * cal[1][1] / ctr[2] + cal[1][2]]
        )

    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_items=get_image_files,
        get_y=get_ctr,
        splitter=FuncSplitter(lambda o: o.parent.name == "13"),
    )
    dsets = dblock.datasets(biwi)
    assert (len(dsets.train), len(dsets.valid)) == (26, 2)
    img, pt = dsets.train[0]
    assert img.shape == (480, 640) and pt.shape == (1, 2)
    dls = dblock.dataloaders(biwi, bs=4, num_workers=0, device="cpu")
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 480, 640) and yb.shape == (4, 1, 2)
    assert yb.abs().max() <= 1
    _, yv = dls.valid.one_batch()  # validation is not shuffled: item order is kept
    expected = dsets.valid[0][1] / torch.tensor([640, 480]) * 2 - 1
    assert torch.allclose(yv[0], expected, atol=1e-5)
    assert dls.c == 2


def test_splitters():
    items = list(range(10))
    train, valid = RandomSplitter(0.3, seed=1)(items)
    assert len(valid) == 3 and sorted(train + valid) == items
    assert RandomSplitter(0.3, seed=1)(items) == (train, valid)
    assert IndexSplitter([1, 5])(items) == ([0, 2, 3, 4, 6, 7, 8, 9], [1, 5])
    assert FuncSplitter(lambda o: o % 2 == 0)(items)[1] == [0, 2, 4, 6, 8]
    df = pd.DataFrame({"a": range(4), "is_valid": [True, False, "True", 0]})
    assert ColSplitter()(df) == ([1, 3], [0, 2])
    with pytest.raises(KeyError, match="no column 'valid'"):
        ColSplitter("valid")(df)
    paths = [Path("/d/train/cat/1.jpg"), Path("/d/valid/cat/2.jpg"), Path("/d/train/dog/3.jpg")]
    assert GrandparentSplitter()(paths) == ([0, 2], [1])


def test_plain_function_splitter_and_empty_training_split(voc):
    df = pd.read_csv(voc / "train.csv")
    dsets = DataBlock(splitter=lambda d: (list(range(5)), list(range(5, 8)))).datasets(df)
    assert (len(dsets.train), len(dsets.valid)) == (5, 3)
    with pytest.raises(ValueError, match="no item in the training set"):
        DataBlock(splitter=lambda d: ([], list(range(24)))).datasets(df)


def test_category_and_regression_blocks():
    items = [("a", 1.5), ("b", 2.0), ("a", 0.5), ("c", 3.0)]
    dsets = DataBlock(
        blocks=(CategoryBlock, RegressionBlock),
        get_x=lambda o: o[0],
        get_y=lambda o: o[1],
        splitter=IndexSplitter([3]),
    ).datasets(items)
    assert list(dsets.vocab) is not None
    x, y = dsets.train[1]
    assert x.item() == 1 and y.dtype == torch.float32 and y.item() == 2.0
    with pytest.raises(ItemError, match="'c' is not in the vocab"):
        dsets.valid[0]


def test_mid_level_api_from_the_book():
    a = list(enumerate(string.ascii_lowercase))
    torch.manual_seed(0)
    dl_a = DataLoader(a, batch_size=8, shuffle=True)
    b = first(dl_a)
    assert b[0].shape == (8,) and len(b[1]) == 8
    assert [string.ascii_lowercase[i] for i in b[0].tolist()] == list(b[1])

    def f1(o):
        return o + "a"

    def f2(o):
        return o + "b"

    letters = list(string.ascii_lowercase)
    assert Datasets(letters)[0] == ("a",)
    dss = Datasets(letters, [[f1], [f2]])
    assert dss[0] == ("aa", "ab")
    dls = DataLoaders.from_dsets(dss, batch_size=4)
    xb, yb = first(dls.train)
    assert len(xb) == 4 and all(
        x[0] == y[0] and x[1] == "a" and y[1] == "b" for x, y in zip(xb, yb)
    )


def test_transform_block_default_is_identity():
    assert TransformBlock().encode(3) == 3
    assert partial  # the book's partial is re-exported by all.py (checked in test_all)


@pytest.mark.parametrize(
    "block, task, loss",
    [
        (MultiCategoryBlock(), Task.MULTILABEL, BCEWithLogitsLossFlat),
        (CategoryBlock(), Task.CATEGORY, CrossEntropyLossFlat),
        (PointBlock(), Task.POINTS, MSELossFlat),
        (RegressionBlock(), Task.REGRESSION, MSELossFlat),
    ],
)
def test_each_target_block_knows_its_task_and_its_loss(block, task, loss):
    assert task_of(block) is task and type(block).task is task
    assert type(block.loss()) is loss
    assert block.loss() is not block.loss()  # a fresh loss each time: no state shared
    assert str(task) == f"{task}" == task.value  # the strings config.json already uses
    assert task_of(type("Custom", (type(block),), {})()) is task  # subclasses inherit it


def test_blocks_that_are_no_target_have_no_task_and_no_loss():
    for block in (None, ImageBlock(), TransformBlock()):
        assert task_of(block) is None
    assert ImageBlock().loss() is None and TransformBlock().loss() is None
    assert [t.value for t in Task] == ["multilabel", "category", "points", "regression"]


def test_dataloaders_carry_target_block_transforms_and_outputs(voc):
    df, dblock = voc_block(voc, Resize(32))
    dblock.batch_tfms = [Normalize.from_stats([0.5] * 3, [0.25] * 3)]
    dls = dblock.dataloaders(df, bs=4, num_workers=0, device="cpu")
    assert isinstance(dls.target_block, MultiCategoryBlock)
    assert task_of(dls.target_block) is Task.MULTILABEL
    assert dls.target_block.vocab == dls.vocab and dls.c == len(dls.vocab)
    assert dls.item_tfms == dblock.item_tfms and dls.batch_tfms == dblock.batch_tfms
    assert dls.draft == (32, 32)
    assert repr(dls.loss_func) == "FlattenedLoss of BCEWithLogitsLoss()"
    assert not hasattr(dls, "block_info")


def test_test_dl_uses_the_input_pipeline_and_the_validation_transforms(voc):
    df, dblock = voc_block(voc, RandomResizedCrop(32, min_scale=0.5))
    dls = dblock.dataloaders(df, bs=4, num_workers=0, device="cpu")
    files = [voc / "train" / f for f in df["fname"][:5]]
    test = dls.test_dl(files)
    assert test.bs == dls.valid.bs and not test.train and len(test.dataset) == 5
    (xb,) = test.one_batch()
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32
    assert torch.equal(xb, test.one_batch()[0])  # validation transforms: no random crop
    xl, yl = dls.test_dl(df.iloc[:3], bs=2, with_labels=True).one_batch()
    assert xl.shape == (2, 3, 32, 32) and yl.shape == (2, len(dls.vocab))
    assert torch.equal(yl, torch.stack([dls.valid.dataset.dsets[i][1] for i in range(2)]))


def test_test_dl_needs_dataloaders_built_by_a_datablock():
    dls = DataLoaders.from_dsets(Datasets(list("abcd")), batch_size=2)
    with pytest.raises(ValueError, match="built by a DataBlock"):
        dls.test_dl(["a"])


def test_vocab_blocks_build_their_vocab_from_the_training_values():
    cat = CategoryBlock(sort=False, add_na=True)
    cat.setup(["dog", "cat", "dog"])
    assert list(cat.vocab) == ["#na#", "dog", "cat"]
    cat = CategoryBlock()
    cat.setup(["dog", "cat", "dog"])
    assert list(cat.vocab) == ["cat", "dog"]
    given = CategoryBlock(vocab=["b", "a"])
    given.setup(["z"])
    assert list(given.vocab) == ["b", "a"]
    multi = MultiCategoryBlock(add_na=True)
    multi.setup(["dog cat", "", "bird"])
    assert list(multi.vocab) == ["#na#", "bird", "cat", "dog"]
    encoded = MultiCategoryBlock(encoded=True, add_na=True)
    encoded.setup([[0, 1, 0]])
    assert list(encoded.vocab) == ["0", "1", "2"]


def test_parent_and_grandparent_splitters_read_their_folder():
    items = ["train/a/x.jpg", "valid/b/y.jpg", "train/c/z.jpg", "other/a/w.jpg"]
    assert GrandparentSplitter()(items) == ([0, 2], [1])
    assert ParentSplitter("a", "b")(items) == ([0, 3], [1])


def test_normalize_decode_undoes_it():
    norm = Normalize([0.5, 0.25], [0.5, 2.0])
    x, pts = torch.rand(2, 2, 3, 3), torch.rand(2, 4, 2)
    y, same = norm((x, pts), ("image", "points"))
    assert same is pts
    assert torch.allclose(y[:, 1], (x[:, 1] - 0.25) / 2.0)
    back, _ = norm.decode((y, pts), ("image", "points"))
    assert torch.allclose(back, x, atol=1e-6)
