"""Threshold tuning for multi-label models: sweep the decision threshold on the validation set.

The book sweeps `torch.linspace(0.05, 0.95, 29)` and plots accuracy against the threshold.
`tune_thresholds` does the same for micro F1 (or accuracy), picks the best global threshold and,
optionally, one threshold per class, and stores them in `learn.thresholds` so that `predict`,
`decode_preds`, `show_results` and `export` use them.

The thresholds are chosen on the validation set, so the scores reported at them are optimistic;
with a small validation set prefer one global threshold (`per_class=False`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import multilabel_f1_score

from imageblocks.data.blocks import Task, task_of
from imageblocks.learn.metrics import accuracy_multi

__all__ = [
    "ThresholdReport",
    "class_thresholds",
    "decision_thresholds",
    "default_grid",
    "multilabel_score",
    "tune_thresholds",
]

METRICS = ("f1", "accuracy")


def default_grid() -> Tensor:
    """The book's thresholds: 29 values from 0.05 to 0.95."""
    return torch.linspace(0.05, 0.95, 29)


def decision_thresholds(learn: Any) -> Tensor | None:
    """Each class's decision threshold, as `predict` uses them: the tuned ones when present,
    else the loss's single threshold for every class; None when the model decides otherwise."""
    if learn.thresholds is not None:
        return torch.as_tensor(learn.thresholds, dtype=torch.float32).flatten().cpu()
    thresh, vocab = getattr(learn.loss_func, "thresh", None), learn.dls.vocab
    if thresh is None or vocab is None:
        return None
    return torch.full((len(vocab),), float(thresh), dtype=torch.float32)


def class_thresholds(learn: Any) -> dict[str, float] | None:
    """`decision_thresholds` keyed by class name, JSON-able: what the CLI, the service and
    metrics.json report (exact float32 values, so the report is what `predict` decides with)."""
    values = decision_thresholds(learn)
    if values is None:
        return None
    return {str(c): float(t) for c, t in zip(learn.dls.vocab, values)}


def _decide(probs: Tensor, thresh: float | Tensor) -> Tensor:
    """Decisions `probs > thresh` (a scalar or one threshold per class)."""
    return probs > torch.as_tensor(thresh, dtype=probs.dtype, device=probs.device)


def multilabel_score(
    probs: Tensor, targs: Tensor, thresh: float | Tensor, metric: str = "f1", average: str = "micro"
) -> Tensor:
    """`metric` ('f1' or 'accuracy') of `probs > thresh` against multi-hot `targs`.

    `average`: 'micro' (all labels together), 'none' (one value per class)."""
    hard = _decide(probs, thresh)
    if metric == "accuracy":
        if average == "none":
            return (hard == targs.bool()).float().mean(0)
        return accuracy_multi(probs, targs, thresh=torch.as_tensor(thresh), sigmoid=False)
    if metric == "f1":
        return multilabel_f1_score(
            hard.long(), targs.long(), num_labels=probs.shape[-1], average=average, zero_division=0
        )
    raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")


def _best(xs: Tensor, ys: Tensor) -> int:
    """Index of the highest score; ties go to the threshold nearest 0.5."""
    top = ys.max()
    tied = torch.nonzero(ys >= top - 1e-12).flatten()
    return int(tied[(xs[tied] - 0.5).abs().argmin()])


@dataclass
class ThresholdReport:
    """What `tune_thresholds` found: the global curve, the chosen thresholds and the scores."""

    metric: str
    global_thresh: float
    per_class: list[float] | None
    score_at_0_5: float
    score_global: float
    score_per_class: float | None
    curve: tuple[list[float], list[float]]
    vocab: list[str] | None = None
    n_valid: int = 0
    classes_without_positive: list[str] = field(default_factory=list)

    @property
    def best_score(self) -> float:
        """The score at the thresholds now stored in the learner."""
        return self.score_per_class if self.score_per_class is not None else self.score_global

    @property
    def gain(self) -> float:
        """How much the chosen thresholds improve the score over 0.5 (validation set)."""
        return self.best_score - self.score_at_0_5

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (per-class thresholds keyed by class name when known)."""
        per_class: Any = self.per_class
        if per_class is not None and self.vocab is not None:
            per_class = {str(c): round(t, 4) for c, t in zip(self.vocab, per_class)}
        return {
            "metric": self.metric,
            "global": round(self.global_thresh, 4),
            "per_class": per_class,
            "score_at_0.5": self.score_at_0_5,
            "score_global": self.score_global,
            "score_per_class": self.score_per_class,
            "gain": self.gain,
            "classes_without_positive": self.classes_without_positive,
        }

    def plot(self, ax: Any = None) -> Any:
        """The metric against the threshold, the chosen global threshold marked; a Figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
        else:
            fig = ax.figure
        xs, ys = self.curve
        label = "micro F1" if self.metric == "f1" else "accuracy_multi"
        ax.plot(xs, ys, color="C0", label=label)
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.plot(
            self.global_thresh,
            self.score_global,
            "o",
            color="C3",
            markersize=8,
            zorder=3,
            label=f"best {self.global_thresh:.2f}: {self.score_global:.4f}",
        )
        if self.score_per_class is not None:
            ax.axhline(
                self.score_per_class,
                color="C2",
                linestyle=":",
                label=f"per-class thresholds: {self.score_per_class:.4f}",
            )
        ax.set_xlabel("threshold")
        ax.set_ylabel(label)
        ax.set_title(f"validation {label} by threshold ({self.n_valid} images)")
        ax.legend(loc="lower center")
        return fig


def tune_thresholds(
    learn: Any,
    metric: str = "f1",
    per_class: bool = True,
    grid: Sequence[float] | Tensor | None = None,
    preds: tuple[Tensor, Tensor] | None = None,
) -> ThresholdReport:
    """Pick decision thresholds on the validation set and store them in `learn.thresholds`.

    `metric`: 'f1' (micro F1 over every label) or 'accuracy' (`accuracy_multi`). The global
    threshold maximises it over `grid` (default: the book's 29 values). With `per_class`, each
    class gets the threshold maximising its own score (F1 or accuracy); a class with no positive
    in the validation set, or one whose score never rises above zero, keeps the global one.
    `preds`: the validation set's (probabilities, targets) when already computed.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    target = learn.dls.target_block
    if task_of(target) is not Task.MULTILABEL or target.vocab is None:
        raise ValueError("threshold tuning needs a multi-label model (a MultiCategoryBlock target)")
    if len(learn.dls.valid.dataset) == 0:
        raise ValueError("threshold tuning needs a validation set, and this one is empty")
    xs = default_grid() if grid is None else torch.as_tensor(grid, dtype=torch.float32).flatten()
    if len(xs) == 0 or not ((xs > 0) & (xs < 1)).all():
        raise ValueError("the threshold grid must hold values strictly between 0 and 1")
    probs, targs = learn.get_preds() if preds is None else preds
    probs, targs = probs.float().cpu(), targs.float().cpu()
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            "the predictions are not probabilities: is the loss BCEWithLogitsLossFlat?"
        )

    ys = torch.stack([multilabel_score(probs, targs, float(t), metric) for t in xs]).float()
    i = _best(xs, ys)
    global_thresh, score_global = float(xs[i]), float(ys[i])
    score_at_0_5 = float(multilabel_score(probs, targs, 0.5, metric))
    vocab = [str(c) for c in target.vocab]
    has_pos = targs.sum(0) > 0

    chosen = torch.full((probs.shape[1],), global_thresh)
    per_class_list, score_per_class = None, None
    if per_class:
        by_class = torch.stack(
            [multilabel_score(probs, targs, float(t), metric, average="none") for t in xs]
        ).float()  # (thresholds, classes)
        for c in range(probs.shape[1]):
            if has_pos[c] and by_class[:, c].max() > 0:
                chosen[c] = xs[_best(xs, by_class[:, c])]
        per_class_list = [float(t) for t in chosen]
        score_per_class = float(multilabel_score(probs, targs, chosen, metric))
    learn.thresholds = chosen.clone()
    return ThresholdReport(
        metric=metric,
        global_thresh=global_thresh,
        per_class=per_class_list,
        score_at_0_5=score_at_0_5,
        score_global=score_global,
        score_per_class=score_per_class,
        curve=([float(x) for x in xs], [float(y) for y in ys]),
        vocab=vocab,
        n_valid=len(probs),
        classes_without_positive=[v for v, p in zip(vocab, has_pos) if not p],
    )
