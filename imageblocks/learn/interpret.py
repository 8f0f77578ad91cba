"""Interpretation: what a trained model gets wrong on the validation set, class by class.

`MultiLabelInterpretation` and `ClassificationInterpretation` (fastai's name, single label) give
a per-class table (support, precision, recall, F1, AP and, multi-label, the threshold `predict`
decides with), confusion matrices, the classes most often confused, the top losses as numbers
or pictures, and the images whose labels look wrong (high loss with high confidence), for a CSV
to relabel. `PointsInterpretation` gives each image's error in pixels of the original image,
its distribution and the worst images. The per-class numbers come from torchmetrics.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    multiclass_average_precision,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
)

from imageblocks.data.blocks import Task, task_of
from imageblocks.data.datasets import describe_item
from imageblocks.data.loaders import DataLoader, collate
from imageblocks.learn.pixels import point_distances, source_half_sizes
from imageblocks.learn.predict import activation, raw_preds
from imageblocks.learn.thresholds import decision_thresholds
from imageblocks.show import show_image, show_points, subplots
from imageblocks.utils import atomic_write

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner

__all__ = [
    "ClassificationInterpretation",
    "Interpretation",
    "MultiLabelInterpretation",
    "PointsInterpretation",
]

NO_LABEL = "(none)"


def _fixed_order(dl: DataLoader) -> DataLoader:
    """`dl`, or a copy that keeps every item in order (a shuffled training loader otherwise)."""
    if not (dl.shuffle or dl.drop_last):
        return dl
    dl = copy.copy(dl)
    dl.shuffle, dl.drop_last, dl._loader = False, False, None
    return dl


def _per_item_loss(loss_func: Any, raw: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    """One loss value per item: the loss's `per_item`, else the loss of each item alone."""
    if hasattr(loss_func, "per_item"):
        return loss_func.per_item(raw, targs).float().cpu()
    return torch.stack([loss_func(raw[i : i + 1], targs[i : i + 1]) for i in range(len(raw))])


def _ap_or_nan(ap_fn: Any, probs: torch.Tensor, targs: torch.Tensor, **kw: Any) -> torch.Tensor:
    """Per-class average precision; NaN for a class with no positive (undefined there)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No positive samples")
        ap = ap_fn(probs, targs, average="none", **kw)
    support = targs.sum(0) if targs.ndim == 2 else torch.bincount(targs, minlength=ap.numel())
    return torch.where(support > 0, ap, torch.nan)


def _axes_grid(n: int, figsize: tuple | None, scale: float = 3.0) -> tuple[Any, list]:
    """A figure with `n` empty axes in a square-ish grid."""
    ncols = max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncols))
    fig, axs = subplots(
        nrows, ncols, figsize=figsize or (ncols * scale, nrows * scale + 0.4), squeeze=False
    )
    for ax in axs.flat:
        ax.set_axis_off()
    return fig, list(axs.flat)


class Interpretation:
    """A learner's raw outputs, targets and per-item losses on one loader, and its images."""

    caption = "loss"  # the title over `plot_top_losses`
    task: Task | None = None  # the task of the models this interpretation reads (None: any)
    instead = ""  # the end of the error for another task's model: what to use

    def __init__(
        self, learn: Learner, dl: DataLoader, raw: torch.Tensor, targs: torch.Tensor
    ) -> None:
        if self.task is not None and task_of(learn.dls.target_block) is not self.task:
            raise ValueError(f"{type(self).__name__} needs a {self.task} model{self.instead}")
        self.learn, self.dl = learn, dl
        self.raw, self.targs = raw.float().cpu(), targs.cpu()
        self.losses = _per_item_loss(learn.loss_func, raw, targs)

    @classmethod
    def from_learner(cls, learn: Learner, ds_idx: int = 1, dl: DataLoader | None = None) -> Any:
        """Interpret `learn` on the validation set (`ds_idx=0`: training) or on `dl`."""
        dl = _fixed_order(learn.dls[ds_idx] if dl is None else dl)
        raw, targs, _ = raw_preds(learn, dl)
        if targs is None:
            raise ValueError(
                "interpretation needs targets: this loader has none (a test_dl? build it with "
                "with_labels=True)"
            )
        return cls(learn, dl, raw, targs)

    @property
    def ranking(self) -> torch.Tensor:
        """What the top losses are ranked by: each item's loss."""
        return self.losses

    def top_losses(self, k: int | None = None, largest: bool = True) -> Any:
        """The `k` largest (or smallest) per-item values and their indices, as `torch.topk`."""
        k = len(self.ranking) if k is None else min(k, len(self.ranking))
        return self.ranking.topk(k, largest=largest)

    def item_names(self, idxs: Any = None) -> list[str]:
        """Where each item (all, or `idxs`) comes from: its image's path, else a description."""
        ds = self.dl.dataset
        dsets = getattr(ds, "dsets", None)
        idxs = range(len(ds)) if idxs is None else [int(i) for i in idxs]
        if dsets is None:
            return [str(i) for i in idxs]
        pipe = next((p for p in dsets.pipelines if p.kind == "image"), None)
        names = []
        for i in idxs:
            item = dsets.items[ds.idxs[i]]
            source = pipe.get(item) if pipe is not None else item
            named = isinstance(source, str) or hasattr(source, "__fspath__")
            names.append(str(source) if named else describe_item(item))
        return names

    def images(self, idxs: Any) -> torch.Tensor:
        """The images of items `idxs` as the model saw them (normalisation undone), (n, 3, H, W)."""
        b = self.dl.process(collate([self.dl.dataset[int(i)] for i in idxs]))
        return self.dl.decode(b)[0].detach().float().cpu()

    def title(self, i: int) -> str:
        """The caption of item `i` in `plot_top_losses`."""
        return f"loss {float(self.losses[i]):.2f}"

    def draw(self, ax: Any, i: int, image: torch.Tensor) -> None:
        """Draw item `i` on `ax` (the image, and the points for key points)."""
        show_image(image, ax)

    def plot_top_losses(
        self, k: int = 9, largest: bool = True, figsize: tuple | None = None
    ) -> Any:
        """The `k` items with the largest (or smallest) losses: image, truth, prediction, loss."""
        _, idxs = self.top_losses(k, largest)
        fig, axs = _axes_grid(len(idxs), figsize)
        for ax, i, image in zip(axs, idxs.tolist(), self.images(idxs)):
            self.draw(ax, i, image)
            ax.set_title(self.title(i), fontsize=8)
        fig.suptitle(self.caption, fontsize=10)
        fig.tight_layout()
        return fig


class _ClassInterpretation(Interpretation):
    """What the multi-label and single-label interpretations share."""

    caption = "truth / prediction / loss"

    def __init__(self, learn: Learner, dl: DataLoader, raw: torch.Tensor, targs: torch.Tensor):
        super().__init__(learn, dl, raw, targs)
        vocab = learn.dls.vocab
        if vocab is None:
            raise ValueError("this interpretation needs a model with classes (a vocab)")
        self.vocab = [str(v) for v in vocab]
        self.probs = activation(learn.loss_func)(self.raw).float()

    def _table(self, columns: dict[str, Any]) -> pd.DataFrame:
        """A per-class DataFrame from column name -> one value per class."""
        # float64: float32 values print with their binary noise (0.4000000059604645)
        data = {k: np.asarray(torch.as_tensor(v).double()) for k, v in columns.items()}
        df = pd.DataFrame(data, index=pd.Index(self.vocab, name="class"))
        for col in ("support", "predicted"):
            df[col] = df[col].astype(int)
        return df

    def label_issues(
        self, k: int | None = 20, confidence: float = 0.9, fname: Any = None
    ) -> pd.DataFrame:
        """The items whose labels look wrong (the model disagrees with `confidence` or more),
        highest loss first, at most `k`: item, labels, predicted, loss and the disputed classes
        (`missing`: confidently present but not labelled; `extra`: labelled but confidently
        absent). Written to the CSV file `fname` when given, for relabelling."""
        if not 0.5 <= confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), not {confidence}")
        missing, extra = self._disputed(confidence)
        flagged = [i for i in range(len(self.probs)) if missing[i] or extra[i]]
        flagged.sort(key=lambda i: -float(self.losses[i]))
        flagged = flagged[:k] if k is not None else flagged
        df = pd.DataFrame(
            {
                "item": self.item_names(flagged),
                "labels": [self.truth(i) for i in flagged],
                "predicted": [self.guess(i) for i in flagged],
                "loss": [round(float(self.losses[i]), 6) for i in flagged],
                "missing": [" ".join(missing[i]) for i in flagged],
                "extra": [" ".join(extra[i]) for i in flagged],
            }
        )
        if fname is not None:
            atomic_write(fname, df.to_csv(index=False))
        return df

    def title(self, i: int) -> str:
        """Truth, prediction and loss of item `i`."""
        return f"{self.truth(i)}\n{self.guess(i)}\nloss {float(self.losses[i]):.2f}"


class MultiLabelInterpretation(_ClassInterpretation):
    """Interpretation of a multi-label model, at the thresholds `predict` decides with."""

    task = Task.MULTILABEL
    instead = (
        ": use ClassificationInterpretation for a single label, PointsInterpretation for points"
    )

    def __init__(self, learn: Learner, dl: DataLoader, raw: torch.Tensor, targs: torch.Tensor):
        super().__init__(learn, dl, raw, targs)
        found = decision_thresholds(learn)
        self.thresholds = found if found is not None else torch.full((len(self.vocab),), 0.5)
        self.targs = self.targs.float()
        self.decoded = self.probs > self.thresholds

    def truth(self, i: int) -> str:
        """Item `i`'s true labels, ';'-joined."""
        return ";".join(c for c, t in zip(self.vocab, self.targs[i]) if t > 0.5) or NO_LABEL

    def guess(self, i: int) -> str:
        """Item `i`'s predicted labels with their probabilities."""
        hits = [(c, float(p)) for c, p, d in zip(self.vocab, self.probs[i], self.decoded[i]) if d]
        return ";".join(f"{c} {p:.2f}" for c, p in hits) or NO_LABEL

    def per_class(self) -> pd.DataFrame:
        """Per class: support (positives), predicted (count), precision, recall, F1, AP (NaN
        without a positive) and the decision threshold."""
        hard, targs, n = self.decoded.long(), self.targs.long(), len(self.vocab)
        kw: dict[str, Any] = {"num_labels": n, "average": "none", "zero_division": 0}
        support = targs.sum(0)
        return self._table(
            {
                "support": support,
                "predicted": hard.sum(0),
                "precision": multilabel_precision(hard, targs, **kw),
                "recall": multilabel_recall(hard, targs, **kw),
                "f1": multilabel_f1_score(hard, targs, **kw),
                "ap": _ap_or_nan(multilabel_average_precision, self.probs, targs, num_labels=n),
                "threshold": self.thresholds,
            }
        )

    def confusion_matrix(self) -> np.ndarray:
        """Each class's 2x2 confusion, (classes, 2, 2): `[[tn, fp], [fn, tp]]` (scikit-learn's
        `multilabel_confusion_matrix` layout); `vocab[c]` is class `c`."""
        p, t = self.decoded.bool(), self.targs.bool()
        counts = [(~p & ~t), (p & ~t), (~p & t), (p & t)]
        tn, fp, fn, tp = (c.sum(0).numpy() for c in counts)
        return np.stack([tn, fp, fn, tp], axis=1).reshape(-1, 2, 2).astype(np.int64)

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """False positives by co-occurring true label: `(true label, predicted class, count)`,
        most frequent first; an image with no label counts under '(none)'."""
        counts: Counter = Counter()
        for p, t in zip(self.decoded.bool(), self.targs.bool()):
            truths = [self.vocab[j] for j in torch.nonzero(t).flatten()] or [NO_LABEL]
            for j in torch.nonzero(p & ~t).flatten().tolist():
                counts.update((truth, self.vocab[j]) for truth in truths)
        found = [(a, b, n) for (a, b), n in counts.items() if n >= min_val]
        return sorted(found, key=lambda o: (-o[2], o[0], o[1]))

    def _disputed(self, confidence: float) -> tuple[list[list[str]], list[list[str]]]:
        missing = (self.probs >= confidence) & (self.targs < 0.5)
        extra = (self.probs <= 1 - confidence) & (self.targs > 0.5)
        names = np.array(self.vocab)
        return [list(names[m.numpy()]) for m in missing], [list(names[e.numpy()]) for e in extra]


class ClassificationInterpretation(_ClassInterpretation):
    """Interpretation of a single-label classifier: confusion matrix, most confused, top losses."""

    task = Task.CATEGORY
    instead = " (single label): use MultiLabelInterpretation for several labels per image"

    def __init__(self, learn: Learner, dl: DataLoader, raw: torch.Tensor, targs: torch.Tensor):
        super().__init__(learn, dl, raw, targs)
        self.targs = self.targs.long().reshape(-1)
        self.decoded = self.probs.argmax(-1)

    def truth(self, i: int) -> str:
        """Item `i`'s true class."""
        return self.vocab[int(self.targs[i])]

    def guess(self, i: int) -> str:
        """Item `i`'s predicted class and its probability."""
        c = int(self.decoded[i])
        return f"{self.vocab[c]} {float(self.probs[i, c]):.2f}"

    def per_class(self) -> pd.DataFrame:
        """Per class: support, predicted (count), precision, recall, F1 and AP (one against the
        rest; NaN without a positive)."""
        n, p, t = len(self.vocab), self.decoded, self.targs
        kw: dict[str, Any] = {"num_classes": n, "average": "none", "zero_division": 0}
        support = torch.bincount(t, minlength=n)
        return self._table(
            {
                "support": support,
                "predicted": torch.bincount(p, minlength=n),
                "precision": multiclass_precision(p, t, **kw),
                "recall": multiclass_recall(p, t, **kw),
                "f1": multiclass_f1_score(p, t, **kw),
                "ap": _ap_or_nan(multiclass_average_precision, self.probs, t, num_classes=n),
            }
        )

    def confusion_matrix(self) -> np.ndarray:
        """(classes, classes) counts: row = actual class, column = predicted class."""
        n = len(self.vocab)
        flat = torch.bincount(self.targs * n + self.decoded, minlength=n * n)
        return flat.reshape(n, n).numpy().astype(np.int64)

    def plot_confusion_matrix(
        self,
        normalize: bool = False,
        title: str = "Confusion matrix",
        cmap: str = "Blues",
        figsize: tuple | None = None,
    ) -> Any:
        """The confusion matrix as a picture (rows actual, columns predicted); the figure."""
        cm = self.confusion_matrix().astype(float)
        if normalize:
            cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        n = len(self.vocab)
        fig, ax = subplots(figsize=figsize or (max(4, 0.5 * n + 2),) * 2)
        ax.imshow(cm, cmap=cmap)
        ax.set(title=title, xlabel="Predicted", ylabel="Actual", xticks=range(n), yticks=range(n))
        ax.set_xticklabels(self.vocab, rotation=90)
        ax.set_yticklabels(self.vocab)
        for (r, c), v in np.ndenumerate(cm):
            text = f"{v:.2f}" if normalize else f"{int(v)}"
            color = "white" if v > cm.max() / 2 else "black"
            ax.text(c, r, text, ha="center", va="center", color=color, fontsize=8)
        fig.tight_layout()
        return fig

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """`(actual, predicted, count)` off the diagonal, most frequent first."""
        cm = self.confusion_matrix()
        found = [
            (self.vocab[a], self.vocab[p], int(cm[a, p]))
            for a, p in zip(*np.nonzero(cm))
            if a != p and cm[a, p] >= min_val
        ]
        return sorted(found, key=lambda o: (-o[2], o[0], o[1]))

    def _disputed(self, confidence: float) -> tuple[list[list[str]], list[list[str]]]:
        top = self.probs.max(-1).values
        wrong = (self.decoded != self.targs) & (top >= confidence)
        missing = [[self.vocab[int(self.decoded[i])]] if w else [] for i, w in enumerate(wrong)]
        extra = [[self.vocab[int(self.targs[i])]] if w else [] for i, w in enumerate(wrong)]
        return missing, extra


class PointsInterpretation(Interpretation):
    """Interpretation of a key-point model: each image's error in pixels of the original image."""

    caption = "target (green) / prediction (red): mean error in pixels of the original image"
    task = Task.POINTS
    instead = " (a PointBlock target)"

    def __init__(self, learn: Learner, dl: DataLoader, raw: torch.Tensor, targs: torch.Tensor):
        super().__init__(learn, dl, raw, targs)
        self.targs = self.targs.float()
        self.preds = self.raw.reshape(self.targs.shape)
        halves = source_half_sizes(dl)
        if halves is None or len(halves) != len(self.targs):
            raise ValueError(
                "cannot map these points back to the original images' pixels: interpret a "
                "loader built by a DataBlock (learn.dls.valid, or dls.test_dl(with_labels=True))"
            )
        self.point_errors = point_distances(self.preds, self.targs, halves)  # (items, points)
        self.errors = self.point_errors.mean(1)

    @property
    def ranking(self) -> torch.Tensor:
        """What the top losses are ranked by: each image's mean error in pixels."""
        return self.errors

    def error_stats(self) -> pd.Series:
        """The distribution of the per-point error in pixels of the original images: mean,
        median, 90th percentile, max and the number of points."""
        e = self.point_errors.flatten().double()
        return pd.Series(
            {
                "mean": float(e.mean()),
                "median": float(e.quantile(0.5)),
                "p90": float(e.quantile(0.9)),
                "max": float(e.max()),
                "n_points": len(e),
            },
            name="pixel error",
        )

    def plot_errors(self, bins: int = 30, figsize: tuple = (6, 4)) -> Any:
        """A histogram of the per-point errors in pixels, mean, median and p90 marked."""
        fig, ax = subplots(figsize=figsize)
        ax.hist(self.point_errors.flatten().numpy(), bins=bins, color="C0")
        stats = self.error_stats()
        for key, color in (("mean", "C3"), ("median", "C2"), ("p90", "C1")):
            ax.axvline(stats[key], color=color, linestyle="--", label=f"{key} {stats[key]:.1f}")
        ax.set(xlabel="error (pixels of the original image)", ylabel="points")
        ax.legend()
        return fig

    def title(self, i: int) -> str:
        """Item `i`'s mean error in pixels."""
        return f"{float(self.errors[i]):.1f} px"

    def draw(self, ax: Any, i: int, image: torch.Tensor) -> None:
        """The image, the target in green and the prediction in red."""
        show_image(image, ax)
        show_points(self.targs[i], ax, image.shape[-2:], color="lime", marker="o")
        show_points(self.preds[i], ax, image.shape[-2:], color="red", marker="x")
