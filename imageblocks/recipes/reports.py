"""Validation reports of a trained learner: multi-label metrics, key-point errors in pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from imageblocks.data.loaders import DataLoader, DataLoaders
from imageblocks.learn.learner import Learner
from imageblocks.learn.metrics import (
    F1ScoreMulti,
    accuracy_multi,
    mean_average_precision,
    mse,
    pixel_error,
)
from imageblocks.learn.onnx_export import input_size
from imageblocks.learn.pixels import point_distances, source_half_sizes
from imageblocks.learn.thresholds import class_thresholds, decision_thresholds
from imageblocks.recipes.csv_data import eval_dataloader

__all__ = [
    "describe_data",
    "evaluate_csv",
    "multilabel_metrics",
    "points_metrics",
    "raw_preds",
    "source_half_sizes",
    "summary_lines",
]


def _r(x: Any, digits: int = 6) -> float:
    return round(float(x), digits)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def raw_preds(learn: Learner, dl: DataLoader | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs (logits, values) and targets of `dl` (default: validation) on the CPU."""
    raw, targs = learn.get_preds(dl=dl, act=_identity)
    return raw.float().cpu(), targs.float().cpu()


def multilabel_metrics(
    learn: Learner,
    dl: DataLoader | None = None,
    preds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Loss, accuracy_multi, F1 (macro, micro) at the thresholds `predict` uses, and mAP.

    `preds`: (raw outputs, targets) already computed on `dl`."""
    raw, targs = raw_preds(learn, dl) if preds is None else preds
    thresholds = decision_thresholds(learn)
    thresh = thresholds if thresholds is not None else torch.tensor(0.5)
    return {
        "valid_loss": _r(learn.loss_func(raw, targs)),
        "accuracy_multi": _r(accuracy_multi(raw, targs, thresh=thresh)),
        "f1_macro": _r(F1ScoreMulti(thresh=thresh, average="macro")(raw, targs)),
        "f1_micro": _r(F1ScoreMulti(thresh=thresh, average="micro")(raw, targs)),
        "mAP": _r(mean_average_precision(raw, targs)),
        "n_images": len(raw),
    }


def points_metrics(learn: Learner, dl: DataLoader | None = None) -> dict[str, Any]:
    """MSE in [-1, 1] coordinates; mean distance in pixels of the original images (and of the
    model's input), next to what always guessing the centre would give."""
    raw, targs = raw_preds(learn, dl)
    preds = raw.reshape(targs.shape)
    out: dict[str, Any] = {
        "valid_loss": _r(learn.loss_func(raw, targs)),
        "mse": _r(mse(preds, targs)),
    }
    halves = source_half_sizes(dl if dl is not None else learn.dls.valid)
    if halves is not None and len(halves) == len(targs):
        for key, guess in (("pixel_error", preds), ("pixel_error_if_always_centre", None)):
            guess = torch.zeros_like(targs) if guess is None else guess
            out[key] = _r(point_distances(guess, targs, halves).mean(), 3)
    h, w = input_size(learn) or (0, 0)
    if h and w:
        out["input_pixel_error"] = _r(pixel_error(preds, targs, (w, h)), 3)
        out["input_size"] = [h, w]
    out["n_images"] = len(raw)
    return out


def describe_data(dls: DataLoaders) -> str:
    """'N training / M validation images, K classes: ...' for a line of output."""
    n_train, n_valid = len(dls.train.dataset), len(dls.valid.dataset)
    text = f"{n_train} training / {n_valid} validation images"
    if dls.vocab is not None:
        text += f", {len(dls.vocab)} classes: {' '.join(map(str, dls.vocab))}"
    return text


def evaluate_csv(
    learn: Learner,
    csv: Path,
    images: Path,
    fname_col: str = "fname",
    label_col: str = "labels",
    point_cols: Sequence[str] | None = None,
    bs: int = 64,
    num_workers: int | None = 0,
) -> dict[str, Any]:
    """The metrics of `learn` on every row of `csv` (multi-label or key points), with the
    thresholds it decided with."""
    dl = eval_dataloader(
        learn, csv, images, fname_col=fname_col, label_col=label_col, point_cols=point_cols,
        bs=bs, num_workers=num_workers,
    )  # fmt: skip
    task = learn.config["task"]
    found = multilabel_metrics(learn, dl) if task == "multilabel" else points_metrics(learn, dl)
    metrics = {"task": task, "csv": str(csv), "loss": found.pop("valid_loss"), **found}
    if task == "multilabel":
        metrics["thresholds"] = class_thresholds(learn)
    return metrics


def summary_lines(metrics: dict[str, Any], out: Path) -> list[str]:
    """A few lines on a trained model's validation metrics and the files written to `out`."""
    keys = ("valid_loss", "accuracy_multi", "f1_macro", "f1_micro", "mAP", "mse")
    lines = ["validation: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)]
    if "pixel_error" in metrics:
        lines.append(
            f"  points are {metrics['pixel_error']:.1f} pixels off on average, in the original "
            f"images (always guessing the centre: {metrics['pixel_error_if_always_centre']:.1f})"
        )
    names = ", ".join(sorted(p.name for p in Path(out).iterdir()))
    lines.append(f"model, metrics.json and pictures in {out}/: {names}")
    return lines
