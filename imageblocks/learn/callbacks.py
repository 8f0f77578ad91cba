"""What happens around training: the base class for callbacks, the exceptions a callback raises
to stop a batch, an epoch's training or validation, an epoch or the whole fit (fastai's names),
and the recorder."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from imageblocks.errors import ImageblocksError
from imageblocks.learn.lr_find import LossSmoother
from imageblocks.show import subplots


class CancelBatchException(ImageblocksError):
    """Raised from `before_batch`: skip this batch's step (`after_batch` still runs)."""


class CancelTrainException(ImageblocksError):
    """Skip the rest of this epoch's training; validation and `after_epoch` still run."""


class CancelValidException(ImageblocksError):
    """Raised from `before_validate`: no validation this epoch (its columns are None)."""


class CancelEpochException(ImageblocksError):
    """Skip the rest of this epoch (training and validation); `after_epoch` still runs."""


class CancelFitException(ImageblocksError):
    """End this fit: the epoch in progress is not recorded, `after_fit` still runs and the
    checkpoint marks the fit as done (in `fine_tune`, the next phase starts, as in fastai)."""


class Callback:
    """Hooks called by the training loop; override the ones you need (`learn` is the Learner).

    In order: before_fit, then each epoch before_epoch, before_train, before_batch/after_batch
    for each batch, after_train, before_validate, after_validate, after_epoch; after_fit last.
    Raising a `Cancel*Exception` calls the matching `after_cancel_*` hook."""

    order = 0

    def before_fit(self, learn: Any) -> None: ...
    def before_epoch(self, learn: Any) -> None: ...
    def before_train(self, learn: Any) -> None: ...
    def before_batch(self, learn: Any) -> None: ...
    def after_batch(self, learn: Any) -> None: ...
    def after_train(self, learn: Any) -> None: ...
    def before_validate(self, learn: Any) -> None: ...
    def after_validate(self, learn: Any) -> None: ...
    def after_epoch(self, learn: Any) -> None: ...
    def after_fit(self, learn: Any) -> None: ...
    def after_cancel_batch(self, learn: Any) -> None: ...
    def after_cancel_train(self, learn: Any) -> None: ...
    def after_cancel_validate(self, learn: Any) -> None: ...
    def after_cancel_epoch(self, learn: Any) -> None: ...
    def after_cancel_fit(self, learn: Any) -> None: ...


def as_callbacks(cbs: Callback | type | Iterable[Callback | type] | None) -> list[Callback]:
    """`cbs=` as fastai takes it: one callback, a list, or classes (instantiated); a list."""
    if cbs is None:
        return []
    items = [cbs] if isinstance(cbs, (Callback, type)) else list(cbs)
    out = [cb() if isinstance(cb, type) else cb for cb in items]
    for cb in out:
        if not isinstance(cb, Callback):
            raise TypeError(
                f"cbs= takes Callback objects (or classes), not {type(cb).__name__} {cb!r}: "
                "subclass imageblocks.learn.callbacks.Callback"
            )
    return out


class Recorder(Callback):
    """Keeps per-batch losses, learning rates and momentums, and per-epoch results."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.moms: list[float] = []
        self.losses: list[float] = []
        self.values: list[list[float]] = []
        self.iters: list[int] = []
        self.metric_names: list[str] = []
        self._smooth = LossSmoother(0.98)

    def before_fit(self, learn: Any) -> None:
        self._smooth = LossSmoother(0.98)
        self.lrs, self.moms, self.losses, self.values, self.iters = [], [], [], [], []
        self.metric_names = ["epoch", "train_loss", "valid_loss", *learn.metric_names, "time"]

    def add_batch(self, loss: float, lr: float, mom: float | None) -> float:
        """Record one training batch; returns the smoothed loss."""
        smooth = self._smooth(loss)
        self.losses.append(smooth)
        self.lrs.append(lr)
        self.moms.append(mom if mom is not None else float("nan"))
        return smooth

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the recorder (plain lists and numbers)."""
        return {
            "lrs": list(self.lrs),
            "moms": list(self.moms),
            "losses": list(self.losses),
            "values": [list(row) for row in self.values],
            "iters": list(self.iters),
            "smooth": [self._smooth.avg, self._smooth.count],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue recording from a checkpoint's `state_dict()`."""
        self.lrs, self.moms = list(state["lrs"]), list(state["moms"])
        self.losses, self.iters = list(state["losses"]), list(state["iters"])
        self.values = [list(row) for row in state["values"]]
        self._smooth.avg, self._smooth.count = state["smooth"]

    @property
    def smooth_loss(self) -> float:
        """The last smoothed training loss."""
        return self.losses[-1] if self.losses else float("nan")

    def add_epoch(self, values: list[float]) -> None:
        """Record one epoch's [train_loss, valid_loss, *metrics]."""
        self.values.append(values)
        self.iters.append(len(self.losses))

    def plot_loss(self, skip_start: int = 5, with_valid: bool = True):
        """Training loss per batch (smoothed) and validation loss per epoch; returns the figure."""
        fig, ax = subplots(figsize=(6, 4))
        losses = np.asarray(self.losses)
        ax.plot(range(skip_start, len(losses)), losses[skip_start:], label="train")
        if with_valid and self.values:
            valid = [v[1] for v in self.values]
            ax.plot(self.iters, valid, marker="o", label="valid")
        ax.set_xlabel("batch")
        ax.set_ylabel("loss")
        ax.legend()
        return fig

    def plot_sched(self):
        """The learning rate (and momentum) per batch; returns the figure."""
        fig, axs = subplots(1, 2, figsize=(8, 3))
        axs[0].plot(self.lrs)
        axs[0].set_title("learning rate")
        axs[1].plot(self.moms)
        axs[1].set_title("momentum")
        return fig
