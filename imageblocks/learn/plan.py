"""A training call as data: its phases, batches per epoch and weight decay, compared on resume.

`fit`, `fit_one_cycle` and `fine_tune` each build a `TrainingPlan` with every default resolved
(the learner's lr, momentums and weight decay at the time of the call); `fine_tune_budget` one
of `TimedPhase`s, as measured and planned (a resume reuses it). A checkpoint stores the
plan as a plain dict (`to_dict`: numbers, strings, lists, no code), and a resume refuses a
checkpoint whose plan differs, naming each field that does (`differences`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imageblocks.learn.schedule import FitPhase
from imageblocks.learn.timed import TimedPhase

Plain = None | bool | int | float | str | list | dict


def plain(value: Any) -> Plain:
    """`value` as a checkpoint may hold it: a slice as {'start', 'stop'}, tensors and tuples as
    lists, numpy and torch scalars as Python numbers."""
    if isinstance(value, slice):
        return {"start": plain(value.start), "stop": plain(value.stop)}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def _flatten(value: Plain, prefix: str, out: dict[str, Plain]) -> dict[str, Plain]:
    """Leaf values by path: `phases[1].lr.stop`."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        out[f"{prefix}.count"] = len(value)
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value
    return out


@dataclass(frozen=True)
class TrainingPlan:
    """One training call: its name, its phases in order, batches per epoch, weight decay, and
    for a budgeted call (`fine_tune_budget`, phases that end at a time) its budget in seconds."""

    call: str
    phases: tuple[FitPhase | TimedPhase, ...]
    batches_per_epoch: int
    wd: float
    budget: float | None = None

    def to_dict(self) -> dict[str, Plain]:
        """The plan as plain data (what a checkpoint stores)."""
        out: dict[str, Plain] = {
            "call": self.call,
            "phases": [plain(dataclasses.asdict(p)) for p in self.phases],
            "batches_per_epoch": int(self.batches_per_epoch),
            "wd": float(self.wd),
        }
        if self.budget is not None:
            out["budget"] = float(self.budget)
        return out

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """What differs between a stored plan and this one, one `field: ...` text per field."""
        old, new = _flatten(plain(saved), "", {}), _flatten(self.to_dict(), "", {})
        return [
            f"{key}: the checkpoint has {_shown(old, key)}, this call {_shown(new, key)}"
            for key in dict.fromkeys([*old, *new])
            if key not in old or key not in new or old[key] != new[key]
        ]


def _shown(values: dict[str, Plain], key: str) -> str:
    """`values[key]` for a message, or `none` when the plan has no such field."""
    return repr(values[key]) if key in values else "none"
