"""The training loop: a plan's phases, each a run of epochs of steps, with callbacks and
checkpoints.

`run_plan` follows a `TrainingPlan` (freezing, schedule, weight decay), writing a checkpoint
after every epoch when asked and continuing a killed run from one; `run_epochs` is the loop
itself: per-step learning rates and momentums into the optimiser, one `Learner.train_step` per
batch, validation and the callbacks' hooks (see `Callback`) around each.

A callback steers the loop by raising one of fastai's `Cancel*Exception`s: the batch, the
epoch's training or validation, the epoch or the fit ends there and the matching
`after_cancel_*` hook runs. Every epoch that started gets a recorder row and an `after_epoch`
(a skipped validation leaves its columns None); a `CancelFitException` from `after_epoch`
takes effect once every callback has seen that epoch, and one from anywhere else drops the
epoch in progress. `after_fit` always runs; then the checkpoint marks the fit as done, with
the weights `after_fit` left (e.g. the best epoch's, restored by `SaveModelCallback`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imageblocks import runtime
from imageblocks.learn import callbacks, distributed
from imageblocks.learn.callbacks import Callback, as_callbacks
from imageblocks.learn.checkpoint import Checkpointer, check_plan, load_checkpoint, restore
from imageblocks.learn.optimizer import set_group_hypers, weight_decay
from imageblocks.learn.plan import TrainingPlan
from imageblocks.learn.progress import ProgressTable

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner


def run_plan(learn: Learner, plan: TrainingPlan, cbs: Any, checkpoint: Any, resume: Any) -> None:
    """Run the plan's phases, checkpointing after every epoch when `checkpoint` is a path, or
    continuing a killed run from the checkpoint `resume`; the plan's weight decay holds for
    this call only (the optimiser, its state and `learn.wd` stay)."""
    state = None
    if resume is not None:
        state = load_checkpoint(resume)
        check_plan(state, plan, resume)
        checkpoint = checkpoint if checkpoint is not None else resume
    checkpointer = Checkpointer(Path(checkpoint), plan) if checkpoint else None
    cbs = as_callbacks(cbs)
    if learn.opt is None:
        learn.create_opt()
    learn.plan = plan
    try:
        with weight_decay(learn.opt, plan.wd):
            _run_phases(learn, plan, cbs, state, checkpointer)
    finally:
        runtime.release_kept_memory()


def _run_phases(
    learn: Learner,
    plan: TrainingPlan,
    cbs: Sequence[Callback],
    state: dict | None,
    checkpointer: Checkpointer | None,
) -> None:
    """The plan's phases, from the one a restored checkpoint was in."""
    for k, phase in enumerate(plan.phases):
        if state is not None and k < state["phase"]:
            continue
        if phase.frozen is not None:
            learn.freeze() if phase.frozen else learn.unfreeze()
        start, recorder_state = 0, None
        if state is not None:  # the phase the killed run was in
            restore(learn, state)
            start, recorder_state, state = state["epoch"], state["recorder"], None
            if start >= phase.epochs:
                continue
        if checkpointer is not None:
            checkpointer.phase = k
        learn.phase = k
        lrs, moms = phase.schedule(len(learn.layer_groups()), len(learn.dls.train))
        run_epochs(learn, phase.epochs, lrs, moms, cbs, start, recorder_state, checkpointer)


def run_epochs(
    learn: Learner,
    n_epoch: int,
    lrs: torch.Tensor,
    moms: torch.Tensor | None,
    cbs: Sequence[Callback] = (),
    start_epoch: int = 0,
    recorder_state: dict | None = None,
    checkpointer: Checkpointer | None = None,
) -> None:
    """The loop: per-step hyper-parameters from `lrs` (steps, groups) and `moms` (steps,).

    `start_epoch`/`recorder_state` continue a run restored from a checkpoint: the recorder holds
    the epochs before it when the other callbacks' `before_fit` runs. `learn.lr_sched` is `lrs`:
    a callback may change the rates of the steps to come (`ReduceLROnPlateau` does)."""
    if learn.opt is None:
        learn.create_opt()
    train = distributed.shard_loader(learn.dls.train)
    if len(train) == 0:
        raise ValueError("the training loader has no batch: use a smaller batch size")
    use_scaler = learn.autocast_dtype == torch.float16 and learn.dls.device.type == "cuda"
    learn.grad_scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    table = [ProgressTable()] if distributed.is_main() else []
    others = sorted([*learn.cbs, *as_callbacks(cbs), *table], key=lambda c: c.order)
    fit = _Fit(learn, train, moms, [learn.recorder, *others])
    learn.n_iter, learn.lr_sched, learn.epoch, learn.iter = len(train), lrs, start_epoch, 0
    try:
        learn.recorder.before_fit(learn)
        if recorder_state is not None:
            learn.recorder.load_state_dict(recorder_state)
        for cb in others:
            cb.before_fit(learn)
        for epoch in range(start_epoch, n_epoch):
            learn.epoch = epoch
            fit.epoch()
            if checkpointer is not None and distributed.is_main() and epoch + 1 < n_epoch:
                checkpointer.save(learn, epoch + 1, n_epoch)
    except callbacks.CancelFitException:
        fit("after_cancel_fit")
    except KeyboardInterrupt:
        print(_interrupted_message(learn, checkpointer), file=sys.stderr, flush=True)
        raise
    finally:
        learn.grad_scaler = None
        fit("after_fit")
    if checkpointer is not None and distributed.is_main():  # the fit is done (or cancelled)
        checkpointer.save(learn, n_epoch, n_epoch)


@dataclass
class _Fit:
    """One fit's epochs: the learner, its training batches, momentums and callbacks in order
    (the learning rates are `learn.lr_sched`)."""

    learn: Learner
    train: Any
    moms: torch.Tensor | None
    cbs: list[Callback]

    def __call__(self, event: str) -> None:
        """Call the hook `event` of every callback, in order."""
        for cb in self.cbs:
            getattr(cb, event)(self.learn)

    def epoch(self) -> None:
        """One epoch: training, validation, its recorder row and `after_epoch`."""
        learn, t0, valid = self.learn, time.perf_counter(), None
        try:
            self("before_epoch")
            self.train_epoch()
            valid = self.validate()
        except callbacks.CancelEpochException:
            self("after_cancel_epoch")
        learn.epoch_time = time.perf_counter() - t0
        if valid is None:  # no validation set, or validation cancelled
            valid = [None] * (1 + len(learn.metrics))
        learn.recorder.add_epoch([learn.recorder.smooth_loss, *valid])
        stop = None
        for cb in self.cbs:  # all see the epoch before a CancelFitException ends the fit
            try:
                cb.after_epoch(learn)
            except callbacks.CancelFitException as e:
                stop = e
        if stop is not None:
            raise stop

    def train_epoch(self) -> None:
        """The epoch's training steps, between `before_train` and `after_train`."""
        learn, lrs = self.learn, self.learn.lr_sched
        learn.model.train()
        try:
            self("before_train")
            for i, b in enumerate(self.train):
                learn.iter, learn.train_iter = i, learn.epoch * learn.n_iter + i
                step = min(learn.train_iter, len(lrs) - 1)
                mom = None if self.moms is None else float(self.moms[step])
                set_group_hypers(learn.opt, lrs[step], mom)
                try:
                    self("before_batch")
                    learn.loss = learn.train_step(b)
                    learn.recorder.add_batch(learn.loss, float(lrs[step][-1]), mom)
                except callbacks.CancelBatchException:
                    self("after_cancel_batch")
                self("after_batch")
        except callbacks.CancelTrainException:
            self("after_cancel_train")
        self("after_train")

    def validate(self) -> list[float] | None:
        """`[valid_loss, *metrics]`, between `before_validate` and `after_validate`; None when
        there is no validation set or a callback cancelled it."""
        valid = None
        try:
            self("before_validate")
            if len(self.learn.dls.valid.dataset):
                valid = list(self.learn.validate())
        except callbacks.CancelValidException:
            self("after_cancel_validate")
        self("after_validate")
        return valid


def _interrupted_message(learn: Learner, checkpointer: Checkpointer | None) -> str:
    """Where training stopped, and how to continue it."""
    msg = f"training interrupted in epoch {learn.epoch}, batch {learn.iter}"
    if checkpointer is not None and checkpointer.path.is_file():
        return f"{msg}; the last completed epoch is saved: resume with resume='{checkpointer.path}'"
    return f"{msg}; no checkpoint was written (pass checkpoint='file.pt' to keep epochs)"
