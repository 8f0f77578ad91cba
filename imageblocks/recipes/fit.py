"""Fit and export: the training run behind `imageblocks train` and the demo.

lr_find (when no learning rate is given), fine_tune with a checkpoint every epoch (and, when
asked, early stopping and the best epoch's weights kept), threshold tuning for multi-label
models, export, `metrics.json`, `history.csv` and the plots, in one folder.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from imageblocks.data.blocks import Task, task_of
from imageblocks.data.loaders import DataLoaders
from imageblocks.learn import distributed
from imageblocks.learn.callbacks import Callback
from imageblocks.learn.learner import Learner, vision_learner
from imageblocks.learn.metrics import APScoreMulti, F1ScoreMulti, accuracy_multi
from imageblocks.learn.thresholds import class_thresholds, tune_thresholds
from imageblocks.learn.timed import Budget
from imageblocks.learn.tracker import EarlyStoppingCallback, SaveModelCallback
from imageblocks.learn.tracking import CSVLogger
from imageblocks.recipes.history import LossHistory
from imageblocks.recipes.reports import multilabel_metrics, points_metrics, raw_preds
from imageblocks.utils import atomic_write

__all__ = ["CHECKPOINT", "HISTORY", "fit_and_export", "make_learner", "save_figure"]

CHECKPOINT = "checkpoint.pt"
RUN_FILE = ".run.json"
HISTORY = "history.csv"  # one row per epoch of the run (CSVLogger)
REPORT_FIGURES = 2  # the loss curve, the report figure and the results grid cost about two grids
BEST = "best"  # --save-best keeps the best epoch in models/best.safetensors until the export


def figure_seconds() -> float:
    """Seconds to draw and write a 3x3 grid of titled images as a PNG (what `show_results`
    draws) on this machine, measured now."""
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    t = time.perf_counter()
    fig, axes = plt.subplots(3, 3, figsize=(9, 9))
    for ax in axes.flat:
        ax.imshow(image)
        ax.set_title("label;label")
        ax.axis("off")
    fig.savefig(io.BytesIO(), format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return time.perf_counter() - t


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically (under torchrun, rank 0 only), and close it."""
    if distributed.is_main():
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return path


def make_learner(dls: DataLoaders, arch: str, pretrained: bool = True) -> Learner:
    """A vision learner for `dls`: multi-label metrics (accuracy_multi, macro F1, AP), or
    `y_range=(-1, 1)` for key points."""
    if task_of(dls.target_block) is Task.MULTILABEL:
        metrics = [
            partial(accuracy_multi, thresh=0.5),
            F1ScoreMulti(average="macro"),
            APScoreMulti(),
        ]
        return vision_learner(dls, arch, pretrained=pretrained, metrics=metrics)
    return vision_learner(dls, arch, pretrained=pretrained, metrics=[], y_range=(-1, 1))


def _resume_lr(out: Path, lr: float | None, log: Callable[[str], None]) -> float | None:
    """The learning rate to resume with: `lr`, else the killed run's; the checkpoint must exist."""
    checkpoint, run_file = out / CHECKPOINT, out / RUN_FILE
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"resume: no checkpoint in {out} (a run writes {CHECKPOINT} after each epoch): "
            "run without resuming to start afresh"
        )
    saved = json.loads(run_file.read_text())["lr"] if run_file.is_file() else None
    if lr is None and saved is not None:  # (a budgeted run's is in its checkpoint's plan)
        lr = float(saved)
        log(f"resuming from {checkpoint} with the killed run's learning rate {lr:.2e}")
    return lr


def _multilabel_report(learn: Learner, out: Path, tune: bool, log: Callable[[str], None]) -> dict:
    """Metrics at the thresholds `predict` will use (tuned on validation when `tune`)."""
    raw, targs = raw_preds(learn)
    at_half = multilabel_metrics(learn, preds=(raw, targs))
    if not tune:
        return {**at_half, "thresholds": class_thresholds(learn)}
    report = tune_thresholds(learn, preds=(raw.sigmoid(), targs))
    save_figure(report.plot(), out / "thresholds.png")
    log(
        f"thresholds: global {report.global_thresh:.2f}, micro F1 {report.score_at_0_5:.4f} "
        f"at 0.5 -> {report.best_score:.4f} tuned (on the validation set)"
    )
    return {
        **multilabel_metrics(learn, preds=(raw, targs)),
        "at_0.5": at_half,
        "thresholds": class_thresholds(learn),
        "threshold_tuning": report.as_dict(),
    }


def fit_and_export(
    learn: Learner,
    out: Path,
    epochs: int,
    freeze_epochs: int,
    lr: float | None,
    tune: bool = True,
    resume: bool = False,
    log: Callable[[str], None] = print,
    early_stop: int | None = None,
    save_best: bool = False,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """lr_find (when `lr` is None), fine_tune, threshold tuning, export, metrics.json, plots;
    with a started `budget`, `fine_tune_budget` instead (the epochs are planned to end, report
    and export included, when the budget does).

    Every epoch is checkpointed to `out/checkpoint.pt` (removed once the model is exported);
    `resume` continues a killed run from it, with the learning rate that run used. `early_stop`
    (a patience) ends each fit once valid_loss has not improved for that many epochs;
    `save_best` exports the weights of the epoch with the lowest valid_loss (of the last fit,
    as fastai's SaveModelCallback does). `log` receives the progress lines. Returns what
    metrics.json holds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steering = steering_callbacks(early_stop, save_best)
    learn.path = out  # SaveModelCallback's models/ and CSVLogger's history.csv go there
    task = task_of(learn.dls.target_block)
    checkpoint, run_file = out / CHECKPOINT, out / RUN_FILE
    if resume:
        lr = _resume_lr(out, lr, log)
    if lr is None and budget is None:
        lr = float(learn.lr_find(show_plot=True).valley)
        log(f"lr_find: valley {lr:.2e} (used as the learning rate)")
        save_figure(learn.lr_find_figure, out / "lr_find.png")
    if distributed.is_main():
        atomic_write(run_file, json.dumps({"lr": lr}))
    history = LossHistory()
    learn.cbs.append(history)
    t0 = time.perf_counter()
    budgeted = None
    try:
        cbs, resumed = [*steering, CSVLogger(HISTORY)], checkpoint if resume else None
        if budget is not None:
            budgeted = learn.fine_tune_budget(
                budget, base_lr=lr, checkpoint=checkpoint, resume=resumed, cbs=cbs, log=log,
                report_passes=1, report_s=REPORT_FIGURES * figure_seconds(),
            )  # fmt: skip
            lr = learn.plan.phases[0].lr
        else:
            learn.fine_tune(
                epochs, base_lr=lr, freeze_epochs=freeze_epochs, checkpoint=checkpoint,
                resume=resumed, cbs=cbs,
            )  # fmt: skip
    except KeyboardInterrupt:
        if checkpoint.is_file():
            print(
                f"interrupted: {checkpoint} holds the last completed epoch; run the same "
                "command with --resume to continue",
                file=sys.stderr,
            )
        raise
    finally:
        learn.cbs.remove(history)
    train_s = time.perf_counter() - t0
    save_figure(history.plot(), out / "loss.png")

    metrics: dict[str, Any] = {"task": str(task)}
    if task is Task.MULTILABEL:
        metrics.update(_multilabel_report(learn, out, tune, log))
    elif task is Task.POINTS:
        metrics.update(points_metrics(learn))
    save_figure(learn.show_results(), out / "results.png")
    learn.export(out)
    metrics.update(
        {
            "arch": learn.model.config.get("arch"),
            "n_train": len(learn.dls.train.dataset),
            "n_valid": len(learn.dls.valid.dataset),
            "vocab": [str(v) for v in learn.dls.vocab] if learn.dls.vocab is not None else None,
            "lr": lr,
            "epochs": epochs,
            "freeze_epochs": freeze_epochs,
            "train_time_s": round(train_s, 1),
            **steering_report(steering),
        }
    )
    if budget is not None:  # planned and actual seconds, the report and export included
        metrics["budget"] = {**budgeted, "actual_s": round(budget.used(), 2)}
    if distributed.is_main():
        atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
        checkpoint.unlink(missing_ok=True)
        run_file.unlink(missing_ok=True)
        (out / "models" / f"{BEST}.safetensors").unlink(missing_ok=True)  # the export holds it
        if (out / "models").is_dir() and not any((out / "models").iterdir()):
            (out / "models").rmdir()
    return metrics


def steering_callbacks(early_stop: int | None = None, save_best: bool = False) -> list[Callback]:
    """`--early-stop PATIENCE` and `--save-best` as callbacks, both watching valid_loss."""
    if early_stop is not None and early_stop < 1:
        raise ValueError(f"--early-stop takes a patience of 1 epoch or more, not {early_stop}")
    cbs: list[Callback] = []
    if early_stop is not None:
        cbs.append(EarlyStoppingCallback(monitor="valid_loss", patience=early_stop))
    if save_best:
        cbs.append(SaveModelCallback(monitor="valid_loss", fname=BEST))
    return cbs


def steering_report(cbs: list[Callback]) -> dict[str, Any]:
    """What metrics.json says of them: the epoch early stopping ended the last fit at (None:
    it ran to the end), the best epoch kept and its valid_loss (epochs of the last fit)."""
    report: dict[str, Any] = {}
    for cb in cbs:
        if isinstance(cb, EarlyStoppingCallback):
            report["early_stop"] = {"patience": cb.patience, "stopped_at_epoch": cb.stopped_epoch}
        elif isinstance(cb, SaveModelCallback):
            report["best_epoch"] = {"monitor": cb.monitor, "epoch": cb.best_epoch, "value": cb.best}
    return report
