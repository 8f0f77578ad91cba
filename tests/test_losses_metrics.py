"""Losses and metrics: the book's definitions, reprs, and agreement with scikit-learn."""

import math
from functools import partial

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score
from torch import nn

from imageblocks.learn.metrics import (
    APScoreMulti,
    F1ScoreMulti,
    PrecisionMulti,
    RecallMulti,
    accuracy,
    accuracy_multi,
    error_rate,
    mae,
    mean_average_precision,
    metric_name,
    mse,
    pixel_error,
    rmse,
)
from imageblocks.losses import (
    BCEWithLogitsLossFlat,
    CrossEntropyLossFlat,
    L1LossFlat,
    MSELossFlat,
    binary_cross_entropy,
    loss_from_config,
)


def _multilabel(n: int = 64, c: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits loosely correlated with random multi-hot targets."""
    g = torch.Generator().manual_seed(seed)
    targs = (torch.rand(n, c, generator=g) < 0.3).float()
    logits = torch.randn(n, c, generator=g) + 1.5 * (targs - 0.5)
    return logits, targs


# --- losses -----------------------------------------------------------------------------------


def test_loss_reprs_match_the_book():
    assert repr(MSELossFlat()) == "FlattenedLoss of MSELoss()"
    assert repr(BCEWithLogitsLossFlat()) == "FlattenedLoss of BCEWithLogitsLoss()"
    assert repr(CrossEntropyLossFlat()) == "FlattenedLoss of CrossEntropyLoss()"
    assert repr(L1LossFlat()) == "FlattenedLoss of L1Loss()"


def test_book_binary_cross_entropy_equals_torch():
    logits, targs = _multilabel()
    ours = binary_cross_entropy(logits, targs)
    assert torch.allclose(ours, nn.BCEWithLogitsLoss()(logits, targs), atol=1e-5)


def test_bce_flat_loss_activation_decodes():
    logits, targs = _multilabel()
    loss = BCEWithLogitsLossFlat(thresh=0.3)
    assert torch.allclose(loss(logits, targs.long()), nn.BCEWithLogitsLoss()(logits, targs))
    probs = loss.activation(logits)
    assert torch.allclose(probs, logits.sigmoid())
    assert torch.equal(loss.decodes(probs), probs > 0.3)
    assert loss.per_item(logits, targs).shape == (64,)
    assert loss.reduction == "mean"


def test_bce_flat_pos_weight_broadcasts_per_class():
    logits, targs = _multilabel()
    pw = torch.linspace(0.5, 3, 6)
    ours = BCEWithLogitsLossFlat(pos_weight=pw)(logits, targs)
    assert torch.allclose(ours, nn.BCEWithLogitsLoss(pos_weight=pw)(logits, targs))


def test_cross_entropy_flat():
    g = torch.Generator().manual_seed(1)
    logits, targs = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    loss = CrossEntropyLossFlat()
    assert torch.allclose(loss(logits, targs), nn.CrossEntropyLoss()(logits, targs))
    assert torch.allclose(loss.activation(logits).sum(-1), torch.ones(8))
    assert torch.equal(loss.decodes(logits), logits.argmax(-1))


def test_mse_flat_accepts_points_against_flat_predictions():
    g = torch.Generator().manual_seed(2)
    preds, targs = torch.randn(4, 2, generator=g), torch.randn(4, 1, 2, generator=g)
    loss = MSELossFlat()
    assert torch.allclose(loss(preds, targs), ((preds - targs.view(4, 2)) ** 2).mean())
    assert torch.equal(loss.activation(preds), preds) and torch.equal(loss.decodes(preds), preds)
    assert torch.allclose(L1LossFlat()(preds, targs), (preds - targs.view(4, 2)).abs().mean())


def test_loss_config_round_trip():
    loss = loss_from_config(BCEWithLogitsLossFlat(thresh=0.2).config())
    assert isinstance(loss, BCEWithLogitsLossFlat) and loss.thresh == 0.2
    assert isinstance(loss_from_config(MSELossFlat().config()), MSELossFlat)


# --- accuracy -----------------------------------------------------------------------------------


def test_accuracy_multi_hand_computed():
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.7, 0.4]])
    targs = torch.tensor([[1, 0, 0], [0, 1, 1]])
    # thresh 0.5 -> [[1,0,1],[0,1,0]]: 4 of 6 right
    assert accuracy_multi(probs, targs, sigmoid=False).item() == pytest.approx(4 / 6)
    # thresh 0.3 -> [[1,0,1],[0,1,1]]: 5 of 6 right
    assert accuracy_multi(probs, targs, thresh=0.3, sigmoid=False).item() == pytest.approx(5 / 6)
    logits = torch.logit(probs)
    assert accuracy_multi(logits, targs).item() == pytest.approx(4 / 6)
    assert partial(accuracy_multi, thresh=0.3)(logits, targs).item() == pytest.approx(5 / 6)


def test_accuracy_multi_thresholds_differ_as_in_the_book():
    logits, targs = _multilabel()
    low = partial(accuracy_multi, thresh=0.1)(logits, targs)
    high = partial(accuracy_multi, thresh=0.99)(logits, targs)
    # a very low threshold predicts almost every class; a very high one almost none
    assert low.item() == pytest.approx(((logits.sigmoid() > 0.1) == targs.bool()).float().mean())
    assert high.item() == pytest.approx(1 - targs.mean().item(), abs=0.05)
    assert low != high


def test_accuracy_and_error_rate():
    logits = torch.tensor([[2.0, 0.1], [0.3, 0.9], [1.0, 0.0], [0.0, 5.0]])
    targs = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, targs).item() == pytest.approx(0.75)
    assert error_rate(logits, targs).item() == pytest.approx(0.25)


# --- regression ---------------------------------------------------------------------------------


def test_regression_metrics_hand_values():
    preds = torch.tensor([[0.0, 0.5], [1.0, -1.0]])
    targs = torch.tensor([[[0.0, 0.0]], [[0.0, -1.0]]])  # (B, 1, 2) like the book's points
    assert mse(preds, targs).item() == pytest.approx((0.25 + 1) / 4)
    assert rmse(preds, targs).item() == pytest.approx(math.sqrt(1.25 / 4))
    assert mae(preds, targs).item() == pytest.approx(1.5 / 4)
    with pytest.raises(ValueError):
        mse(torch.zeros(2, 3), targs)


def test_pixel_error():
    preds = torch.tensor([[0.1, 0.0]])
    targs = torch.tensor([[[0.0, 0.2]]])
    # 0.1 of a half-width of 160 px is 16 px; 0.2 of a half-height of 120 px is 24 px
    assert pixel_error(preds, targs, (320, 240)).item() == pytest.approx(math.hypot(16, 24))
    assert pixel_error(preds, targs, 100).item() == pytest.approx(math.hypot(5, 10))


# --- multi-label F1 / precision / recall / mAP ---------------------------------------------------


@pytest.mark.parametrize("average", ["macro", "micro"])
@pytest.mark.parametrize(
    "metric,reference",
    [(F1ScoreMulti, f1_score), (PrecisionMulti, precision_score), (RecallMulti, recall_score)],
)
def test_thresholded_multilabel_metrics_match_sklearn(metric, reference, average):
    logits, targs = _multilabel()
    thresh = 0.4
    ours = metric(thresh=thresh, average=average)(logits, targs).item()
    hard = (logits.sigmoid() > thresh).int().numpy()
    expected = reference(targs.int().numpy(), hard, average=average, zero_division=0)
    assert ours == pytest.approx(expected, abs=1e-6)
    probs = logits.sigmoid()
    assert metric(thresh=thresh, sigmoid=False, average=average)(probs, targs).item() == (
        pytest.approx(expected, abs=1e-6)
    )


def test_f1_with_an_empty_class_is_finite():
    logits, targs = _multilabel()
    targs[:, 2] = 0
    logits[:, 2] = -10  # never predicted either
    value = F1ScoreMulti(average="macro")(logits, targs)
    assert torch.isfinite(value)
    expected = f1_score(
        targs.int().numpy(), (logits > 0).int().numpy(), average="macro", zero_division=0
    )
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_map_matches_sklearn_over_classes_with_positives():
    logits, targs = _multilabel(n=80, c=7, seed=3)
    targs[:, 4] = 0  # a class absent from this validation set
    value = mean_average_precision(logits, targs)
    assert torch.isfinite(value)
    has_pos = targs.sum(0) > 0
    y, s = targs[:, has_pos].numpy(), logits[:, has_pos].numpy()
    assert value.item() == pytest.approx(average_precision_score(y, s, average="macro"), abs=1e-5)
    assert APScoreMulti()(logits, targs).item() == pytest.approx(value.item())
    # micro pools every (sample, class) pair, the empty class's negatives included
    micro = APScoreMulti(average="micro")(logits, targs).item()
    expected = average_precision_score(targs.numpy(), logits.numpy(), average="micro")
    assert micro == pytest.approx(expected, abs=1e-5)


def test_map_perfect_and_random():
    g = torch.Generator().manual_seed(4)
    targs = (torch.rand(400, 5, generator=g) < 0.3).float()
    assert mean_average_precision(targs * 10 - 5, targs).item() == pytest.approx(1.0)
    random = mean_average_precision(torch.randn(400, 5, generator=g), targs).item()
    assert random == pytest.approx(targs.mean().item(), abs=0.08)  # chance = positive rate


def test_map_no_positive_at_all_warns_not_nan():
    with pytest.warns(UserWarning):
        value = mean_average_precision(torch.randn(5, 3), torch.zeros(5, 3))
    assert value.item() == 0


def test_metric_names():
    assert metric_name(accuracy_multi) == "accuracy_multi"
    assert metric_name(partial(accuracy_multi, thresh=0.2)) == "accuracy_multi"
    assert metric_name(F1ScoreMulti(average="macro")) == "f1_score_multi_macro"
    assert metric_name(PrecisionMulti(average="micro")) == "precision_multi_micro"
    assert metric_name(RecallMulti()) == "recall_multi_macro"
    assert metric_name(APScoreMulti()) == "ap_score_multi_macro"
    assert metric_name(partial(pixel_error, size=(320, 240))) == "pixel_error"

    class HammingScore:
        def __call__(self, p, t):
            return p

    assert metric_name(HammingScore()) == "hamming_score"


def test_metrics_return_scalar_tensors():
    logits, targs = _multilabel()
    for m in [accuracy_multi, F1ScoreMulti(), PrecisionMulti(), RecallMulti(), APScoreMulti()]:
        out = m(logits, targs)
        assert isinstance(out, torch.Tensor) and out.ndim == 0
    assert np.isfinite(rmse(logits, targs).item())
