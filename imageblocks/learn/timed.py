"""A schedule that follows the clock: phases that end at a time of a budget, not after a number
of steps fixed in advance.

`Budget` counts the seconds of a budget used (an injectable clock, plus what a resumed run had
used). A `TimedPhase` is a phase of a `TrainingPlan` (plain data, compared on resume): body
frozen or not, image size and batch size, learning rate, the span of budget seconds its
one-cycle schedule covers (one cycle may span several phases, e.g. progressive resizing) and
its deadline. Its `TimedSchedule` gives the loop the rates and momentum of each step from the
fraction of the cycle used when the step ends (indexable like the per-step tensors of a
`FitPhase`: `lrs[step]`, `moms[step]`), so however fast the steps really are, the cycle ends
annealed at the deadline. `TimeBudgetCallback` runs the phase at its size, stops its training
when the next step would pass the deadline (its last validation is reserved in it), ends the
phase and reports its actual time.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from imageblocks.data.sizing import set_input_size
from imageblocks.learn.callbacks import Callback, CancelFitException, CancelTrainException
from imageblocks.learn.schedule import combined_cos, discriminative_lrs
from imageblocks.utils import parse_duration

__all__ = ["Budget", "TimeBudgetCallback", "TimedPhase", "TimedSchedule", "timed_phase"]


class Budget:
    """Seconds of a time budget used since `start`, plus `before` (a resumed run's); `clock`
    is any monotonic seconds counter (tests pass a fake one)."""

    def __init__(self, seconds: float | str, clock: Callable[[], float] = time.perf_counter):
        self.seconds = parse_duration(seconds)
        self.clock = clock
        self.before = 0.0
        self._t0: float | None = None

    def start(self) -> Budget:
        """Start counting now (again: the count restarts); returns the budget."""
        self._t0 = self.clock()
        return self

    def used(self) -> float:
        """Seconds used: since `start` (0 before it) plus `before`."""
        return self.before + (0.0 if self._t0 is None else self.clock() - self._t0)

    def left(self) -> float:
        """Seconds left (negative once overrun)."""
        return self.seconds - self.used()


@dataclass(frozen=True)
class TimedPhase:
    """A phase that ends at `end` (seconds into the budget, its last validation of `valid_s`
    included), training at `size` (h, w) with batches of `bs`; its one-cycle schedule spans
    budget seconds `cycle` (start, end of training). `step_s` is the planned seconds a step
    (until real steps are timed); `epochs` is only a bound for the loop."""

    frozen: bool
    size: tuple[int, int]
    bs: int
    lr: float | slice | tuple[float, ...]
    start: float
    end: float
    valid_s: float
    cycle: tuple[float, float]
    step_s: float
    pct_start: float
    div: float
    div_final: float = 1e5
    moms: tuple[float, float, float] | None = None
    epochs: int = 1000

    @property
    def train_end(self) -> float:
        """When its training must stop: the deadline less its last validation."""
        return self.end - self.valid_s

    @property
    def ends_cycle(self) -> bool:
        """Whether its cycle anneals at its end (it is the cycle's last phase)."""
        return self.train_end >= self.cycle[1] - 1e-9

    def schedule(self, n_groups: int, steps_per_epoch: int) -> tuple[TimedSchedule, _Moms | None]:
        """Its rates and momentums per step (from the clock; `steps_per_epoch` is not needed)."""
        sched = TimedSchedule(self, n_groups)
        return sched, sched.moms


def timed_phase(d: Mapping[str, Any]) -> TimedPhase:
    """A `TimedPhase` from its plain form in a checkpoint (`TrainingPlan.to_dict`)."""
    d = dict(d)
    lr = d["lr"]
    if isinstance(lr, Mapping):
        lr = slice(lr["start"], lr["stop"])
    elif isinstance(lr, list):
        lr = tuple(lr)
    d.update(lr=lr, size=tuple(d["size"]), cycle=tuple(d["cycle"]))
    if d.get("moms") is not None:
        d["moms"] = tuple(d["moms"])
    return TimedPhase(**d)


class _Moms:
    """A `TimedSchedule`'s momentums, indexed by step like its rates."""

    def __init__(self, sched: TimedSchedule):
        self.sched = sched

    def __len__(self) -> int:
        return len(self.sched)

    def __getitem__(self, step: int) -> float:
        pos = self.sched.position(step)
        return float(combined_cos(self.sched.phase.pct_start, *self.sched.phase.moms)(pos))


class TimedSchedule:
    """Per-step rates (n_groups,) of a `TimedPhase` from the fraction of its cycle used when the
    step ends: the step's start time plus the median of the last steps' durations. The position
    of a step is fixed at its first use, so its rate and momentum agree; a cycle's last step
    (the next one would pass the deadline) gets exactly the final rate, lr / div_final."""

    def __init__(self, phase: TimedPhase, n_groups: int, budget: Budget | None = None):
        self.phase, self.budget = phase, budget
        self.lr_max = torch.tensor(discriminative_lrs(phase.lr, n_groups), dtype=torch.float64)
        self.moms = _Moms(self) if phase.moms is not None else None
        self.step_s = float(phase.step_s)
        self._durations: deque[float] = deque(maxlen=9)
        self._step, self._t, self._pos = -1, 0.0, 0.0

    def __len__(self) -> int:
        return sys.maxsize  # as many steps as the time allows

    def _now(self) -> float:
        if self.budget is None:
            raise RuntimeError(
                "a TimedPhase follows a budget's clock: run it with fine_tune_budget (or give "
                "its TimedSchedule a Budget through TimeBudgetCallback)"
            )
        return self.budget.used()

    def position(self, step: int) -> float:
        """Where `step` ends in the cycle, in [0, 1] (timed at its first use)."""
        if step != self._step:
            now = self._now()
            if self._step >= 0 and step == self._step + 1:
                self._durations.append(now - self._t)
                self.step_s = statistics.median(self._durations)
            self._step, self._t = step, now
            self._pos = self._cycle_position(now)
        return self._pos

    def _cycle_position(self, now: float) -> float:
        start, end = self.phase.cycle
        if self.phase.ends_cycle and now + 2 * self.step_s > end:
            return 1.0  # no step fits after this one: end annealed
        return min(1.0, max(0.0, (now + self.step_s - start) / max(end - start, 1e-9)))

    def __getitem__(self, step: int) -> torch.Tensor:
        p = self.phase
        lr = self.lr_max
        return combined_cos(p.pct_start, lr / p.div, lr, lr / p.div_final)(self.position(step))

    def time_up(self) -> bool:
        """Whether the step about to start would end past the phase's training deadline."""
        return self._now() + self.step_s > self.phase.train_end


class TimeBudgetCallback(Callback):
    """Runs each `TimedPhase` of a budgeted plan at its size, ends its training at its deadline
    and the phase once no epoch fits, and logs (and keeps in `phases`) each phase's actual time."""

    order = -10  # before the other callbacks see the phase

    def __init__(self, budget: Budget, log: Callable[[str], None] = print):
        self.budget, self.log = budget, log
        self.phases: list[dict[str, Any]] = []
        self._phase: TimedPhase | None = None
        self._t0, self._steps, self._epochs = 0.0, 0, 0

    def before_fit(self, learn: Any) -> None:
        phase = learn.plan.phases[learn.phase]
        sched = learn.lr_sched
        if not isinstance(phase, TimedPhase) or not isinstance(sched, TimedSchedule):
            raise TypeError("TimeBudgetCallback runs the TimedPhases of fine_tune_budget's plan")
        sched.budget = self.budget
        set_input_size(learn.dls, phase.size, phase.bs)
        self._phase, self._t0, self._steps, self._epochs = phase, self.budget.used(), 0, 0

    def before_batch(self, learn: Any) -> None:
        # a phase started late (a slow measurement or phase before it) still takes one step,
        # so its epoch has a training loss and a frozen head is not unfrozen untrained
        if self._steps and learn.lr_sched.time_up():
            raise CancelTrainException

    def after_batch(self, learn: Any) -> None:
        self._steps += 1

    def after_epoch(self, learn: Any) -> None:
        self._epochs += 1
        if learn.lr_sched.time_up():
            raise CancelFitException  # no step fits before the deadline: the phase is done

    def after_fit(self, learn: Any) -> None:
        phase = self._phase
        took = self.budget.used() - self._t0
        h, w = phase.size
        row = {
            "phase": learn.phase + 1,
            "frozen": phase.frozen,
            "size": [h, w],
            "planned_s": round(phase.end - phase.start, 2),
            "actual_s": round(took, 2),
            "ended_at_s": round(self.budget.used(), 2),
            "deadline_s": round(phase.end, 2),
            "steps": self._steps,
            "epochs": self._epochs,
        }
        self.phases.append(row)
        self.log(
            f"phase {row['phase']} ({'frozen' if phase.frozen else 'unfrozen'}, {h}x{w}): "
            f"{took:.1f} s for {row['planned_s']:.1f} s planned, {self._steps} steps, ended at "
            f"{row['ended_at_s']:.1f} s of the budget (deadline {phase.end:.1f} s)"
        )
