"""Interpretation: per-class numbers against scikit-learn, confusions, top losses, label issues,
and key-point errors in the original images' pixels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torch import nn

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import CategoryBlock, ImageBlock, MultiCategoryBlock, PointBlock
from imageblocks.data.splitters import ColSplitter
from imageblocks.learn.interpret import (
    ClassificationInterpretation,
    MultiLabelInterpretation,
    PointsInterpretation,
)
from imageblocks.learn.learner import Learner
from imageblocks.learn.pixels import source_half_sizes
from imageblocks.recipes.reports import points_metrics
from imageblocks.transforms.item import Resize

COLOURS = {"blue": (30, 60, 255), "green": (20, 230, 40), "red": (255, 30, 30)}
SIZE = 32


def tiny_model(n_out: int) -> nn.Sequential:
    """A body of two full-resolution convolutions and a max-pooling linear head."""
    body = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
    )
    head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, n_out))
    return nn.Sequential(body, head)


def colour_squares(root, n: int = 120, single: bool = False, seed: int = 0) -> pd.DataFrame:
    """Grey noise images holding coloured 8x8 squares; labels: the colours present (`single`:
    exactly one square). Columns fname, labels, x, y (the last square's corner), is_valid."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        arr = rng.integers(90, 150, (SIZE, SIZE, 3), dtype=np.uint8)
        names = [str(rng.choice(list(COLOURS)))] if single else [
            c for c in COLOURS if rng.random() < 0.5
        ]  # fmt: skip
        x = y = 0
        for c in names:
            x, y = (int(v) for v in rng.integers(0, SIZE - 8, 2))
            arr[y : y + 8, x : x + 8] = COLOURS[c]
        Image.fromarray(arr).save(root / f"{i:03d}.png")
        rows.append((f"{i:03d}.png", " ".join(names), x, y, i % 3 == 0))
    return pd.DataFrame(rows, columns=["fname", "labels", "x", "y", "is_valid"])


def train_colours(root, single: bool, flip: int | None = None) -> tuple[Learner, pd.DataFrame]:
    """A tiny model trained to name the squares' colours; `flip`: drop the labels of that
    validation row (a labelling mistake for `label_issues` to find)."""
    torch.manual_seed(0)
    df = colour_squares(root, single=single)
    if flip is not None:
        df.loc[flip, "labels"] = ""
    dblock = DataBlock(
        blocks=(ImageBlock, CategoryBlock if single else MultiCategoryBlock),
        splitter=ColSplitter(),
        get_x=lambda r: root / r["fname"],
        get_y=(lambda r: r["labels"]) if single else (lambda r: r["labels"].split(" ")),
    )
    dls = dblock.dataloaders(df, bs=16, num_workers=0)
    learn = Learner(dls, tiny_model(len(dls.vocab)), precision="fp32")
    learn.fit_one_cycle(12, 3e-2)
    return learn, df


FLIPPED = 3  # a validation row (is_valid: i % 3 == 0) whose square colours get no label


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    df = colour_squares(root)
    assert df.loc[FLIPPED, "is_valid"] and df.loc[FLIPPED, "labels"]
    learn, flipped = train_colours(root, single=False, flip=FLIPPED)
    learn.tune_thresholds()
    return learn, flipped, root, df.loc[FLIPPED, "labels"].split()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return train_colours(tmp_path_factory.mktemp("single"), single=True)


def test_multilabel_per_class_table_matches_scikit_learn(multilabel):
    learn = multilabel[0]
    interp = MultiLabelInterpretation.from_learner(learn)
    probs, targs = learn.get_preds()
    thresholds = learn.thresholds.numpy()
    hard = (probs.numpy() > thresholds).astype(int)
    y = targs.numpy().astype(int)
    table = interp.per_class()
    assert list(table.index) == ["blue", "green", "red"]
    assert table["support"].tolist() == y.sum(0).tolist()
    assert table["predicted"].tolist() == hard.sum(0).tolist()
    for col, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = fn(y, hard, average=None, zero_division=0)
        assert table[col].to_numpy() == pytest.approx(expected, abs=1e-6), col
    for c in range(3):
        ap = average_precision_score(y[:, c], probs[:, c].numpy())
        assert table["ap"].iloc[c] == pytest.approx(ap, abs=1e-5)
    assert table["threshold"].to_numpy() == pytest.approx(thresholds)
    assert (table["ap"] > 0.9).all(), f"the tiny model did not learn the colours:\n{table}"
    np.testing.assert_array_equal(interp.confusion_matrix(), multilabel_confusion_matrix(y, hard))


def test_a_class_without_positive_has_no_average_precision(multilabel):
    learn = multilabel[0]
    raw = torch.tensor([[5.0, -5.0, 5.0], [-5.0, -5.0, 5.0]])
    targs = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    table = MultiLabelInterpretation(learn, learn.dls.valid, raw, targs).per_class()
    assert np.isnan(table.loc["green", "ap"]) and table.loc["green", "support"] == 0
    assert table.loc["red", "ap"] == pytest.approx(1.0)


def test_most_confused_counts_false_positives_by_true_label(multilabel):
    learn = multilabel[0]
    # vocab blue, green, red; logits of +-5 decide the same at any threshold of the grid
    picks = [[1, 0, 1], [1, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1]]
    truth = [[0, 0, 1], [0, 1, 1], [0, 0, 0], [0, 1, 0], [1, 0, 1]]
    raw = torch.tensor(picks, dtype=torch.float32) * 10 - 5
    targs = torch.tensor(truth, dtype=torch.float32)
    interp = MultiLabelInterpretation(learn, learn.dls.valid, raw, targs)
    assert interp.most_confused() == [
        ("red", "blue", 2),
        ("(none)", "green", 1),
        ("green", "blue", 1),
    ]
    assert interp.most_confused(min_val=2) == [("red", "blue", 2)]


def test_label_issues_csv_lists_the_flipped_item(multilabel, tmp_path):
    learn, df, root, colours = multilabel
    interp = MultiLabelInterpretation.from_learner(learn)
    csv = tmp_path / "relabel.csv"
    issues = interp.label_issues(k=5, confidence=0.8, fname=csv)
    written = pd.read_csv(csv, keep_default_na=False)
    assert list(written.columns) == ["item", "labels", "predicted", "loss", "missing", "extra"]
    assert written["item"].tolist() == issues["item"].tolist()
    flipped = str(root / df.loc[FLIPPED, "fname"])
    assert flipped in written["item"].tolist()
    row = written[written["item"] == flipped].iloc[0]
    assert row["labels"] == "(none)" and sorted(row["missing"].split()) == sorted(colours)
    assert written["loss"].is_monotonic_decreasing
    # its loss is among the highest of the validation set
    k = len(interp.losses) // 10
    top = interp.top_losses(k)
    valid_names = interp.item_names(top.indices)
    assert flipped in valid_names and top.values[0] == interp.losses.max()


def test_plot_top_losses_shows_truth_prediction_and_loss(multilabel):
    learn = multilabel[0]
    interp = MultiLabelInterpretation.from_learner(learn)
    fig = interp.plot_top_losses(4)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 4
    values, idxs = interp.top_losses(4)
    for title, i, v in zip(titles, idxs.tolist(), values.tolist()):
        assert title == f"{interp.truth(i)}\n{interp.guess(i)}\nloss {v:.2f}"
    smallest = interp.top_losses(3, largest=False).values
    assert (smallest <= values.min()).all()


def test_single_label_interpretation_matches_scikit_learn(single):
    learn, _ = single
    interp = ClassificationInterpretation.from_learner(learn)
    probs, targs = learn.get_preds()
    y, p = targs.numpy(), probs.argmax(1).numpy()
    cm = interp.confusion_matrix()
    np.testing.assert_array_equal(cm, sk_confusion_matrix(y, p, labels=[0, 1, 2]))
    table = interp.per_class()
    for col, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = fn(y, p, average=None, labels=[0, 1, 2], zero_division=0)
        assert table[col].to_numpy() == pytest.approx(expected, abs=1e-6), col
    for c in range(3):
        ap = average_precision_score(y == c, probs[:, c].numpy())
        assert table["ap"].iloc[c] == pytest.approx(ap, abs=1e-5)
    assert (np.diag(cm).sum() / cm.sum()) > 0.9, f"the tiny model did not learn:\n{cm}"
    off = [(interp.vocab[a], interp.vocab[b], int(cm[a, b])) for a, b in zip(*np.nonzero(cm))]
    assert sorted(interp.most_confused()) == sorted(o for o in off if o[0] != o[1])
    fig = interp.plot_confusion_matrix()
    assert [t.get_text() for t in fig.axes[0].texts] == [str(v) for v in cm.flatten()]


def test_single_label_most_confused_on_a_crafted_case(single):
    learn, _ = single
    raw = torch.eye(3)[[0, 0, 1, 1, 1, 2]] * 8  # predicted blue, blue, green x3, red
    targs = torch.tensor([0, 2, 0, 0, 1, 2])  # actual blue, red, blue, blue, green, red
    interp = ClassificationInterpretation(learn, learn.dls.valid, raw, targs)
    assert interp.most_confused() == [("blue", "green", 2), ("red", "blue", 1)]
    issues = interp.label_issues(confidence=0.9)
    assert issues["labels"].tolist() == ["red", "blue", "blue"]
    assert issues["missing"].tolist() == ["blue", "green", "green"]


def test_the_wrong_interpretation_for_the_task_is_refused(multilabel, single):
    with pytest.raises(ValueError, match="ClassificationInterpretation"):
        MultiLabelInterpretation.from_learner(single[0])
    with pytest.raises(ValueError, match="MultiLabelInterpretation"):
        ClassificationInterpretation.from_learner(multilabel[0])
    with pytest.raises(ValueError, match="needs a points model"):
        PointsInterpretation.from_learner(multilabel[0])


def test_points_errors_are_in_the_original_images_pixels(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    items = []
    for i, (w, h) in enumerate([(64, 48), (48, 64), (80, 40), (40, 40)] * 3):
        cx, cy = w / 2 + rng.uniform(-8, 8), h / 2 + rng.uniform(-8, 8)
        arr = np.zeros((h, w, 3), np.uint8)
        arr[int(cy) - 3 : int(cy) + 3, int(cx) - 3 : int(cx) + 3] = 255
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        items.append((tmp_path / f"{i}.png", (cx, cy), i % 2 == 0))
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_x=lambda o: o[0],
        get_y=lambda o: [o[1]],
        splitter=lambda its: ([i for i, o in enumerate(its) if not o[2]], [
            i for i, o in enumerate(its) if o[2]
        ]),
        item_tfms=Resize(24),
    )  # fmt: skip
    dls = dblock.dataloaders(items, bs=4, num_workers=0)
    learn = Learner(dls, tiny_model(2), precision="fp32")
    learn.fast_predict = False
    interp = PointsInterpretation.from_learner(learn)
    valid = [o for o in items if o[2]]
    # each error is the distance, in the original image, from `predict`'s point to the truth
    for i, (path, (cx, cy), _) in enumerate(valid):
        pix = learn.predict(path)[0][0]
        expected = float(torch.dist(pix.float(), torch.tensor([cx, cy])))
        assert float(interp.errors[i]) == pytest.approx(expected, rel=1e-3, abs=1e-3)
    stats = interp.error_stats()
    e = interp.point_errors.flatten().numpy()
    assert stats["mean"] == pytest.approx(e.mean(), rel=1e-5)
    assert stats["median"] == pytest.approx(np.median(e), rel=1e-5)
    assert stats["p90"] == pytest.approx(np.percentile(e, 90), rel=1e-5)
    assert stats["n_points"] == len(valid)
    assert stats["mean"] == pytest.approx(points_metrics(learn)["pixel_error"], abs=1e-3)
    assert source_half_sizes(learn.dls.valid) is not None
    values, idxs = interp.top_losses(3)
    assert values.tolist() == sorted(interp.errors.tolist(), reverse=True)[:3]
    fig = interp.plot_top_losses(3)
    assert [ax.get_title() for ax in fig.axes if ax.images] == [f"{v:.1f} px" for v in values]
    assert len(interp.plot_errors().axes[0].lines) == 3
