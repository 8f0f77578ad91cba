"""Metrics: plain callables `metric(preds, targs) -> scalar tensor` on the whole validation set.

The Learner concatenates the raw model outputs (logits) and the targets of every validation batch
and calls each metric once, so a metric sees the full set and needs no accumulation. Its column
header in the epoch table is `metric_name(metric)`.

Multi-label F1, precision, recall and average precision come from torchmetrics; only the
metrics the book defines itself (`accuracy_multi`) are written out here.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
)

from imageblocks.utils import callable_name, unwrap_partial

__all__ = [
    "accuracy_multi",
    "accuracy",
    "error_rate",
    "mse",
    "rmse",
    "mae",
    "F1ScoreMulti",
    "PrecisionMulti",
    "RecallMulti",
    "APScoreMulti",
    "mean_average_precision",
    "pixel_error",
    "metric_name",
]

Average = Literal["macro", "micro"]


def accuracy_multi(inp: Tensor, targ: Tensor, thresh: float = 0.5, sigmoid: bool = True) -> Tensor:
    """Fraction of (sample, class) decisions right when `inp` is thresholded at `thresh`."""
    if sigmoid:
        inp = inp.sigmoid()
    return ((inp > thresh) == targ.bool()).float().mean()


def accuracy(inp: Tensor, targ: Tensor, axis: int = -1) -> Tensor:
    """Fraction of samples whose highest-scoring class on `axis` is the target."""
    pred = inp.argmax(dim=axis)
    return (pred.reshape(-1) == targ.reshape(-1)).float().mean()


def error_rate(inp: Tensor, targ: Tensor, axis: int = -1) -> Tensor:
    """1 - accuracy."""
    return 1 - accuracy(inp, targ, axis=axis)


def _flat_pair(pred: Tensor, targ: Tensor) -> tuple[Tensor, Tensor]:
    """(B, n, 2) targets and (B, 2n) predictions both as float (B, -1)."""
    pred, targ = pred.reshape(len(pred), -1).float(), targ.reshape(len(targ), -1).float()
    if pred.shape != targ.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(targ.shape)} differ")
    return pred, targ


def mse(pred: Tensor, targ: Tensor) -> Tensor:
    """Mean squared error."""
    return F.mse_loss(*_flat_pair(pred, targ))


def rmse(pred: Tensor, targ: Tensor) -> Tensor:
    """Root mean squared error."""
    return mse(pred, targ).sqrt()


def mae(pred: Tensor, targ: Tensor) -> Tensor:
    """Mean absolute error."""
    return F.l1_loss(*_flat_pair(pred, targ))


def pixel_error(pred: Tensor, targ: Tensor, size: int | Sequence[int]) -> Tensor:
    """Mean distance in pixels between points in [-1, 1] coords of an image of `size` (w, h)."""
    w, h = (size, size) if isinstance(size, int) else size
    pred, targ = _flat_pair(pred, targ)
    half = torch.tensor([w / 2, h / 2], device=pred.device)
    diff = (pred - targ).reshape(len(pred), -1, 2) * half
    return diff.norm(dim=-1).mean()


class _MultiLabelMetric:
    """Base for thresholded multi-label metrics computed by torchmetrics."""

    label = ""
    _fn: Callable[..., Tensor]

    def __init__(
        self,
        thresh: float = 0.5,
        sigmoid: bool = True,
        average: Average = "macro",
        zero_division: float = 0.0,
    ):
        if average not in ("macro", "micro"):
            raise ValueError(f"average must be 'macro' or 'micro', not {average!r}")
        self.thresh, self.sigmoid, self.average = thresh, sigmoid, average
        self.zero_division = zero_division
        self.__name__ = f"{self.label}_{average}"

    @property
    def name(self) -> str:
        """Column header in the epoch table."""
        return self.__name__

    def __call__(self, preds: Tensor, targs: Tensor) -> Tensor:
        if self.sigmoid:
            preds = preds.sigmoid()
        # Binarise here, with the same `>` as accuracy_multi, so torchmetrics never guesses
        # whether float inputs are logits or probabilities.
        hard = (preds > self.thresh).long()
        return self._fn(
            hard,
            targs.long(),
            num_labels=preds.shape[-1],
            average=self.average,
            zero_division=self.zero_division,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(thresh={self.thresh}, sigmoid={self.sigmoid}, "
            f"average={self.average!r})"
        )


class F1ScoreMulti(_MultiLabelMetric):
    """Multi-label F1; a class never true nor predicted scores `zero_division` (0) in the mean."""

    label = "f1_score_multi"
    _fn = staticmethod(multilabel_f1_score)


class PrecisionMulti(_MultiLabelMetric):
    """Multi-label precision; a class never predicted scores `zero_division` (0)."""

    label = "precision_multi"
    _fn = staticmethod(multilabel_precision)


class RecallMulti(_MultiLabelMetric):
    """Multi-label recall; a class with no positive scores `zero_division` (0)."""

    label = "recall_multi"
    _fn = staticmethod(multilabel_recall)


def mean_average_precision(
    preds: Tensor, targs: Tensor, sigmoid: bool = True, average: Average = "macro"
) -> Tensor:
    """mAP: per-class average precision averaged over the classes with at least one positive."""
    device = preds.device
    # Float64 keeps very confident logits from saturating to tied probabilities (on the CPU,
    # as not every accelerator has float64; ranking the whole set there is cheap).
    scores = preds.detach().cpu().double()
    scores = scores.sigmoid() if sigmoid else scores
    targs = targs.detach().cpu().long()
    has_pos = targs.sum(0) > 0
    if not has_pos.any():
        warnings.warn(
            "no class has a positive target: mean average precision is set to 0", stacklevel=2
        )
        return torch.zeros((), device=device)
    if average == "micro":
        res = multilabel_average_precision(
            scores, targs, num_labels=targs.shape[-1], average="micro"
        )
    elif average == "macro":
        scores, targs = scores[:, has_pos], targs[:, has_pos]
        per_class = multilabel_average_precision(
            scores, targs, num_labels=targs.shape[-1], average="none"
        )
        res = per_class.mean()
    else:
        raise ValueError(f"average must be 'macro' or 'micro', not {average!r}")
    return res.float().to(device)


class APScoreMulti:
    """Average precision metric for `metrics=[...]`; macro skips classes with no positive."""

    def __init__(self, average: Average = "macro", sigmoid: bool = True):
        if average not in ("macro", "micro"):
            raise ValueError(f"average must be 'macro' or 'micro', not {average!r}")
        self.average, self.sigmoid = average, sigmoid
        self.__name__ = f"ap_score_multi_{average}"

    @property
    def name(self) -> str:
        """Column header in the epoch table."""
        return self.__name__

    def __call__(self, preds: Tensor, targs: Tensor) -> Tensor:
        return mean_average_precision(preds, targs, sigmoid=self.sigmoid, average=self.average)

    def __repr__(self) -> str:
        return f"APScoreMulti(average={self.average!r}, sigmoid={self.sigmoid})"


def _snake(name: str) -> str:
    """CamelCase to snake_case."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def metric_name(m: Callable) -> str:
    """Readable name of a metric: a function's name, a partial's function's, or an object's."""
    inner = unwrap_partial(m)
    name = getattr(inner, "name", None)
    if isinstance(name, str):
        return name
    named = isinstance(getattr(inner, "__name__", None), str)
    return callable_name(inner) if named else _snake(type(inner).__name__)
