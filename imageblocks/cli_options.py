"""The options the `imageblocks` commands share (Typer), and the set every `train` command takes.

`with_train_options` gives a train command the `TrainOptions` after its own, so the two train
commands define each shared flag once, here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import typer

DEFAULT_ARCH = "efficientnet_lite0"  # its weights ship with imageblocks; the demo's too

CsvOpt = typer.Option(..., "--csv", help="CSV file, one row per image.")
ImagesOpt = typer.Option(..., "--images", help="Folder the CSV's file names are relative to.")
FnameColOpt = typer.Option("fname", help="Column of image file names.")
LabelColOpt = typer.Option("labels", help="Column of space-separated labels (empty: no object).")
SplitColOpt = typer.Option(
    None, help="Boolean column: true rows are validation (default: is_valid when present)."
)
ValidPctOpt = typer.Option(
    None, help="Random validation share when there is no split column (default: 0.2)."
)
ArchOpt = typer.Option(
    DEFAULT_ARCH, help="Architecture (efficientnet_lite0's weights ship with imageblocks)."
)
PretrainedOpt = typer.Option(
    True, "--pretrained/--no-pretrained", help="Start from ImageNet weights."
)
BsOpt = typer.Option(64, help="Batch size.")
EpochsOpt = typer.Option(None, help="Epochs of the whole model (after frozen ones), or --budget.")
BudgetOpt = typer.Option(None, help="Train to a time: 90s, 10m, 1h (default 10m, no --epochs).")
FreezeOpt = typer.Option(1, help="Epochs with the pretrained body frozen, first.")
LrOpt = typer.Option(None, help="Learning rate (default: lr_find's valley suggestion).")
WorkersOpt = typer.Option(None, help="Loader worker processes (default: one per core, at most 8).")
DeviceOpt = typer.Option(None, help="cpu, cuda, cuda:1, mps (default: the best available).")
SeedOpt = typer.Option(42, help="Random seed (split, initialisation, augmentation).")
OutOpt = typer.Option(..., "--out", help="Folder for the exported model, metrics.json and plots.")
ResumeOpt = typer.Option(
    False, "--resume", help="Continue a killed run from OUT/checkpoint.pt (same arguments)."
)
EarlyStopOpt = typer.Option(
    None, "--early-stop", metavar="PATIENCE", help="Stop once valid_loss stalls PATIENCE epochs."
)
SaveBestOpt = typer.Option(False, "--save-best", help="Export the epoch with the best valid_loss.")
PresetOpt = typer.Option(
    None, help="'biwi': a biwi_head_pose-style folder in --images (the book's get_ctr), no CSV."
)
PointColsOpt = typer.Option(
    None, help="Point columns, comma-separated (default: x,y or x0,y0,x1,y1,...)."
)
# predict
ImagesArg = typer.Argument(..., help="Image files, or folders of images.")
BatchCsvOpt = typer.Option(
    None, "--csv", help="Batch mode: one CSV row per image (labels, probabilities or points)."
)
Int8Opt = typer.Option(False, "--int8", help="Use the quantised model.int8.onnx.")
PredictBsOpt = typer.Option(64, "--bs", help="Images per batch.")
DecodeWorkersOpt = typer.Option(
    None, "--workers", help="Processes decoding images in batch mode (default: all cores)."
)


@dataclass(frozen=True)
class TrainOptions:
    """The options every `train` command takes after its own, each with its `typer.Option`."""

    fname_col: str = field(metadata={"option": FnameColOpt})
    split_col: str | None = field(metadata={"option": SplitColOpt})
    valid_pct: float | None = field(metadata={"option": ValidPctOpt})
    arch: str = field(metadata={"option": ArchOpt})
    pretrained: bool = field(metadata={"option": PretrainedOpt})
    bs: int = field(metadata={"option": BsOpt})
    epochs: int | None = field(metadata={"option": EpochsOpt})
    budget: str | None = field(metadata={"option": BudgetOpt})
    freeze_epochs: int = field(metadata={"option": FreezeOpt})
    lr: float | None = field(metadata={"option": LrOpt})
    workers: int | None = field(metadata={"option": WorkersOpt})
    device: str | None = field(metadata={"option": DeviceOpt})
    seed: int = field(metadata={"option": SeedOpt})
    resume: bool = field(metadata={"option": ResumeOpt})
    early_stop: int | None = field(metadata={"option": EarlyStopOpt})
    save_best: bool = field(metadata={"option": SaveBestOpt})


def with_train_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with its own options, then every `TrainOptions` one, which it receives together
    as `opts` (a keyword-only parameter of its own)."""
    hints, own_hints = get_type_hints(TrainOptions), get_type_hints(command)
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.metadata["option"],
                          annotation=hints[f.name])
        for f in fields(TrainOptions)
    ]  # fmt: skip
    own = [
        p.replace(annotation=own_hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != "opts"
    ]

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        opts = TrainOptions(**{p.name: kwargs.pop(p.name) for p in shared})
        command(**kwargs, opts=opts)

    run.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in own + shared}
    return run
