"""The LR range test: LR steps, smoothing, stopping, the test itself, suggestions, plot.

`range_test` trains a learner for up to `num_it` batches with exponentially growing learning
rates (`exponential_lrs`), smooths the losses (`LossSmoother`, or `smooth_losses` for a whole
curve), stops on divergence (`should_stop`) and puts the model and optimiser back;
`Learner.lr_find` then calls `suggest` and `plot_lr_find` on what it recorded.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from imageblocks.learn import distributed
from imageblocks.learn.optimizer import set_group_hypers
from imageblocks.utils import callable_name

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner

__all__ = [
    "exponential_lrs",
    "range_test",
    "smooth_losses",
    "LossSmoother",
    "should_stop",
    "minimum",
    "steep",
    "valley",
    "slide",
    "SuggestedLRs",
    "suggest",
    "plot_lr_find",
]

Curve = Sequence[float] | Tensor | np.ndarray


def exponential_lrs(start_lr: float = 1e-7, end_lr: float = 10, num_it: int = 100) -> Tensor:
    """`num_it` learning rates growing geometrically from `start_lr` to `end_lr` (both included)."""
    return torch.logspace(math.log10(start_lr), math.log10(end_lr), num_it, dtype=torch.float64)


def smooth_losses(raw: Curve, beta: float = 0.98) -> Tensor:
    """Exponential moving average of `raw`, debiased so the first values are not pulled to 0."""
    smoother = LossSmoother(beta)
    return torch.tensor([smoother(float(x)) for x in _np(raw)], dtype=torch.float64)


class LossSmoother:
    """Online version of `smooth_losses`: call it with each raw loss, get the smoothed one."""

    def __init__(self, beta: float = 0.98):
        self.beta, self.avg, self.count = beta, 0.0, 0

    def __call__(self, loss: float) -> float:
        self.count += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * float(loss)
        return self.avg / (1 - self.beta**self.count)


def should_stop(
    loss: float, best_loss: float, it: int, num_it: int | None = None, div_factor: float = 4.0
) -> bool:
    """True when the range test should end after iteration `it` (0-based).

    It ends when the smoothed loss is NaN/inf or above `div_factor` × the best so far
    (diverged), or when `num_it` iterations are done.
    """
    loss = float(loss)
    if not math.isfinite(loss) or loss > div_factor * float(best_loss):
        return True
    return num_it is not None and it + 1 >= num_it


def range_test(
    learn: Learner,
    start_lr: float = 1e-7,
    end_lr: float = 10,
    num_it: int = 100,
    stop_div: bool = True,
) -> tuple[list[float], list[float]]:
    """Train `learn` with exponentially growing rates until the loss diverges (or `num_it`
    batches); the finite (lr, smoothed loss) points. The model and optimiser are put back."""
    if learn.opt is None:
        learn.create_opt()
    state = copy.deepcopy(learn.model.state_dict())
    opt_state = copy.deepcopy(learn.opt.state_dict())
    lrs_sched = exponential_lrs(start_lr, end_lr, num_it)
    n_groups = len(learn.layer_groups())
    smoother, lrs, losses, best = LossSmoother(0.98), [], [], float("inf")
    train = distributed.shard_loader(learn.dls.train)
    if len(train) == 0:
        raise ValueError("the training loader has no batch: use a smaller batch size")
    learn.model.train()
    it = 0
    try:
        while it < num_it:
            for b in train:
                lr = float(lrs_sched[it])
                set_group_hypers(learn.opt, [lr] * n_groups, None)
                try:
                    raw = learn.train_step(b)
                except FloatingPointError:
                    raw = float("nan")
                smooth = smoother(raw) if np.isfinite(raw) else float("nan")
                lrs.append(lr)
                losses.append(smooth)
                if np.isfinite(smooth):
                    best = min(best, smooth)
                if stop_div and should_stop(smooth, best, it, num_it):
                    it = num_it
                    break
                it += 1
                if it >= num_it:
                    break
    finally:
        learn.model.load_state_dict(state)
        learn.opt.load_state_dict(opt_state)
    finite = [(a, b) for a, b in zip(lrs, losses) if np.isfinite(b)]
    return [a for a, _ in finite], [b for _, b in finite]


def _np(x: Curve) -> np.ndarray:
    """A float64 numpy copy of a list or tensor."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _curve(lrs: Curve, losses: Curve) -> tuple[np.ndarray, np.ndarray]:
    """lrs and losses as numpy arrays with non-finite losses dropped."""
    lrs, losses = _np(lrs), _np(losses)
    if len(lrs) != len(losses):
        raise ValueError(f"{len(lrs)} learning rates but {len(losses)} losses")
    keep = np.isfinite(losses) & (lrs > 0)
    if not keep.any():
        raise ValueError("no finite loss recorded: the range test diverged at once")
    return lrs[keep], losses[keep]


def minimum(lrs: Curve, losses: Curve) -> float:
    """A tenth of the learning rate with the lowest loss."""
    lrs, losses = _curve(lrs, losses)
    return float(lrs[np.argmin(losses)] / 10)


def steep(lrs: Curve, losses: Curve) -> float:
    """The learning rate where the loss falls fastest against log(lr)."""
    lrs, losses = _curve(lrs, losses)
    if len(lrs) < 2:
        return float(lrs[0])
    slope = np.gradient(losses, np.log10(lrs))
    return float(lrs[np.argmin(slope)])


def _longest_descent(y: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest strictly decreasing subsequence of `y`."""
    n = len(y)
    length = np.ones(n, dtype=int)
    prev = np.full(n, -1)
    for i in range(1, n):
        higher = np.flatnonzero(y[:i] > y[i])
        if len(higher):
            # Among equally long chains take the latest, so a plateau adds one point, not its width.
            j = higher[len(higher) - 1 - np.argmax(length[higher][::-1])]
            length[i], prev[i] = length[j] + 1, j
    end = start = int(np.argmax(length))
    while prev[start] >= 0:
        start = int(prev[start])
    return start, end


def valley(lrs: Curve, losses: Curve) -> float:
    """A learning rate two thirds of the way down the longest descent of the loss curve."""
    lrs, losses = _curve(lrs, losses)
    start, end = _longest_descent(losses)
    return float(lrs[start + round((end - start) * 2 / 3)])


def slide(
    lrs: Curve, losses: Curve, lr_diff: int = 15, thresh: float = 0.005, adjust_value: float = 1.0
) -> float:
    """Walk left from the lowest loss until a window of `lr_diff` points has an even slope.

    The slope (loss change per step) is compared at both ends of the window; when the two
    differ by at most `thresh` the window lies on the steady part of the descent, and its
    left end, times `adjust_value`, is the suggestion.
    """
    lrs, losses = _curve(lrs, losses)
    if len(losses) < 2:
        return float(lrs[0] * adjust_value)
    grad = np.gradient(losses)
    right = int(np.argmin(losses))
    left = right - lr_diff
    while left > 0 and abs(grad[right] - grad[left]) > thresh:
        left, right = left - 1, right - 1
    return float(lrs[max(left, 0)] * adjust_value)


@functools.cache
def _suggested_type(names: tuple[str, ...]) -> type:
    """The namedtuple class for these field names (one class per set of names)."""
    return namedtuple("SuggestedLRs", names)


def SuggestedLRs(**lrs: float) -> tuple:
    """A named tuple of suggested learning rates, e.g. `SuggestedLRs(valley=0.0012)`."""
    return _suggested_type(tuple(lrs))(**lrs)


def _field_names(funcs: Sequence[Callable]) -> list[str]:
    """Valid, unique namedtuple field names for the suggestion functions."""
    names: list[str] = []
    for f in funcs:
        name = re.sub(r"\W", "_", callable_name(f)).strip("_") or "suggestion"
        if name[0].isdigit():
            name = f"lr_{name}"
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def suggest(
    lrs: Curve,
    losses: Curve,
    funcs: Sequence[Callable] = (valley,),
    skip_start: int | None = None,
    skip_end: int = 5,
) -> tuple[tuple, list[tuple[float, float]]]:
    """Run each suggestion function; return `SuggestedLRs(...)` and an (lr, loss) point for each.

    The first `skip_start` points (default a tenth: the average is still settling) and the last
    `skip_end` (usually the blow-up) are left out, unless that would leave fewer than 3 points.
    """
    lrs, losses = _curve(lrs, losses)
    lo = len(lrs) // 10 if skip_start is None else skip_start
    hi = len(lrs) - skip_end
    if hi - lo >= 3:
        lrs, losses = lrs[lo:hi], losses[lo:hi]
    values = [float(f(lrs, losses)) for f in funcs]
    log_lrs = np.log10(lrs)
    points = [(v, float(np.interp(math.log10(v), log_lrs, losses))) for v in values]
    return SuggestedLRs(**dict(zip(_field_names(funcs), values))), points


def plot_lr_find(
    lrs: Curve,
    losses: Curve,
    suggestions: tuple | Mapping[str, float] | None = None,
    points: Sequence[tuple[float, float]] | None = None,
    skip_end: int = 5,
    ax: Axes | None = None,
) -> Figure:
    """Loss against learning rate (log scale), each suggestion a coloured dot in the legend."""
    import matplotlib.pyplot as plt

    lrs, losses = _np(lrs), _np(losses)
    if skip_end and len(lrs) > skip_end:
        lrs, losses = lrs[:-skip_end], losses[:-skip_end]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    ax.plot(lrs, losses, color="C0")
    ax.set_xscale("log")
    ax.set_xlabel("Learning Rate")
    ax.set_ylabel("Loss")
    named: dict[str, Any]
    if suggestions is None:
        named = {}
    elif isinstance(suggestions, Mapping):
        named = dict(suggestions)
    else:
        named = suggestions._asdict()
    points = list(points or [])
    for k, (name, lr) in enumerate(named.items()):
        if k < len(points):
            x, y = points[k]
        else:
            x, y = lr, float(np.interp(math.log10(lr), np.log10(lrs), losses))
        ax.plot(x, y, "o", color=f"C{k + 1}", markersize=8, label=f"{name}: {lr:.2e}", zorder=3)
    if named:
        ax.legend()
    return fig
