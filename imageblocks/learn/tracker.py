"""Callbacks that watch one column of the recorder after every epoch (fastai's
`callback.tracker`): stop early, keep the best epoch's weights, lower the learning rate on a
plateau.

`monitor` is any of `learn.recorder.metric_names` but `epoch` and `time` ('train_loss',
'valid_loss' or a metric's name). A lower value is better for names holding 'loss' or 'error',
a higher one otherwise, unless `comp` says (np.less or np.greater); an epoch improves on the
best by more than `min_delta` or not at all. On a resumed run the epochs restored from the
checkpoint are replayed first, so patience counts and lowered rates continue where they were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from imageblocks.learn import distributed
from imageblocks.learn.callbacks import Callback, CancelFitException
from imageblocks.utils import atomic_write

__all__ = ["TrackerCallback", "EarlyStoppingCallback", "SaveModelCallback", "ReduceLROnPlateau"]


class TrackerCallback(Callback):
    """Tracks `monitor` epoch by epoch: `best` so far, and `new_best` when the last epoch
    improved on it by more than `min_delta`; `reset_on_fit` forgets the best at each fit."""

    order = 60  # after the recorder and the progress table have the epoch's row

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Callable | None = None,
        min_delta: float = 0.0,
        reset_on_fit: bool = True,
    ) -> None:
        if comp is None:
            comp = np.less if "loss" in monitor or "error" in monitor else np.greater
        self.monitor, self.comp, self.reset_on_fit = monitor, comp, reset_on_fit
        self.min_delta = -min_delta if comp is np.less else min_delta
        self.best: float | None = None
        self.new_best = False

    def before_fit(self, learn: Any) -> None:
        """Find the monitored column; start afresh (or keep the best); replay restored epochs."""
        self.idx = _column(learn, self.monitor, type(self).__name__)
        if self.reset_on_fit or self.best is None:
            self.best = float("inf") if self.comp is np.less else -float("inf")
        self.new_best = False
        for epoch, row in enumerate(learn.recorder.values):  # epochs restored from a checkpoint
            self._track(learn, epoch, row, replay=True)

    def after_epoch(self, learn: Any) -> None:
        """Compare this epoch's value with the best."""
        self._track(learn, learn.epoch, learn.recorder.values[-1], replay=False)

    def _track(self, learn: Any, epoch: int, row: Sequence[Any], replay: bool) -> None:
        value = row[self.idx] if self.idx < len(row) else None
        if value is None or not np.isfinite(value):  # validation skipped: nothing to judge
            self.new_best = False
            return
        self.new_best = bool(self.comp(value - self.min_delta, self.best))
        if self.new_best:
            self.best = float(value)
        self.tracked(learn, epoch, replay)

    def tracked(self, learn: Any, epoch: int, replay: bool) -> None:
        """What a subclass does once `epoch` was judged (`replay`: restored from a checkpoint,
        act on the state only)."""


def _column(learn: Any, monitor: str, who: str) -> int:
    """The index of `monitor` in a recorder row `[train_loss, valid_loss, *metrics]`."""
    names = list(learn.recorder.metric_names[1:-1])
    if monitor not in names:
        raise ValueError(
            f"{who}: monitor={monitor!r} is not a column of the recorder; pick one of "
            f"{', '.join(names)} (the metrics' names as the progress table shows them)"
        )
    idx = names.index(monitor)
    if idx > 0 and len(learn.dls.valid.dataset) == 0:
        raise ValueError(
            f"{who}: monitor={monitor!r} needs a validation set, and this learner's is empty: "
            "split off a validation set or monitor 'train_loss'"
        )
    return idx


class _PatienceCallback(TrackerCallback):
    """A tracker that acts once `monitor` has not improved for `patience` epochs."""

    def __init__(
        self, monitor: str = "valid_loss", comp: Callable | None = None, min_delta: float = 0.0,
        patience: int = 1, reset_on_fit: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(monitor, comp, min_delta, reset_on_fit)
        self.patience = patience

    def before_fit(self, learn: Any) -> None:
        """No epoch waited for yet."""
        self.wait = 0
        super().before_fit(learn)

    def tracked(self, learn: Any, epoch: int, replay: bool) -> None:
        """Count the epochs without improvement; act at `patience`."""
        self.wait = 0 if self.new_best else self.wait + 1
        if self.wait >= self.patience:
            self.out_of_patience(learn, epoch, replay)

    def out_of_patience(self, learn: Any, epoch: int, replay: bool) -> None:
        """What to do after `patience` epochs without improvement."""


class EarlyStoppingCallback(_PatienceCallback):
    """Ends the fit when `monitor` has not improved for `patience` epochs."""

    order = 65  # after the other trackers: their epoch is seen (and said) before the stop
    stopped_epoch: int | None = None  # the epoch the last fit stopped after (None: ran to the end)

    def before_fit(self, learn: Any) -> None:
        """Not stopped yet."""
        self.stopped_epoch = None
        super().before_fit(learn)

    def out_of_patience(self, learn: Any, epoch: int, replay: bool) -> None:
        """Stop (a restored epoch only counts: that run went on)."""
        if replay:
            return
        self.stopped_epoch = epoch
        if distributed.is_main():
            print(f"No improvement since epoch {epoch - self.wait}: early stopping")
        raise CancelFitException()


class SaveModelCallback(TrackerCallback):
    """Saves the weights of the best epoch by `monitor` to `learn.path/models/fname.safetensors`
    and loads them back at the end of the fit; `every_epoch` (True or N) saves every (N-th)
    epoch as `fname_{epoch}` instead, `at_end` saves the final weights only."""

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Callable | None = None,
        min_delta: float = 0.0,
        fname: str = "model",
        every_epoch: bool | int = False,
        at_end: bool = False,
        with_opt: bool = False,
        reset_on_fit: bool = True,
    ) -> None:
        super().__init__(monitor, comp, min_delta, reset_on_fit)
        self.fname, self.every_epoch, self.at_end, self.with_opt = (
            fname,
            every_epoch,
            at_end,
            with_opt,
        )
        self.best_epoch: int | None = None

    def path(self, learn: Any, name: str | None = None) -> Path:
        """Where the weights `name` (default `fname`) are saved."""
        return Path(learn.path) / "models" / f"{name or self.fname}.safetensors"

    def before_fit(self, learn: Any) -> None:
        """No best epoch in this fit yet (a resumed one finds it again in the replay)."""
        if self.reset_on_fit:
            self.best_epoch = None
        super().before_fit(learn)

    def tracked(self, learn: Any, epoch: int, replay: bool) -> None:
        """Save the weights when this epoch is the best (or at every (N-th) epoch)."""
        if self.every_epoch:
            if epoch % int(self.every_epoch) == 0 and not replay:
                self._save(learn, f"{self.fname}_{epoch}")
        elif self.new_best:
            self.best_epoch = epoch
            if not replay:
                if distributed.is_main():
                    print(
                        f"Better model found at epoch {epoch} with {self.monitor} value: "
                        f"{self.best}."
                    )
                self._save(learn, self.fname)

    def after_fit(self, learn: Any) -> None:
        """Save the final weights (`at_end`) or load the best epoch's."""
        if self.at_end:
            self._save(learn, self.fname)
        elif not self.every_epoch and self.best_epoch is not None:
            if distributed.active():  # under torchrun: wait until rank 0 has written the file
                torch.distributed.barrier()
            self._load(learn)

    def _save(self, learn: Any, name: str) -> None:
        if not distributed.is_main():
            return
        path = self.path(learn, name)
        state = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
        atomic_write(path, safetensors_bytes(state))
        if self.with_opt:
            opt_state = learn.opt.state_dict()
            atomic_write(path.with_suffix(".opt.pt"), lambda f: torch.save(opt_state, f))

    def _load(self, learn: Any) -> None:
        path = self.path(learn)
        if not path.is_file():
            raise FileNotFoundError(
                f"SaveModelCallback: the best epoch's weights {path} are gone: was the models "
                "folder removed during the fit? Train again to write them"
            )
        learn.model.load_state_dict(load_file(str(path), device=str(learn.dls.device)))
        opt_path = path.with_suffix(".opt.pt")
        if self.with_opt and opt_path.is_file():
            learn.opt.load_state_dict(torch.load(opt_path, map_location="cpu", weights_only=True))


class ReduceLROnPlateau(_PatienceCallback):
    """Divides the learning rate by `factor` (never below `min_lr`) when `monitor` has not
    improved for `patience` epochs.

    The loop's per-step schedule (`learn.lr_sched`) is scaled from the next step to the end of
    the fit: with a one-cycle schedule the rest of the cycle keeps its shape, `factor` times
    lower, where fastai's schedule would overwrite the change at the next batch. A rate already
    at or under `min_lr` is left as it is."""

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Callable | None = None,
        min_delta: float = 0.0,
        patience: int = 1,
        factor: float = 10.0,
        min_lr: float = 0,
        reset_on_fit: bool = True,
    ) -> None:  # fastai's arguments, in fastai's order
        super().__init__(monitor, comp, min_delta, patience, reset_on_fit)
        self.factor, self.min_lr = factor, min_lr

    def out_of_patience(self, learn: Any, epoch: int, replay: bool) -> None:
        """Lower the rest of the schedule (a restored epoch too: the resumed fit starts from
        the full schedule)."""
        self.wait = 0
        sched, step = learn.lr_sched, (epoch + 1) * learn.n_iter
        if sched is None or step >= len(sched):
            return
        old = float(sched[step].reshape(-1)[-1])
        rest = sched[step:]
        sched[step:] = torch.where(
            rest > self.min_lr, (rest / self.factor).clamp_min(self.min_lr), rest
        )
        new = float(sched[step].reshape(-1)[-1])
        if new < old and not replay and distributed.is_main():
            print(f"Epoch {epoch}: reducing lr to {new}")
