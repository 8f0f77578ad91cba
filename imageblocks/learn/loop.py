"""The training loop: a plan's phases, each a run of epochs of steps, with callbacks and
checkpoints.

`run_plan` follows a `TrainingPlan` (freezing, schedule, weight decay), writing a checkpoint
after every epoch when asked and continuing a killed run from one; `run_epochs` is the loop
itself: per-step learning rates and momentums into the optimiser, one `Learner.train_step` per
batch, validation and the callbacks' hooks after each epoch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imageblocks.learn import distributed
from imageblocks.learn.callbacks import Callback
from imageblocks.learn.checkpoint import Checkpointer, check_plan, load_checkpoint, restore
from imageblocks.learn.optimizer import set_group_hypers, weight_decay
from imageblocks.learn.plan import TrainingPlan
from imageblocks.learn.progress import ProgressTable

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner


def run_plan(
    learn: Learner, plan: TrainingPlan, cbs: Sequence[Callback], checkpoint: Any, resume: Any
) -> None:
    """Run the plan's phases, checkpointing after every epoch when `checkpoint` is a path, or
    continuing a killed run from the checkpoint `resume`; the plan's weight decay holds for
    this call only (the optimiser, its state and `learn.wd` stay)."""
    state = None
    if resume is not None:
        state = load_checkpoint(resume)
        check_plan(state, plan, resume)
        checkpoint = checkpoint if checkpoint is not None else resume
    checkpointer = Checkpointer(Path(checkpoint), plan) if checkpoint else None
    if learn.opt is None:
        learn.create_opt()
    with weight_decay(learn.opt, plan.wd):
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

    `start_epoch`/`recorder_state` continue a run restored from a checkpoint."""
    if learn.opt is None:
        learn.create_opt()
    train = distributed.shard_loader(learn.dls.train)
    if len(train) == 0:
        raise ValueError("the training loader has no batch: use a smaller batch size")
    use_scaler = learn.autocast_dtype == torch.float16 and learn.dls.device.type == "cuda"
    learn.grad_scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    table = [ProgressTable()] if distributed.is_main() else []
    callbacks = sorted([learn.recorder, *learn.cbs, *cbs, *table], key=lambda c: c.order)
    learn.n_iter = len(train)
    for cb in callbacks:
        cb.before_fit(learn)
    if recorder_state is not None:
        learn.recorder.load_state_dict(recorder_state)
    try:
        for epoch in range(start_epoch, n_epoch):
            learn.epoch = epoch
            t0 = time.perf_counter()
            for cb in callbacks:
                cb.before_epoch(learn)
            learn.model.train()
            for i, b in enumerate(train):
                learn.iter = i
                step = min(learn.epoch * learn.n_iter + learn.iter, len(lrs) - 1)
                mom = None if moms is None else float(moms[step])
                set_group_hypers(learn.opt, lrs[step], mom)
                loss = learn.train_step(b)
                learn.recorder.add_batch(loss, float(lrs[step][-1]), mom)
                for cb in callbacks:
                    cb.after_batch(learn)
            for cb in callbacks:
                cb.after_train(learn)
            valid = learn.validate() if len(learn.dls.valid.dataset) else [None]
            learn.epoch_time = time.perf_counter() - t0
            learn.recorder.add_epoch([learn.recorder.smooth_loss, *valid])
            for cb in callbacks:
                cb.after_epoch(learn)
            if checkpointer is not None and distributed.is_main():
                checkpointer.save(learn, epoch + 1, n_epoch)
    except KeyboardInterrupt:
        print(_interrupted_message(learn, checkpointer), file=sys.stderr, flush=True)
        raise
    finally:
        learn.grad_scaler = None
        for cb in callbacks:
            cb.after_fit(learn)


def _interrupted_message(learn: Learner, checkpointer: Checkpointer | None) -> str:
    """Where training stopped, and how to continue it."""
    msg = f"training interrupted in epoch {learn.epoch}, batch {learn.iter}"
    if checkpointer is not None and checkpointer.path.is_file():
        return f"{msg}; the last completed epoch is saved: resume with resume='{checkpointer.path}'"
    return f"{msg}; no checkpoint was written (pass checkpoint='file.pt' to keep epochs)"
