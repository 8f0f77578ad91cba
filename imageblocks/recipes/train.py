"""Training from a CSV (or the BIWI preset) in one call: data, learner, fit and export.

What `imageblocks train multilabel|points` and `imageblocks lr-find` run, with the same data.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageblocks.data.loaders import DataLoaders
from imageblocks.errors import ArgumentError
from imageblocks.launcher import launched
from imageblocks.learn import distributed
from imageblocks.learn.learner import Learner
from imageblocks.learn.lr_find import minimum, slide, steep, valley
from imageblocks.learn.timed import Budget
from imageblocks.recipes.csv_data import (
    CsvDataError,
    biwi_dataloaders,
    multilabel_from_csv,
    points_from_csv,
)
from imageblocks.recipes.fit import fit_and_export, make_learner, save_figure
from imageblocks.recipes.reports import describe_data
from imageblocks.seeding import set_seed

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_BUDGET",
    "TASKS",
    "CsvSource",
    "distributed_run",
    "find_lr",
    "train",
]

DEFAULT_ARCH = "efficientnet_lite0"
DEFAULT_BUDGET = "10m"  # `train` with no epochs: what a coffee break buys (see the README)
TASKS = ("multilabel", "points")


@contextlib.contextmanager
def distributed_run() -> Iterator[None]:
    """Under torchrun: join the process group, silence ranks other than 0, leave at the end;
    elsewhere nothing. The run owns this; the loaders are told their shard."""
    if not launched():
        yield
        return
    distributed.setup()
    quiet = None if distributed.is_main() else open(os.devnull, "w")
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield
    finally:
        if quiet:
            quiet.close()
        distributed.cleanup()


@dataclass(frozen=True)
class CsvSource:
    """A training set and how to load it: a folder of images and a CSV naming them (or, for key
    points, the 'biwi' preset: a biwi_head_pose-style folder, no CSV), the CSV's columns, the
    model's input `size` (multi-label: the crop's side), batch size, seed, workers, device."""

    images: Path
    csv: Path | None = None
    preset: str | None = None
    fname_col: str = "fname"
    label_col: str = "labels"
    point_cols: Sequence[str] | None = None
    split_col: str | None = None
    valid_pct: float | None = None
    size: int | Sequence[int] = 128
    bs: int = 64
    seed: int = 42
    num_workers: int | None = None
    device: Any = None

    def dataloaders(self, task: str) -> DataLoaders:
        """DataLoaders for `task`: 'multilabel' (a CSV) or 'points' (a CSV or the preset)."""
        if task not in TASKS:
            raise CsvDataError(f"the task must be one of {', '.join(TASKS)}, not {task!r}")
        loading = {"bs": self.bs, "num_workers": self.num_workers, "device": self.device}
        if self.preset is not None:
            if task != "points" or self.preset.lower() != "biwi":
                raise CsvDataError(
                    f"unknown preset {self.preset!r} (--preset) for {task}: the one preset is "
                    "'biwi', for key points"
                )
            if self.csv is not None:
                raise CsvDataError(
                    "give a CSV (--csv) or the preset biwi (--preset biwi), not both"
                )
            return biwi_dataloaders(self.images, size=self.size, **loading)
        if self.csv is None:
            raise CsvDataError(
                f"{task} training needs a CSV (--csv FILE, with a file-name column and "
                + ("labels" if task == "multilabel" else "x,y or x0,y0,x1,y1,... in pixels")
                + ")"
                + (" or the preset biwi (--preset biwi)" if task == "points" else "")
            )
        split = {"split_col": self.split_col, "valid_pct": self.valid_pct, "seed": self.seed}
        if task == "multilabel":
            return multilabel_from_csv(
                self.csv, self.images, fname_col=self.fname_col, label_col=self.label_col,
                size=self.size, **split, **loading,
            )  # fmt: skip
        return points_from_csv(
            self.csv, self.images, fname_col=self.fname_col, point_cols=self.point_cols,
            size=self.size, **split, **loading,
        )  # fmt: skip

    def learner(self, task: str, arch: str = DEFAULT_ARCH, pretrained: bool = True) -> Learner:
        """Seeded, a fresh vision learner for these DataLoaders (see `make_learner`)."""
        set_seed(self.seed)
        return make_learner(self.dataloaders(task), arch, pretrained)


def train(
    task: str,
    source: CsvSource,
    out: Path,
    epochs: int | None = None,
    freeze_epochs: int = 1,
    lr: float | None = None,
    tune: bool = True,
    resume: bool = False,
    arch: str = DEFAULT_ARCH,
    pretrained: bool = True,
    log: Callable[[str], None] = print,
    early_stop: int | None = None,
    save_best: bool = False,
    budget: float | str | None = None,
) -> dict[str, Any]:
    """Load `source` for `task`, fine_tune a fresh vision learner and export it with its metrics
    and plots to `out` (see `fit_and_export`: `early_stop` patience, `save_best`); what
    metrics.json holds. With no `epochs`, the run trains to a time `budget` (default
    `DEFAULT_BUDGET`) counted from this call: data loading, report and export included."""
    if epochs is not None and budget is not None:
        raise ArgumentError(
            "give a number of epochs (--epochs) or a time budget (--budget), not both"
        )
    timer = Budget(budget or DEFAULT_BUDGET).start() if epochs is None else None
    learn = source.learner(task, arch, pretrained)
    log(f"data: {describe_data(learn.dls)}")
    return fit_and_export(
        learn, out, epochs, freeze_epochs, lr, tune=tune, resume=resume, log=log,
        early_stop=early_stop, save_best=save_best, budget=timer,
    )  # fmt: skip


def find_lr(
    task: str,
    source: CsvSource,
    out: Path,
    num_it: int = 100,
    arch: str = DEFAULT_ARCH,
    pretrained: bool = True,
) -> tuple:
    """The learning-rate finder on a fresh learner for `source`: every suggestion (minimum,
    steep, valley, slide), the plot written to `out` (a PNG file)."""
    learn = source.learner(task, arch, pretrained)
    suggestions = learn.lr_find(
        num_it=num_it, show_plot=True, suggest_funcs=(minimum, steep, valley, slide)
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_figure(learn.lr_find_figure, Path(out))
    return suggestions
