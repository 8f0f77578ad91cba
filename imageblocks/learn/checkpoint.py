"""Training checkpoints: a run's whole state written atomically after every epoch, so a killed
run continues from its last completed epoch.

A checkpoint holds the model and optimiser states, where the run is in its schedule (phase and
epoch), the recorder and the random generators' states, and in a budgeted run the seconds of the
budget used (`budget_used`). It is written with `torch.save` to a temporary file that is then
renamed over the old one (a crash never leaves a half-written checkpoint) and read back with
`weights_only=True`: only tensors, numbers and strings, no code runs on load. Exports (`learn.export`) are the format for sharing a model; checkpoints are for
resuming your own run.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imageblocks.errors import ImageblocksError
from imageblocks.learn.plan import TrainingPlan
from imageblocks.utils import atomic_write

FORMAT = 1


class CheckpointError(ImageblocksError, RuntimeError):
    """A checkpoint that cannot be read, or that belongs to a different training call."""


@dataclass
class Checkpointer:
    """Where a training call writes its checkpoints, and which call and phase is running."""

    path: Path
    plan: TrainingPlan  # the training call with its arguments: a resume must repeat it
    phase: int = 0

    def save(self, learn: Any, epoch: int, n_epoch: int) -> Path:
        """Write the learner's state after `epoch` completed epochs of `n_epoch` in this phase."""
        state = {
            "format": FORMAT,
            "plan": self.plan.to_dict(),
            "phase": self.phase,
            "epoch": epoch,
            "n_epoch": n_epoch,
            "n_iter": learn.n_iter,
            "model": learn.model.state_dict(),
            "opt": learn.opt.state_dict(),
            "recorder": learn.recorder.state_dict(),
            "rng": rng_state(),
        }
        budget = getattr(learn.lr_sched, "budget", None)  # a schedule following a budget's clock
        if budget is not None:
            state["budget_used"] = float(budget.used())  # a resumed run keeps what is left
        return atomic_save(state, self.path)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` `obj` to `path` atomically (`atomic_write`): a Ctrl-C or a full disk
    mid-write leaves the old checkpoint intact."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Any) -> dict[str, Any]:
    """Read a checkpoint written by `fit(..., checkpoint=path)` (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: resume from the file that `checkpoint=` (CLI: the output "
            "folder's checkpoint.pt) wrote, or start the run without resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({type(e).__name__}): the file is truncated or not "
            "an imageblocks checkpoint; delete it and start the run again"
        ) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not an imageblocks checkpoint")
    fmt = state["format"]
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise CheckpointError(
            f"{path}: 'format' is {type(fmt).__name__} {str(fmt)[:40]!r}, not a checkpoint format "
            "number: the file is not an imageblocks checkpoint; delete it and start the run again"
        )
    if fmt > FORMAT:
        raise CheckpointError(
            f"{path} was written by a newer imageblocks (checkpoint format {fmt}, this "
            f"version reads {FORMAT}): upgrade imageblocks to resume it"
        )
    _check_fields(state, path)
    return state


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# what each field of a checkpoint must be, and how to say it
_FIELDS: dict[str, tuple[Any, str]] = {
    "plan": (lambda v: isinstance(v, (dict, str)), "the training call (a dict)"),
    "phase": (_is_count, "a count (an integer >= 0)"),
    "epoch": (_is_count, "a count (an integer >= 0)"),
    "n_epoch": (_is_count, "a count (an integer >= 0)"),
    "n_iter": (_is_count, "a count (an integer >= 0)"),
    "model": (
        lambda v: isinstance(v, dict)
        and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()),
        "the model's state (names to tensors)",
    ),
    "opt": (
        lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
        and isinstance(v.get("param_groups"), list),
        "an optimiser state (state, param_groups)",
    ),
    "recorder": (
        lambda v: isinstance(v, dict)
        and all(isinstance(v.get(k), list) for k in ("lrs", "moms", "losses", "values", "iters"))
        and isinstance(v.get("smooth"), list) and len(v["smooth"]) == 2,
        "the recorder's state (lrs, moms, losses, values, iters, smooth)",
    ),
    "rng": (
        lambda v: isinstance(v, dict)
        and isinstance(v.get("torch"), torch.Tensor)
        and isinstance(v.get("cuda"), list)
        and isinstance(v.get("python"), list) and len(v["python"]) == 3
        and isinstance(v.get("numpy"), list) and len(v["numpy"]) == 5,
        "the random generators' states (torch, cuda, python, numpy)",
    ),
}  # fmt: skip


def _check_fields(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint with a missing or wrongly typed field, naming it."""
    for key, (ok, what) in _FIELDS.items():
        if key not in state or not ok(state[key]):
            got = "missing" if key not in state else f"a {type(state[key]).__name__}"
            raise CheckpointError(
                f"{path}: field {key!r} must be {what}, but it is {got}: the file is not a "
                "checkpoint this imageblocks wrote; delete it and start the run again"
            )
    if state["epoch"] > state["n_epoch"]:
        raise CheckpointError(
            f"{path}: epoch {state['epoch']} is past the phase's n_epoch {state['n_epoch']}: "
            "the file is damaged; delete it and start the run again"
        )


def check_plan(state: dict[str, Any], plan: TrainingPlan, path: Any) -> None:
    """Refuse to resume a checkpoint into a different training call, naming what differs."""
    saved = state["plan"]
    if not isinstance(saved, dict):  # before plans were data: the call as text
        raise CheckpointError(
            f"the checkpoint {path} was written by an earlier imageblocks (`{saved}`): resume it "
            "with that version, or start afresh without resume"
        )
    diffs = plan.differences(saved)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise CheckpointError(
            f"the checkpoint {path} belongs to a different training call (it was "
            f"{saved.get('call')}, this is {plan.call}; {shown}): resume with the same call and "
            "arguments, or start afresh without resume"
        )


def rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), Python's and NumPy's global generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, torch.tensor(mt, dtype=torch.int64), python_gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in mt.tolist()), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def restore(learn: Any, state: dict[str, Any]) -> None:
    """Load a checkpoint's model, optimiser and generator states into `learn`."""
    try:
        learn.model.load_state_dict(state["model"])
        if learn.opt is None:
            learn.create_opt()
        learn.opt.load_state_dict(state["opt"])
        set_rng_state(state["rng"])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"the checkpoint does not fit this learner ({type(e).__name__}: {first[:200]}): it "
            "was written for another model or optimiser; resume with the same model and call, "
            "or start afresh without resume"
        ) from None
