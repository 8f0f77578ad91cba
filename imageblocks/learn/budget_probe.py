"""Measuring what training costs on this machine, before a budgeted run plans it.

`measure_steps` times a few real training steps (data loading included) at an image size,
frozen or not, and `measure_valid` a few validation batches, scaled to the whole pass; the
model, optimiser and loaders are left as they were (the steps train at a rate of 0 and the
states are restored). `StepCosts` holds the timings and predicts other sizes from them (time
grows with the pixels). On CUDA, `cuda_peak_bytes` measures a step's peak memory at a batch
size and `max_batch_size` picks the largest batch that fills the device. On every device,
`saved_activation_bytes` counts what autograd keeps for the backward pass of a training step
(the memory that grows with the image size and the batch), so that sizes a machine's memory
cannot hold are never tried.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from imageblocks.data.sizing import input_size, set_input_size
from imageblocks.learn.optimizer import set_group_hypers

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner

__all__ = [
    "StepCosts",
    "available_memory",
    "cuda_peak_bytes",
    "max_batch_size",
    "measure_steps",
    "measure_valid",
    "saved_activation_bytes",
]

Size = tuple[int, int]


def _pixels(size: Size) -> int:
    return size[0] * size[1]


def _fit(points: list[tuple[int, float]], pixels: int) -> float:
    """Seconds at `pixels` from (pixels, seconds) points: a line through two or more sizes
    (no less than proportional scaling of the nearest point), proportional to one."""
    if not points:
        raise ValueError("no timing to predict from")
    by_px: dict[int, list[float]] = {}
    for px, s in points:
        by_px.setdefault(px, []).append(s)
    pts = sorted((px, statistics.median(v)) for px, v in by_px.items())
    near_px, near_s = min(pts, key=lambda p: abs(math.log(p[0] / pixels)))
    proportional = near_s * pixels / near_px
    if len(pts) < 2:
        return proportional
    (p0, s0), (p1, s1) = pts[0], pts[-1]
    slope = max(0.0, (s1 - s0) / (p1 - p0))
    line = s0 + slope * (pixels - p0)
    return max(line, 0.5 * proportional, 1e-6)


@dataclass
class StepCosts:
    """Measured seconds per training step by (pixels, frozen) and per validation pass by pixels;
    predictions for the sizes not measured."""

    steps: dict[bool, list[tuple[int, float]]] = field(
        default_factory=lambda: {True: [], False: []}
    )
    valid: list[tuple[int, float]] = field(default_factory=list)
    frozen_ratio: float = 0.6  # a frozen step's share of an unfrozen one, until both are timed

    def add_step(self, size: Size, frozen: bool, seconds: float) -> None:
        """Record a timed training step."""
        self.steps[frozen].append((_pixels(size), seconds))

    def add_valid(self, size: Size, seconds: float) -> None:
        """Record a timed validation pass."""
        self.valid.append((_pixels(size), seconds))

    def step_s(self, size: Size, frozen: bool) -> float:
        """Predicted seconds of a training step at `size`."""
        own, other = self.steps[frozen], self.steps[not frozen]
        if own:
            return _fit(own, _pixels(size))
        ratio = self._ratio()
        return _fit(other, _pixels(size)) * (ratio if frozen else 1 / ratio)

    def _ratio(self) -> float:
        """Frozen / unfrozen step time, where both were timed at one size."""
        frozen = dict(self.steps[True])
        both = [(frozen[px], s) for px, s in self.steps[False] if px in frozen]
        return statistics.median(f / u for f, u in both) if both else self.frozen_ratio

    def valid_s(self, size: Size) -> float:
        """Predicted seconds of a whole validation pass at `size`."""
        return _fit(self.valid, _pixels(size)) if self.valid else 0.0


def _snapshot(learn: Learner) -> tuple[dict, dict, Size, int, list[bool]]:
    state = copy.deepcopy(learn.model.state_dict())
    opt = copy.deepcopy(learn.opt.state_dict())
    trains = [p.requires_grad for p in learn.model.parameters()]
    return state, opt, input_size(learn.dls), learn.dls.train.bs, trains


def _restore(learn: Learner, snap: tuple[dict, dict, Size, int, list[bool]]) -> None:
    state, opt, size, bs, trains = snap
    learn.model.load_state_dict(state)
    learn.opt.load_state_dict(opt)
    for p, t in zip(learn.model.parameters(), trains):
        p.requires_grad_(t)
    set_input_size(learn.dls, size, bs)


def measure_steps(
    learn: Learner, size: Size, frozen: bool, n: int, clock: Callable[[], float]
) -> float:
    """Median seconds per training step over `n` timed steps at `size` (after one untimed
    step that starts the workers), data loading included; the learner is left as it was."""
    if learn.opt is None:
        learn.create_opt()
    snap = _snapshot(learn)
    try:
        set_input_size(learn.dls, size)
        learn.freeze() if frozen else learn.unfreeze()
        set_group_hypers(learn.opt, [0.0] * len(learn.opt.param_groups), None)
        learn.model.train()
        times, t = [], clock()
        for i, b in enumerate(learn.dls.train):
            learn.train_step(b)
            now = clock()
            if i > 0:
                times.append(now - t)
            t = now
            if len(times) >= n:
                break
        if not times:  # a single batch per epoch: time another step on it
            times = [_one_more(learn, clock)]
    finally:
        _restore(learn, snap)
    return statistics.median(times)


def _one_more(learn: Learner, clock: Callable[[], float]) -> float:
    """Seconds of one more step on the (only) first batch."""
    b = next(iter(learn.dls.train))
    t = clock()
    learn.train_step(b)
    return clock() - t


def measure_valid(learn: Learner, size: Size, n: int, clock: Callable[[], float]) -> float:
    """Seconds of a whole validation pass at `size`, from `n` timed batches (after one untimed)."""
    dl = learn.dls.valid
    batches = len(dl)
    if batches == 0 or not len(dl.dataset):
        return 0.0
    snap_size = input_size(learn.dls)
    set_input_size(learn.dls, size)
    learn.model.eval()
    times, t = [], clock()
    try:
        with torch.no_grad(), learn.autocast():
            for i, b in enumerate(dl):
                xs, _ = learn.split_batch(b)
                learn.model(*xs)
                now = clock()
                if i > 0 or batches == 1:
                    times.append(now - t)
                t = now
                if len(times) >= n:
                    break
    finally:
        learn.model.train()
        set_input_size(learn.dls, snap_size)
    return statistics.median(times) * batches


def cuda_peak_bytes(learn: Learner, size: Size) -> Callable[[int], float]:
    """A function of the batch size: the peak CUDA memory of an unfrozen training step on
    random images of `size` (inf when it runs out of memory); the model is left as it was."""
    device = learn.dls.device

    def peak(bs: int) -> float:
        state = copy.deepcopy(learn.model.state_dict())
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.randn(bs, 3, *size, device=device)
            if learn.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with learn.autocast():
                out = learn.model(x)
            out.float().sum().backward()
            return float(torch.cuda.max_memory_allocated(device))
        except torch.OutOfMemoryError:
            return math.inf
        finally:
            learn.model.zero_grad(set_to_none=True)
            learn.model.load_state_dict(state)
            torch.cuda.empty_cache()

    return peak


def max_batch_size(
    peak: Callable[[int], float],
    capacity: float,
    limit: int,
    first: int = 16,
    fill: float = 0.85,
) -> int:
    """The largest power-of-two batch size up to `limit` whose peak memory, predicted by a line
    through `peak` at `first` and 2 * `first` and checked by `peak` itself, fits `fill` of the
    device's `capacity` bytes; at least 1."""
    if limit <= first:
        bs = max(1, 2 ** int(math.log2(max(1, limit))))
        while bs > 1 and peak(bs) > fill * capacity:
            bs //= 2
        return bs
    m1, m2 = peak(first), peak(2 * first)
    if m1 > fill * capacity:
        return max_batch_size(peak, capacity, first // 2, max(1, first // 4), fill)
    per = (m2 - m1) / first if math.isfinite(m2) else m1 / first
    bs = first
    while 2 * bs <= limit and m1 + per * (2 * bs - first) <= fill * capacity:
        bs *= 2
    while bs > first and peak(bs) > fill * capacity:  # the prediction was too kind
        bs //= 2
    return bs


def saved_activation_bytes(learn: Learner, size: Size, bs: int, probe_bs: int = 4) -> float:
    """Bytes autograd saves for the backward pass of an unfrozen training step of `bs` images
    of `size`: what grows with the batch between forwards of `probe_bs` and 2 * `probe_bs`
    random images (each saved storage once), so the weight copies autocast saves are left out;
    the model is left as it was."""
    device = learn.dls.device
    state = copy.deepcopy(learn.model.state_dict())
    trains = [p.requires_grad for p in learn.model.parameters()]

    def saved(n: int) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        x = torch.randn(n, 3, *size, device=device)
        if learn.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), learn.autocast():
            out = learn.model(x)
        del out
        params = {p.untyped_storage().data_ptr() for p in learn.model.parameters()}
        return sum(b for ptr, b in storages.items() if ptr not in params)

    n = max(1, probe_bs)
    try:
        for p in learn.model.parameters():
            p.requires_grad_(True)
        learn.model.train()
        per_image = max(0, saved(2 * n) - saved(n)) / n
    finally:
        learn.model.load_state_dict(state)
        for p, t in zip(learn.model.parameters(), trains):
            p.requires_grad_(t)
    return per_image * bs


def available_memory() -> float | None:
    """Bytes of memory this machine can still give (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
