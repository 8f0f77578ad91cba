"""Threshold tuning: the book's sweep, per-class choices, learner integration and export."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, MultiCategoryBlock, PointBlock
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.metrics import F1ScoreMulti, accuracy_multi
from imageblocks.learn.thresholds import ThresholdReport, default_grid, tune_thresholds
from imageblocks.transforms.item import Resize

GRID = torch.linspace(0.05, 0.95, 29)


def _fake_learner(vocab: list[str], n_valid: int) -> SimpleNamespace:
    """Just what `tune_thresholds` reads when the predictions are passed in."""
    dls = SimpleNamespace(
        target_block=MultiCategoryBlock(vocab=vocab),
        valid=SimpleNamespace(dataset=[None] * n_valid),
    )
    return SimpleNamespace(dls=dls, thresholds=None)


@pytest.fixture
def separable():
    """Class a: positives at 0.3, negatives at 0.1; b: 0.8 vs 0.6; c: never positive."""
    probs = torch.tensor(
        [
            [0.3, 0.8, 0.02],
            [0.3, 0.6, 0.02],
            [0.1, 0.8, 0.02],
            [0.1, 0.6, 0.02],
            [0.3, 0.6, 0.02],
            [0.1, 0.8, 0.02],
        ]
    )
    targs = torch.tensor(
        [[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32
    )
    return probs, targs


def test_default_grid_is_the_books():
    assert torch.equal(default_grid(), GRID)


def test_per_class_thresholds_separate_each_class(separable):
    probs, targs = separable
    learn = _fake_learner(["a", "b", "c"], len(probs))
    report = tune_thresholds(learn, preds=(probs, targs))
    a, b, c = report.per_class
    # every threshold in [0.1, 0.3) separates class a: the one nearest 0.5 is kept
    assert a == pytest.approx(float(GRID[GRID < 0.3].max()))
    assert b == pytest.approx(float(GRID[GRID >= 0.6].min()))
    assert c == pytest.approx(report.global_thresh)  # no positive: the global threshold
    assert report.classes_without_positive == ["c"]
    assert report.score_per_class == pytest.approx(1.0)
    assert report.gain == pytest.approx(1.0 - report.score_at_0_5) and report.gain > 0
    assert torch.allclose(learn.thresholds, torch.tensor([a, b, c]))
    # the global curve is micro F1, the same number the metrics module computes
    xs, ys = report.curve
    assert xs == pytest.approx(GRID.tolist()) and len(ys) == 29
    k = xs.index(pytest.approx(report.global_thresh))
    f1 = F1ScoreMulti(thresh=report.global_thresh, sigmoid=False, average="micro")(probs, targs)
    assert ys[k] == pytest.approx(float(f1)) == pytest.approx(report.score_global)
    assert max(ys) == pytest.approx(report.score_global)


def test_global_threshold_only(separable):
    probs, targs = separable
    learn = _fake_learner(["a", "b", "c"], len(probs))
    report = tune_thresholds(learn, per_class=False, preds=(probs, targs))
    assert report.per_class is None and report.score_per_class is None
    assert report.gain == pytest.approx(report.score_global - report.score_at_0_5)
    assert torch.equal(learn.thresholds, torch.full((3,), report.global_thresh))


def test_accuracy_curve_is_accuracy_multi(separable):
    probs, targs = separable
    learn = _fake_learner(["a", "b", "c"], len(probs))
    report = tune_thresholds(learn, metric="accuracy", per_class=False, preds=(probs, targs))
    for x, y in zip(*report.curve):
        assert y == pytest.approx(float(accuracy_multi(probs, targs, thresh=x, sigmoid=False)))
    assert report.score_at_0_5 == pytest.approx(
        float(accuracy_multi(probs, targs, thresh=0.5, sigmoid=False))
    )


def test_custom_grid_and_bad_arguments(separable):
    probs, targs = separable
    learn = _fake_learner(["a", "b", "c"], len(probs))
    report = tune_thresholds(learn, grid=[0.2, 0.5, 0.7], preds=(probs, targs))
    assert report.curve[0] == pytest.approx([0.2, 0.5, 0.7])
    with pytest.raises(ValueError, match="metric"):
        tune_thresholds(learn, metric="auc", preds=(probs, targs))
    with pytest.raises(ValueError, match="between 0 and 1"):
        tune_thresholds(learn, grid=[0.0, 1.5], preds=(probs, targs))
    with pytest.raises(ValueError, match="not probabilities"):
        tune_thresholds(learn, preds=(probs * 4 - 2, targs))
    points = SimpleNamespace(dls=SimpleNamespace(target_block=PointBlock()))
    with pytest.raises(ValueError, match="multi-label"):
        tune_thresholds(points)


def test_plot_marks_the_chosen_threshold(separable):
    import matplotlib.figure

    probs, targs = separable
    report = tune_thresholds(_fake_learner(["a", "b", "c"], 6), preds=(probs, targs))
    fig = report.plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    marked = [
        line
        for line in fig.axes[0].lines
        if len(line.get_xdata()) == 1
        and line.get_xdata()[0] == pytest.approx(report.global_thresh)
        and line.get_ydata()[0] == pytest.approx(report.score_global)
    ]
    assert marked
    d = report.as_dict()
    assert d["per_class"] == {
        k: pytest.approx(v, abs=1e-4) for k, v in zip("abc", report.per_class)
    }
    assert isinstance(report, ThresholdReport)


def test_learner_uses_and_exports_tuned_thresholds(voc, tmp_path):
    torch.manual_seed(0)
    df = pd.read_csv(voc / "train.csv")
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        get_x=lambda r: voc / "train" / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
        item_tfms=Resize(32),
    )
    dls = dblock.dataloaders(df, bs=8, num_workers=0)
    learn = vision_learner(dls, "resnet18", pretrained=False)
    report = tune_thresholds(learn)
    assert report.n_valid == len(dls.valid.dataset)
    assert learn.thresholds.shape == (len(dls.vocab),)
    probs, _ = learn.get_preds()
    assert torch.equal(learn.decode_preds(probs), probs > learn.thresholds)

    f = voc / "train" / df["fname"][0]
    labels, mask, p = learn.predict(f)
    assert torch.equal(mask, p > learn.thresholds)
    loaded = load_learner(learn.export(tmp_path / "model"))
    assert torch.allclose(loaded.thresholds, learn.thresholds)
    assert list(loaded.predict(f)[0]) == list(labels)
