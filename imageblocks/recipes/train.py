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
from imageblocks.launcher import launched
from imageblocks.learn import distributed
from imageblocks.learn.lr_find import minimum, slide, steep, valley
from imageblocks.recipes.csv_data import CsvDataError, multilabel_from_csv, points_dataloaders
from imageblocks.recipes.fit import fit_and_export, make_learner, save_figure
from imageblocks.recipes.reports import describe_data
from imageblocks.seeding import set_seed

__all__ = ["DEFAULT_ARCH", "TASKS", "CsvSource", "distributed_run", "find_lr", "train"]

DEFAULT_ARCH = "efficientnet_lite0"
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
    """A training set: a folder of images and a CSV naming them (or, for key points, the
    'biwi' preset: a biwi_head_pose-style folder, no CSV), with the CSV's columns."""

    images: Path
    csv: Path | None = None
    preset: str | None = None
    fname_col: str = "fname"
    label_col: str = "labels"
    point_cols: Sequence[str] | None = None
    split_col: str | None = None
    valid_pct: float | None = None

    def dataloaders(
        self,
        task: str,
        size: int | Sequence[int],
        bs: int = 64,
        seed: int = 42,
        num_workers: int | None = None,
        device: Any = None,
    ) -> DataLoaders:
        """DataLoaders for `task` ('multilabel' or 'points') at `size`."""
        if task == "multilabel":
            if self.csv is None:
                raise CsvDataError("a multi-label training set needs a CSV (--csv)")
            return multilabel_from_csv(
                self.csv, self.images, fname_col=self.fname_col, label_col=self.label_col,
                split_col=self.split_col, valid_pct=self.valid_pct, size=size, bs=bs, seed=seed,
                num_workers=num_workers, device=device,
            )  # fmt: skip
        if task == "points":
            return points_dataloaders(
                self.csv, self.images, self.preset, fname_col=self.fname_col,
                point_cols=self.point_cols, split_col=self.split_col, valid_pct=self.valid_pct,
                size=size, bs=bs, seed=seed, num_workers=num_workers, device=device,
            )  # fmt: skip
        raise CsvDataError(f"the task must be one of {', '.join(TASKS)}, not {task!r}")


def train(
    task: str,
    source: CsvSource,
    out: Path,
    size: int | Sequence[int],
    epochs: int = 3,
    freeze_epochs: int = 1,
    lr: float | None = None,
    tune: bool = True,
    resume: bool = False,
    arch: str = DEFAULT_ARCH,
    pretrained: bool = True,
    bs: int = 64,
    seed: int = 42,
    num_workers: int | None = None,
    device: Any = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Seed, load `source` for `task`, fine_tune a vision learner and export it with its
    metrics and plots to `out` (see `fit_and_export`); what metrics.json holds."""
    set_seed(seed)
    dls = source.dataloaders(task, size, bs=bs, seed=seed, num_workers=num_workers, device=device)
    log(f"data: {describe_data(dls)}")
    learn = make_learner(dls, arch, pretrained)
    return fit_and_export(learn, out, epochs, freeze_epochs, lr, tune=tune, resume=resume, log=log)


def find_lr(
    task: str,
    source: CsvSource,
    out: Path,
    size: int | Sequence[int],
    num_it: int = 100,
    arch: str = DEFAULT_ARCH,
    pretrained: bool = True,
    bs: int = 64,
    seed: int = 42,
    num_workers: int | None = None,
    device: Any = None,
) -> tuple:
    """The learning-rate finder on a fresh learner for `source`: every suggestion (minimum,
    steep, valley, slide), the plot written to `out` (a PNG file)."""
    set_seed(seed)
    dls = source.dataloaders(task, size, bs=bs, seed=seed, num_workers=num_workers, device=device)
    learn = make_learner(dls, arch, pretrained)
    suggestions = learn.lr_find(
        num_it=num_it, show_plot=True, suggest_funcs=(minimum, steep, valley, slide)
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_figure(learn.lr_find_figure, Path(out))
    return suggestions
