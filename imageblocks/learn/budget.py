"""The best model a time budget buys: measure, plan, then train on a schedule that ends on time.

`fine_tune_budget(learn, "10m")` first times a few real training and validation steps at
candidate image sizes on this machine (`budget_probe.py`; about 8% of the budget, counted in
it), runs a short LR range test when one fits (5%), and plans (`plan_budget`): a frozen phase
at a small size, then one unfrozen one-cycle schedule over one or two sizes (progressive
resizing: small images first, the final size last), the final size being the largest that
still buys `MIN_EPOCHS` unfrozen epochs (on a slow machine half, then `FEWEST_EPOCHS`). The phases end at times of the budget, not after step
counts (`timed.py`): rates and momentum follow the fraction of the time used, so the run ends
annealed at its deadline even when the estimate was off. The report the caller writes after
training (its validation passes, figures, export) is reserved in the budget. A checkpoint
keeps the plan and the seconds used: a resumed run goes on with the same plan and what is left.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imageblocks import runtime
from imageblocks.data.sizing import input_size, set_input_size
from imageblocks.errors import ImageblocksError
from imageblocks.learn.budget_probe import (
    StepCosts,
    available_memory,
    cuda_peak_bytes,
    max_batch_size,
    measure_steps,
    measure_valid,
    saved_activation_bytes,
)
from imageblocks.learn.callbacks import as_callbacks
from imageblocks.learn.checkpoint import CheckpointError, load_checkpoint
from imageblocks.learn.loop import run_plan
from imageblocks.learn.timed import Budget, TimeBudgetCallback, TimedPhase, timed_phase

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner

__all__ = ["MIN_EPOCHS", "BudgetError", "BudgetPlan", "fine_tune_budget", "plan_budget"]

Size = tuple[int, int]
MIN_EPOCHS = 6  # unfrozen epochs the final size must still buy; below, a smaller size pays more
FEWEST_EPOCHS = 2  # when no size buys MIN_EPOCHS (nor half), the largest that buys this many
SIDE_MULTS = (0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # final sizes tried, times the loaders' size
EARLY = 0.6  # the first sizes' side, times the final one
# Of the memory free at the start, what one CPU training step's saved activations may take: a
# step's peak is about twice them (the activations' gradients in the backward), and the loader
# workers and the heap kept from the smaller sizes before come on top. At a half, a 240x320 BIWI
# phase (7.3 GB estimated, 20 GB free) was killed by the OOM killer at 12 GB in the trainer.
MEMORY_SHARE = 0.3
PROBE_SHARE, LR_TEST_SHARE = 0.08, 0.05  # of the budget, for the timings and the LR range test
DEFAULT_LR = 2e-3  # fine_tune's, when no LR range test fits
# A budget's range test is short (12 to 60 steps), so it sweeps 1e-5..1 (five decades, not
# lr_find's eight) and its valley is kept within a decade of DEFAULT_LR: on BIWI a 26-step test
# suggested 1.6e-4 where fastai's 100-step one finds 7.6e-3, and the run barely moved.
LR_TEST_RANGE = (1e-5, 1.0)
LR_TRUST = 10.0


class BudgetError(ImageblocksError, ValueError):
    """A budget too small for any plan, or a resume with another budget."""


def _round_side(v: float) -> int:
    step = 16 if v >= 64 else 8
    return max(16, int(round(v / step)) * step)


def scaled(size: Size, mult: float) -> Size:
    """`size` times `mult`, each side rounded to a multiple of 16 (8 below 64 px)."""
    return _round_side(size[0] * mult), _round_side(size[1] * mult)


@dataclass(frozen=True)
class BudgetPlan:
    """What a budget buys: its phases and their estimated epochs, the seconds already used
    (measuring) and reserved (the report after training), the learning rate and its source."""

    budget_s: float
    start_s: float
    reserve_s: float
    phases: tuple[TimedPhase, ...]
    epochs: tuple[float, ...]
    lr: float
    lr_source: str

    def lines(self) -> list[str]:
        """The plan and its estimate, as printed before the first step."""
        out = [
            f"budget {self.budget_s:.0f} s: {self.start_s:.1f} s used measuring this machine "
            f"(lr {self.lr:.2e}, {self.lr_source}), {self.reserve_s:.1f} s reserved for the "
            "report and export; the plan:"
        ]
        for k, (p, e) in enumerate(zip(self.phases, self.epochs)):
            lr = p.lr if not isinstance(p.lr, slice) else f"{p.lr.start:.1e}..{p.lr.stop:.1e}"
            lr = f"{lr:.1e}" if isinstance(lr, float) else lr
            out.append(
                f"  phase {k + 1}: {'frozen  ' if p.frozen else 'unfrozen'} {p.size[0]}x"
                f"{p.size[1]}, bs {p.bs}, lr {lr}, {p.start:.1f}-{p.end:.1f} s "
                f"({p.end - p.start:.1f} s, ~{e:.1f} epochs at {p.step_s:.3f} s a step)"
            )
        end = self.phases[-1].end if self.phases else self.start_s
        out.append(
            f"  estimate: training ends at {end:.1f} s, the report and export at "
            f"{end + self.reserve_s:.1f} s of {self.budget_s:.0f} s"
        )
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain data for metrics.json."""
        return {
            "budget_s": self.budget_s,
            "measured_s": round(self.start_s, 2),
            "reserve_s": round(self.reserve_s, 2),
            "lr": self.lr,
            "lr_source": self.lr_source,
            "phases": [
                {
                    "frozen": p.frozen,
                    "size": list(p.size),
                    "bs": p.bs,
                    "planned_s": round(p.end - p.start, 2),
                    "epochs": round(e, 2),
                }
                for p, e in zip(self.phases, self.epochs)
            ],
        }


@dataclass(frozen=True)
class _Layout:
    final: Size
    frozen_s: float
    stages: tuple[tuple[Size, float], ...]
    unfrozen_epochs: float


def plan_budget(
    costs: StepCosts,
    budget_s: float,
    start_s: float,
    steps_per_epoch: int,
    finals: Sequence[Size],
    bs: int,
    lr: float,
    reserve: Callable[[Size], float],
    moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95),
    lr_mult: float = 100.0,
    lr_source: str = "given",
    min_epochs: float = MIN_EPOCHS,
) -> BudgetPlan:
    """The plan for the seconds from `start_s` to `budget_s`, `reserve(final size)` kept for
    after training: the largest of `finals` that buys `min_epochs` unfrozen epochs (else half
    of them, else `FEWEST_EPOCHS`, else the one that buys the most), with a frozen phase and the first half of the unfrozen time at
    `EARLY` times its side."""

    def epoch_s(size: Size, frozen: bool) -> float:
        return steps_per_epoch * costs.step_s(size, frozen) + costs.valid_s(size)

    def layout(final: Size) -> _Layout | None:
        early = scaled(final, EARLY)
        total = budget_s - start_s - reserve(final)
        if total < 4 * costs.step_s(early, True) + costs.valid_s(early) + 4 * costs.step_s(
            final, False
        ) + 2 * costs.valid_s(final):
            return None
        frozen = min(max(epoch_s(early, True), 0.08 * total), 0.2 * total)
        unfrozen = total - frozen
        half = unfrozen / 2
        two = early != final and half >= epoch_s(final, False)
        stages = ((early, half), (final, half)) if two else ((final, unfrozen),)
        epochs = sum(t / epoch_s(s, False) for s, t in stages)
        return _Layout(final, frozen, stages, epochs)

    options = [o for o in (layout(f) for f in finals) if o is not None]
    if not options:
        need = start_s + reserve(finals[0]) + 8 * costs.step_s(finals[0], False)
        raise BudgetError(
            f"a budget of {budget_s:.0f} s is too small: measuring took {start_s:.1f} s and the "
            f"report needs {reserve(finals[0]):.1f} s, which leaves no time to train; give at "
            f"least {math.ceil(need * 1.5)} s, or a smaller image size or model"
        )
    pick = max(options, key=lambda o: o.unfrozen_epochs)
    for need in (min_epochs, min_epochs / 2, FEWEST_EPOCHS):
        enough = [o for o in options if o.unfrozen_epochs >= need]
        if enough:
            pick = max(enough, key=lambda o: o.final[0] * o.final[1])
            break
    return _phases(
        pick, costs, steps_per_epoch, budget_s, start_s, reserve, bs, lr, moms, lr_mult, lr_source
    )


def _phases(
    pick: _Layout,
    costs: StepCosts,
    steps_per_epoch: int,
    budget_s: float,
    start_s: float,
    reserve: Callable[[Size], float],
    bs: int,
    lr: float,
    moms: Any,
    lr_mult: float,
    lr_source: str,
) -> BudgetPlan:
    """The `TimedPhase`s of a layout, back to back from `start_s`."""
    early, t = pick.stages[0][0], start_s
    v = costs.valid_s(early)
    phases = [
        TimedPhase(
            True, early, bs, lr, t, t + pick.frozen_s, v, (t, t + pick.frozen_s - v),
            costs.step_s(early, True), pct_start=0.99, div=5.0, moms=moms,
        )
    ]  # fmt: skip
    t += pick.frozen_s
    cycle = (t, t + sum(d for _, d in pick.stages) - costs.valid_s(pick.final))
    for size, d in pick.stages:
        phases.append(
            TimedPhase(
                False, size, bs, slice(lr / 2 / lr_mult, lr / 2), t, t + d, costs.valid_s(size),
                cycle, costs.step_s(size, False), pct_start=0.3, div=5.0, moms=moms,
            )
        )  # fmt: skip
        t += d
    epochs = [(p.end - p.start) / (steps_per_epoch * p.step_s + p.valid_s) for p in phases]
    # the loop's bound: ten times the estimate (the clock ends each phase, however fast)
    phases = [dataclasses.replace(p, epochs=int(10 * e) + 10) for p, e in zip(phases, epochs)]
    return BudgetPlan(
        budget_s, start_s, reserve(pick.final), tuple(phases), tuple(epochs), lr, lr_source
    )


def final_sizes(base: Size, mults: Sequence[float] = SIDE_MULTS) -> list[Size]:
    """The final sizes a plan may pick: `base` times each of `mults`, ascending, no repeats."""
    return sorted(set(scaled(base, m) for m in mults), key=lambda s: s[0] * s[1])


def _cuda_batch_size(learn: Learner, size: Size, budget: Budget, log: Callable) -> int:
    """On CUDA, the largest batch that fills the device at `size` (by its peak memory), with
    at least 8 steps per epoch; elsewhere the loaders' batch size."""
    device = learn.dls.device
    bs = learn.dls.train.bs
    if device.type != "cuda":
        return bs
    capacity = torch.cuda.get_device_properties(device).total_memory
    limit = max(1, min(1024, len(learn.dls.train.dataset) // 8))
    bs = max_batch_size(cuda_peak_bytes(learn, size), capacity, limit)
    log(f"budget: batch size {bs} fills the GPU at {size[0]}x{size[1]} ({budget.used():.1f} s)")
    return bs


def _sizes_that_fit(learn: Learner, finals: list[Size], bs: int, log: Callable) -> list[Size]:
    """On the CPU, the final sizes whose training step's activations (counted at the smallest
    size, scaled by the pixels) fit `MEMORY_SHARE` of the free memory; at least the smallest."""
    free = available_memory()
    if learn.dls.device.type == "cuda" or free is None:
        return finals  # the GPU's batch size is fitted to its memory instead
    small = finals[0]
    per_pixel = saved_activation_bytes(learn, small, bs) / (small[0] * small[1])
    fit = [s for s in finals if per_pixel * s[0] * s[1] <= MEMORY_SHARE * free] or finals[:1]
    if len(fit) < len(finals):
        big = finals[len(fit)]
        log(
            f"budget: sizes from {big[0]}x{big[1]} up left out: a training step there would "
            f"hold {per_pixel * big[0] * big[1] / 2**30:.1f} GB of activations, more than "
            f"{MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GB free"
        )
    return fit


def _measure(
    learn: Learner, finals: list[Size], budget: Budget, base_lr: float | None, log: Callable
) -> tuple[StepCosts, float, str]:
    """Time steps at the smallest and largest sizes (as the probe share allows) and run the
    LR range test when it fits; the timings, the learning rate and where it came from."""
    clock, costs = budget.clock, StepCosts()
    small, large = scaled(finals[0], EARLY), finals[-1]
    allowed = PROBE_SHARE * budget.seconds + budget.used()
    probes = [(small, True, 3), (small, False, 3), (large, False, 2), (large, True, 2)]
    for k, (size, frozen, n) in enumerate(probes):
        if k >= 2 and budget.used() + (n + 1) * costs.step_s(size, frozen) > allowed:
            continue
        costs.add_step(size, frozen, measure_steps(learn, size, frozen, n, clock))
    for size, n in ((small, 2), (large, 1)):
        per_batch = costs.step_s(size, True)
        if size == small or budget.used() + (n + 1) * per_batch < allowed:
            costs.add_valid(size, measure_valid(learn, size, n, clock))
    if base_lr is not None:
        return costs, float(base_lr), "given"
    step = costs.step_s(small, True)
    num_it = min(60, int(LR_TEST_SHARE * budget.seconds / max(step, 1e-9)))
    if num_it < 12:
        return costs, DEFAULT_LR, f"default: no LR range test fits, it needs {12 * step:.0f} s"
    set_input_size(learn.dls, small)
    start, end = LR_TEST_RANGE
    found = float(learn.lr_find(start, end, num_it=num_it, show_plot=False).valley)
    lr = min(max(found, DEFAULT_LR / LR_TRUST), DEFAULT_LR * LR_TRUST)
    if lr != found:
        kept = f"{found:.1e}, kept within {LR_TRUST:g}x of {DEFAULT_LR:g}"
        return costs, lr, f"LR range test, {num_it} steps: {kept}"
    return costs, lr, f"LR range test, {num_it} steps"


def _export_s(learn: Learner, clock: Callable[[], float]) -> float:
    """Seconds of a whole export (the weights and the traced `model.onnx`), measured into a
    temporary folder: the second of two, since a process's first trace also pays for loading
    the exporter, which the export after training does not."""
    with tempfile.TemporaryDirectory() as tmp:
        learn.export(Path(tmp) / "warm")
        t = clock()
        learn.export(Path(tmp) / "model")
        return clock() - t


def _resumed_plan(state: dict[str, Any], budget: Budget, path: Any) -> tuple[TimedPhase, ...]:
    """The phases a budgeted run's checkpoint planned; its budget must be this one."""
    saved = state["plan"]
    if not isinstance(saved, dict) or saved.get("call") != "fine_tune_budget":
        call = saved.get("call") if isinstance(saved, dict) else saved
        raise CheckpointError(
            f"the checkpoint {path} belongs to {call}, not to a budgeted run: resume it with "
            "the same call, or start afresh without resume"
        )
    if saved.get("budget") != budget.seconds:
        raise BudgetError(
            f"the checkpoint {path} is a run with a budget of {saved.get('budget')} s, this call "
            f"has {budget.seconds:g} s: resume with the same budget, or start afresh"
        )
    used = state.get("budget_used", 0.0)
    if not isinstance(used, (int, float)) or not 0 <= used:
        raise CheckpointError(f"{path}: 'budget_used' is {used!r}, not seconds used")
    budget.before += float(used)
    return tuple(timed_phase(p) for p in saved["phases"])


def fine_tune_budget(
    learn: Learner,
    budget: float | str | Budget,
    base_lr: float | None = None,
    sizes: Sequence[Size] | None = None,
    lr_mult: float = 100.0,
    wd: float | None = None,
    moms: tuple[float, float, float] | None = None,
    cbs: Any = (),
    checkpoint: Any = None,
    resume: Any = None,
    report_passes: int = 0,
    report_s: float = 0.0,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Train the best model `budget` (seconds, or "90s", "10m", "1h"; or a started `Budget`
    counting from earlier) buys: measure, plan (printed), train frozen then unfrozen with
    progressive resizing on a schedule that follows the clock; each phase's time is printed.

    `sizes`: the final image sizes to choose from (default: the loaders' size times 0.375..2).
    The caller's work after training (`report_passes` validation passes at the final size and
    `report_s` seconds) is reserved; `checkpoint`/`resume` as in `fine_tune` (a resumed run
    keeps the plan and the seconds left). Returns the plan and each phase's actual time."""
    if not isinstance(budget, Budget):
        budget = Budget(budget, clock).start()
    # training's allocator before the probe: its steps are timed as training's are, and a first
    # build of the block cache is spent before the plan, not inside it
    runtime.keep_freed_memory()
    moms = moms or learn.moms
    if learn.opt is None:
        learn.create_opt()
    if resume is not None:
        phases = _resumed_plan(load_checkpoint(resume), budget, resume)
        plan = None
        log(f"budget {budget.seconds:.0f} s: resuming with {budget.left():.1f} s left")
    else:
        finals = list(sizes) if sizes is not None else final_sizes(input_size(learn.dls))
        bs = _cuda_batch_size(learn, finals[-1], budget, log)
        set_input_size(learn.dls, input_size(learn.dls), bs)
        finals = _sizes_that_fit(learn, finals, bs, log)
        costs, lr, source = _measure(learn, finals, budget, base_lr, log)
        export_s = _export_s(learn, budget.clock)

        def reserve(final: Size) -> float:
            return report_passes * costs.valid_s(final) + report_s + export_s

        plan = plan_budget(
            costs, budget.seconds, budget.used(), len(learn.dls.train), finals, bs, lr,
            reserve, moms, lr_mult, source,
        )  # fmt: skip
        phases = plan.phases
        for line in plan.lines():
            log(line)
    set_input_size(learn.dls, phases[0].size, phases[0].bs)
    training = dataclasses.replace(
        learn._plan("fine_tune_budget", phases, wd), budget=budget.seconds
    )
    timer = TimeBudgetCallback(budget, log)
    run_plan(learn, training, [timer, *as_callbacks(cbs)], checkpoint, resume)
    return {
        "plan": plan.as_dict() if plan is not None else None,
        "phases": timer.phases,
        "train_end_s": round(budget.used(), 2),
    }
