"""Every cell of the book's chapter 6, run with `from imageblocks.all import *` on small demo data.

Sizes are small for speed; each assertion is what the book shows for that cell.
"""

from __future__ import annotations

import matplotlib.figure
import pytest

from imageblocks.all import *  # noqa: F403  (the book's import)
from imageblocks.demodata import make_demo_multilabel, make_demo_points


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """A data home holding small demo datasets where untar_data looks for them."""
    home = tmp_path_factory.mktemp("ibhome")
    make_demo_multilabel(home / "data" / "demo_multilabel", n_images=240, seed=1)
    make_demo_points(home / "data" / "demo_points", n_persons=14, frames_per_person=4, seed=1)
    return home


@pytest.fixture
def home(demo_home, monkeypatch):
    monkeypatch.setenv("IMAGEBLOCKS_HOME", str(demo_home))
    return demo_home


def test_multilabel_chapter(home):
    torch.manual_seed(0)
    path = untar_data(URLs.DEMO_MULTILABEL)
    df = pd.read_csv(path / "train.csv")
    assert list(df.columns) == ["fname", "labels", "is_valid"]
    assert df.iloc[:, 0].equals(df["fname"]) and df.iloc[0]["fname"] == df["fname"][0]

    dblock = DataBlock()
    dsets = dblock.datasets(df)
    assert (len(dsets.train), len(dsets.valid)) == (
        len(df) - int(0.2 * len(df)),
        int(0.2 * len(df)),
    )
    x, y = dsets.train[0]
    assert x["fname"] == y["fname"]

    dblock = DataBlock(get_x=lambda r: r["fname"], get_y=lambda r: r["labels"])
    assert isinstance(dblock.datasets(df).train[0][0], str)

    def get_x(r):
        return path / "train" / r["fname"]

    def get_y(r):
        return r["labels"].split(" ")

    dblock = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), get_x=get_x, get_y=get_y)
    dsets = dblock.datasets(df)
    img, target = dsets.train[0]
    assert repr(img).startswith("PILImage mode=RGB size=")
    idxs = torch.where(dsets.train[0][1] == 1.0)[0]
    assert list(dsets.train.vocab[idxs]) == sorted(
        lab for lab in get_y(dsets.train.items[0]) if lab
    )
    assert list(dsets.train.vocab) == sorted(dsets.train.vocab)
    with pytest.raises(CollateError):
        dblock.summary(df)

    def splitter(df):
        train = df.index[~df["is_valid"]].tolist()
        valid = df.index[df["is_valid"]].tolist()
        return train, valid

    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=splitter,
        get_x=get_x,
        get_y=get_y,
        item_tfms=RandomResizedCrop(64, min_scale=0.35),
    )
    dsets = dblock.datasets(df)
    assert len(dsets.valid) == int(df["is_valid"].sum())
    dls = dblock.dataloaders(df, bs=16)
    assert isinstance(dls.show_batch(nrows=1, ncols=3), matplotlib.figure.Figure)
    n_classes = len(dls.vocab)

    learn = vision_learner(dls, "efficientnet_lite0")
    x, y = to_cpu(dls.train.one_batch())
    activs = learn.model.cpu()(x)
    assert activs.shape == (16, n_classes) and y.shape == (16, n_classes)

    def binary_cross_entropy(inputs, targets):
        inputs = inputs.sigmoid()
        return -torch.where(targets == 1, inputs, 1 - inputs).log().mean()

    loss = nn.BCEWithLogitsLoss()(activs, y)
    assert torch.allclose(binary_cross_entropy(activs, y), loss, atol=1e-5)
    assert repr(dls.loss_func) == "FlattenedLoss of BCEWithLogitsLoss()"

    def say_hello(name, say_what="Hello"):
        return f"{say_what} {name}."

    assert partial(say_hello, say_what="Bonjour")("Jeremy") == "Bonjour Jeremy."

    learn = vision_learner(dls, "efficientnet_lite0", metrics=partial(accuracy_multi, thresh=0.2))
    before = learn.validate()[0]
    learn.fine_tune(2, base_lr=3e-3, freeze_epochs=2)
    assert len(learn.recorder.values) == 2  # the last fit's epochs
    after = learn.validate()
    assert after[0] < before, "the validation loss falls with training"
    assert 0 <= after[1] <= 1
    learn.metrics = partial(accuracy_multi, thresh=0.1)
    low = learn.validate()[1]
    learn.metrics = partial(accuracy_multi, thresh=0.99)
    high = learn.validate()[1]
    assert 0 <= low <= 1 and 0 <= high <= 1
    preds, targs = learn.get_preds()
    assert preds.shape == targs.shape and preds.min() >= 0 and preds.max() <= 1
    assert float(accuracy_multi(preds, targs, thresh=0.99, sigmoid=False)) == pytest.approx(
        high, abs=1e-6
    )
    xs = torch.linspace(0.05, 0.95, 29)
    accs = [accuracy_multi(preds, targs, thresh=i, sigmoid=False) for i in xs]
    plt.plot(xs, accs)
    assert len(accs) == 29 and all(0 <= a <= 1 for a in accs)
    assert isinstance(learn.show_results(max_n=4), matplotlib.figure.Figure)


def test_keypoints_chapter(home):
    torch.manual_seed(0)
    path = untar_data(URLs.DEMO_POINTS)
    Path.BASE_PATH = path
    try:
        listing = path.ls().sorted()
        assert repr(listing).startswith("(#28) [Path('01'),Path('01.obj'),Path('02')")
        assert "Path('01/rgb.cal')" in repr((path / "01").ls().sorted())
        img_files = get_image_files(path)

        def img2pose(x):
            return Path(f"{str(x)[:-7]}pose.txt")

        assert img2pose(img_files[0]).exists()
        im = PILImage.create(img_files[0])
        assert im.shape == (480, 640) and im.to_thumb(160).size == (160, 120)
        cal = np.genfromtxt(path / "01" / "rgb.cal", skip_footer=6)
        assert cal.shape == (3, 3) and cal[0][0] == pytest.approx(517.679)

        def get_ctr(f):
            ctr = np.genfromtxt(img2pose(f), skip_header=3)
            c1 = ctr[0] * cal[0][0] / ctr[2] + cal[0][2]
            c2 = ctr[1] * cal[1][1] / ctr[2] + cal[1][2]
            return tensor([c1, c2])

        assert get_ctr(img_files[0]).shape == (2,)
        assert img_files[0].parent.name == "01"
    finally:
        Path.BASE_PATH = None

    biwi = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_items=get_image_files,
        get_y=get_ctr,
        splitter=FuncSplitter(lambda o: o.parent.name == "13"),
        batch_tfms=[*aug_transforms(size=(60, 80)), Normalize.from_stats(*imagenet_stats)],
    )
    dls = biwi.dataloaders(path, bs=8)
    assert len(dls.valid.dataset) == 4
    assert isinstance(dls.show_batch(max_n=9, figsize=(8, 6)), matplotlib.figure.Figure)
    xb, yb = dls.one_batch()
    assert xb.shape == (8, 3, 60, 80) and yb.shape == (8, 1, 2)
    assert yb.abs().max() <= 1.5  # rotation/zoom can push a point a little outside the frame

    learn = vision_learner(dls, "efficientnet_lite0", y_range=(-1, 1))

    def sigmoid_range(x, lo, hi):
        return torch.sigmoid(x) * (hi - lo) + lo

    assert isinstance(
        plot_function(partial(sigmoid_range, lo=-1, hi=1), min=-4, max=4), matplotlib.figure.Figure
    )
    assert repr(dls.loss_func) == "FlattenedLoss of MSELoss()"
    suggestions = learn.lr_find(num_it=20, suggest_funcs=(minimum, steep, valley))
    assert len(suggestions) == 3 and all(
        1e-8 <= s <= 10 for s in suggestions
    )  # minimum: lr at the lowest loss / 10
    assert suggestions._fields == ("minimum", "steep", "valley")
    lr = 1e-2
    learn.fine_tune(1, lr)
    preds, targs = learn.get_preds()
    assert preds.shape == targs.shape == (4, 1, 2)
    assert preds.min() >= -1 and preds.max() <= 1, "y_range keeps points inside the image"
    assert isinstance(
        learn.show_results(ds_idx=1, nrows=2, figsize=(6, 8)), matplotlib.figure.Figure
    )
