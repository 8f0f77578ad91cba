"""Hyper-parameter schedules as pure math: annealing, one-cycle, discriminative LRs, fine_tune.

Nothing here touches a model: the Learner asks for per-step learning rates and momentums
(`one_cycle_lrs`, `one_cycle_moms`), writes them into its optimizer (`set_hypers`), and follows
the phases of `fine_tune_plan`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "sched_lin",
    "sched_cos",
    "sched_exp",
    "sched_no",
    "combined_cos",
    "one_cycle_lrs",
    "one_cycle_moms",
    "discriminative_lrs",
    "set_hypers",
    "FitPhase",
    "FineTuneArgs",
    "fine_tune_plan",
]

Number = float | Tensor
LR = float | slice | Sequence[float] | Tensor


def sched_lin(start: Number, end: Number, pos: Number) -> Number:
    """Linear from `start` (pos=0) to `end` (pos=1)."""
    return start + pos * (end - start)


def sched_cos(start: Number, end: Number, pos: Number) -> Number:
    """Half a cosine from `start` (pos=0) to `end` (pos=1): flat at both ends."""
    cos = torch.cos if isinstance(pos, Tensor) else math.cos
    return start + (1 + cos(math.pi * (1 - pos))) * (end - start) / 2


def sched_exp(start: Number, end: Number, pos: Number) -> Number:
    """Geometric from `start` (pos=0) to `end` (pos=1); both must be positive."""
    return start * (end / start) ** pos


def sched_no(start: Number, end: Number, pos: Number) -> Number:
    """Constant `start`."""
    return start + 0 * pos


def combined_cos(
    pct: float, start: Number, middle: Number, end: Number
) -> Callable[[Number], Number]:
    """A schedule of pos in [0, 1]: cosine `start`→`middle` over [0, pct], then `middle`→`end`."""

    def sched(pos: Number) -> Number:
        if not isinstance(pos, Tensor):
            if pos < pct:
                return sched_cos(start, middle, pos / pct)
            return sched_cos(middle, end, (pos - pct) / (1 - pct)) if pct < 1 else middle
        # Both halves are evaluated everywhere, so keep their positions inside [0, 1].
        up_pos = (pos / pct).clamp(0, 1) if pct > 0 else torch.ones_like(pos)
        down_pos = ((pos - pct) / (1 - pct)).clamp(0, 1) if pct < 1 else torch.zeros_like(pos)
        return torch.where(
            pos < pct, sched_cos(start, middle, up_pos), sched_cos(middle, end, down_pos)
        )

    return sched


def _positions(total_steps: int) -> Tensor:
    """Step positions in [0, 1]: the first step at 0, the last at 1."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, not {total_steps}")
    return torch.linspace(0, 1, total_steps, dtype=torch.float64)


def one_cycle_lrs(
    lr_max: float | Sequence[float] | Tensor,
    total_steps: int,
    pct_start: float = 0.25,
    div: float = 25.0,
    div_final: float = 1e5,
) -> Tensor:
    """Per-step one-cycle learning rates: cosine lr_max/div → lr_max, then → lr_max/div_final.

    A float `lr_max` gives shape (total_steps,); one lr per param group gives (total_steps, G).
    """
    lr = torch.as_tensor(lr_max, dtype=torch.float64)
    pos = _positions(total_steps)
    if lr.ndim:
        pos = pos[:, None]
    return combined_cos(pct_start, lr / div, lr, lr / div_final)(pos)


def one_cycle_moms(
    total_steps: int,
    pct_start: float = 0.25,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
) -> Tensor:
    """Per-step momentum (Adam's beta1): cosine down from moms[0] to moms[1], back to moms[2]."""
    return combined_cos(pct_start, *moms)(_positions(total_steps))


def discriminative_lrs(lr: LR, n_groups: int) -> list[float]:
    """One learning rate per param group, body first and head last.

    A float gives every group `lr`; `slice(hi)` gives hi/10 to all groups but the last, which
    gets hi; `slice(lo, hi)` spaces the rates geometrically from lo (first) to hi (last).
    A sequence of `n_groups` rates is returned as floats.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, not {n_groups}")
    if isinstance(lr, slice):
        lo, hi = lr.start, lr.stop
        if hi is None:
            raise ValueError(f"a learning-rate slice needs a stop (the head's lr): {lr}")
        if lo is None:
            return [hi / 10] * (n_groups - 1) + [float(hi)]
        if n_groups == 1:
            return [float(hi)]
        return [float(lo * (hi / lo) ** (i / (n_groups - 1))) for i in range(n_groups)]
    if np.ndim(lr) == 0:
        return [float(lr)] * n_groups
    lrs = [float(o) for o in lr]
    if len(lrs) != n_groups:
        raise ValueError(f"got {len(lrs)} learning rates for {n_groups} param groups")
    return lrs


def set_hypers(
    optimizer: torch.optim.Optimizer,
    lrs: float | Sequence[float] | Tensor,
    mom: float | None = None,
) -> None:
    """Write per-group learning rates and, if given, the momentum (beta1 for Adam-style)."""
    groups = optimizer.param_groups
    lrs = discriminative_lrs(lrs, len(groups))
    for group, lr in zip(groups, lrs):
        group["lr"] = lr
        if mom is None:
            continue
        if "betas" in group:
            group["betas"] = (float(mom), *group["betas"][1:])
        elif "momentum" in group:
            group["momentum"] = float(mom)


@dataclass(frozen=True)
class FitPhase:
    """One phase of a training call: body frozen or not, epochs, lr, schedule shape.

    `frozen=None` leaves the model's freezing as it is (`fit`, `fit_one_cycle`). `kind` is
    `"one_cycle"` (warm up, anneal; momentum `moms` cycles the other way when given) or
    `"constant"` (the lr throughout; `pct_start`, `div`, `div_final`, `moms` unused).
    """

    frozen: bool | None
    epochs: int
    lr: float | slice | tuple[float, ...]
    pct_start: float
    div: float
    div_final: float = 1e5
    moms: tuple[float, float, float] | None = None
    kind: str = "one_cycle"

    def __post_init__(self) -> None:
        if self.kind not in ("one_cycle", "constant"):
            raise ValueError(f"unknown phase kind {self.kind!r}: use 'one_cycle' or 'constant'")

    def lrs(self, n_groups: int, steps_per_epoch: int) -> Tensor:
        """Per-step, per-group learning rates of this phase, shape (epochs * steps, n_groups)."""
        return self._lrs(n_groups, self.epochs * steps_per_epoch)

    def schedule(self, n_groups: int, steps_per_epoch: int) -> tuple[Tensor, Tensor | None]:
        """Per-step learning rates (steps, n_groups) and momentums (steps,) or None; at least
        one step, so a phase of no batch still has a rate to start from."""
        steps = max(1, self.epochs * steps_per_epoch)
        lrs = self._lrs(n_groups, steps)
        if self.kind == "constant" or self.moms is None:
            return lrs, None
        return lrs, one_cycle_moms(steps, self.pct_start, self.moms)

    def _lrs(self, n_groups: int, total: int) -> Tensor:
        lr_max = discriminative_lrs(self.lr, n_groups)
        if self.kind == "constant":
            return torch.tensor([lr_max] * total, dtype=torch.float64)
        return one_cycle_lrs(lr_max, total, self.pct_start, self.div, self.div_final)


@dataclass(frozen=True)
class FineTuneArgs:
    """The schedule arguments of `fine_tune`; the defaults are fastai's, and `Learner.fine_tune`
    takes its defaults from here."""

    epochs: int
    base_lr: float = 2e-3
    freeze_epochs: int = 1
    lr_mult: float = 100
    pct_start: float = 0.3
    div: float = 5.0


def fine_tune_plan(args: FineTuneArgs) -> list[FitPhase]:
    """The phases of `fine_tune`: train the head with the body frozen, then everything.

    Frozen: `freeze_epochs` one-cycle epochs at `base_lr` warming up almost all the way
    (pct_start=0.99). Unfrozen: `epochs` one-cycle epochs at half that rate for the head and
    `lr_mult` times less for the first body group.
    """
    plan = []
    if args.freeze_epochs > 0:
        plan.append(FitPhase(True, args.freeze_epochs, args.base_lr, 0.99, args.div))
    lr = args.base_lr / 2
    if args.epochs > 0:
        unfrozen = slice(lr / args.lr_mult, lr)
        plan.append(FitPhase(False, args.epochs, unfrozen, args.pct_start, args.div))
    return plan
