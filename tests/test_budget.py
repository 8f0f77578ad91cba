"""Training to a time budget: durations, sizes between phases, the planner, a schedule that
follows the clock (a fake clock: every training step takes one 'second'), resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from imageblocks.data.sizing import input_size, set_input_size
from imageblocks.errors import ArgumentError
from imageblocks.learn import budget as budget_module
from imageblocks.learn.budget import BudgetError, final_sizes, plan_budget
from imageblocks.learn.budget_probe import StepCosts, max_batch_size, saved_activation_bytes
from imageblocks.learn.callbacks import Callback, CancelTrainException
from imageblocks.learn.checkpoint import load_checkpoint
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.schedule import combined_cos
from imageblocks.learn.timed import Budget, TimeBudgetCallback, TimedPhase, TimedSchedule
from imageblocks.seeding import set_seed
from imageblocks.transforms.item import RandomResizedCrop
from imageblocks.utils import parse_duration
from tests.conftest import voc_block


class FakeClock:
    """Seconds that pass only when told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _learner(voc, clock: FakeClock, step_s: float = 1.0, slow: dict | None = None):
    """A tiny learner whose every training step takes `step_s` on `clock` (step number k of
    `slow` takes slow[k] instead)."""
    set_seed(0)
    df, dblock = voc_block(voc, RandomResizedCrop(32, min_scale=0.5))
    learn = vision_learner(  # float32: the same numbers on every CPU, bfloat16 or not
        dblock.dataloaders(df, bs=4, num_workers=0), "resnet18", pretrained=False,
        precision="fp32",
    )  # fmt: skip
    step = learn.train_step
    count = {"n": 0}

    def timed_step(b):
        count["n"] += 1
        clock.t += (slow or {}).get(count["n"], step_s)
        return step(b)

    learn.train_step = timed_step
    return learn


def test_parse_duration():
    assert [parse_duration(v) for v in (90, "90", "90s", "10m", "1.5h", "1h30m")] == [
        90, 90, 90, 600, 5400, 5400
    ]  # fmt: skip
    for bad in ("", "ten minutes", "10x", "-5", 0, "1h30", True):
        with pytest.raises(ArgumentError, match="budget must be a positive duration"):
            parse_duration(bad)


def test_set_input_size_changes_every_sized_transform_and_the_export(voc, tmp_path):
    df, dblock = voc_block(voc, RandomResizedCrop(64, min_scale=0.5))
    dls = dblock.dataloaders(df, bs=4, num_workers=0)
    assert input_size(dls) == (64, 64) and dls.draft == (64, 64)
    set_input_size(dls, (32, 48), bs=3)
    xb, _ = dls.train.one_batch()
    assert xb.shape == (3, 3, 32, 48) and dls.valid.one_batch()[0].shape[-2:] == (32, 48)
    assert dls.draft == (48, 32) and dls.item_tfms[0].size == (32, 48)
    assert len(dls.train) == len(dls.train.dataset) // 3
    learn = vision_learner(dls, "resnet18", pretrained=False)
    learn.export(tmp_path / "m")
    assert (
        '"size": [\n        32,\n        48\n      ]'
        in (tmp_path / "m" / "config.json").read_text()
    )


def _costs() -> StepCosts:
    costs = StepCosts()
    costs.add_step((64, 64), True, 0.1)
    costs.add_step((64, 64), False, 0.2)
    costs.add_step((128, 128), False, 0.8)
    costs.add_valid((64, 64), 1.0)
    return costs


@pytest.mark.parametrize("budget", [120, 600, 3600])
def test_the_plan_fits_the_budget_and_grows_the_size_with_it(budget):
    finals = final_sizes((128, 128))
    plan = plan_budget(
        _costs(), budget, 10.0, 50, finals, 64, 1e-3, reserve=lambda s: 2.0 + s[0] / 64
    )
    phases = plan.phases
    assert phases[0].frozen and not any(p.frozen for p in phases[1:])
    assert phases[0].start == 10.0 and all(a.end == b.start for a, b in zip(phases, phases[1:]))
    final = phases[-1].size
    assert math.isclose(phases[-1].end + 2.0 + final[0] / 64, budget)  # the plan fits exactly
    assert phases[0].size[0] <= final[0] and len(phases) in (2, 3)  # small first, largest last
    assert "estimate: training ends at" in "\n".join(plan.lines())
    unfrozen = sum(plan.epochs[1:])
    assert unfrozen >= budget_module.FEWEST_EPOCHS or final == finals[0]
    if budget == 3600:
        assert final[0] > 128  # time to spare buys larger images
    if budget == 120:
        assert final[0] <= 128


def test_a_slow_machine_still_trains_the_largest_size_that_buys_a_few_epochs():
    finals = final_sizes((128, 128))
    plan = plan_budget(  # no size buys 1000 epochs, nor 500: the largest buying 2 is picked
        _costs(), 300, 10.0, 50, finals, 64, 1e-3, reserve=lambda s: 2.0, min_epochs=1000
    )
    final = plan.phases[-1].size
    assert final[0] > finals[0][0] and sum(plan.epochs[1:]) >= budget_module.FEWEST_EPOCHS
    bigger = [f for f in finals if f[0] * f[1] > final[0] * final[1]]
    one_up = plan_budget(
        _costs(), 300, 10.0, 50, bigger[:1], 64, 1e-3, reserve=lambda s: 2.0, min_epochs=1000
    )
    assert sum(one_up.epochs[1:]) < budget_module.FEWEST_EPOCHS  # the next size buys fewer


def test_a_budget_too_small_says_how_much_is_needed():
    with pytest.raises(BudgetError, match="too small.*give at least"):
        plan_budget(_costs(), 12, 10.0, 50, [(128, 128)], 64, 1e-3, reserve=lambda s: 1.0)


def _phase(**kw) -> TimedPhase:
    d = dict(
        frozen=False,
        size=(32, 32),
        bs=4,
        lr=1e-2,
        start=0.0,
        end=100.0,
        valid_s=5.0,
        cycle=(0.0, 95.0),
        step_s=1.0,
        pct_start=0.25,
        div=25.0,
        moms=(0.95, 0.85, 0.95),
    )
    return TimedPhase(**{**d, **kw})  # fmt: skip


def _drive(sched: TimedSchedule, clock: FakeClock, durations) -> list[tuple[float, float, float]]:
    """Steps as the loop runs them until time is up: (start time, lr, momentum) of each."""
    seen, k = [], 0
    while not sched.time_up():
        mom = sched.moms[k]
        seen.append((clock.t, float(sched[k][-1]), mom))
        clock.t += durations(k)
        k += 1
    return seen


def test_the_schedule_follows_the_clock_and_ends_annealed_on_time():
    clock = FakeClock()
    budget = Budget(100, clock).start()
    sched = TimedSchedule(_phase(), 1, budget)
    steps = _drive(sched, clock, lambda k: 1.0)
    lrs = [lr for _, lr, _ in steps]
    assert len(steps) == 95 and budget.used() == 95  # training stops when no step fits
    assert lrs[-1] == pytest.approx(1e-2 / 1e5)  # the last step at lr_max / div_final
    assert max(lrs) == pytest.approx(1e-2, rel=1e-3) and lrs[0] < 1e-3  # warm up, then anneal
    peak = lrs.index(max(lrs))
    assert 20 <= peak <= 26  # at pct_start of the time
    assert steps[peak][2] == pytest.approx(0.85, abs=1e-3) and steps[-1][2] == pytest.approx(0.95)


def test_a_slow_step_mid_run_still_ends_on_time():
    clock = FakeClock()
    budget = Budget(100, clock).start()
    sched = TimedSchedule(_phase(), 1, budget)
    steps = _drive(sched, clock, lambda k: 30.0 if k == 40 else 1.0)
    assert len(steps) == 95 - 29  # the slow step took the time of 29 others
    assert 94 <= budget.used() <= 95 and steps[-1][1] == pytest.approx(1e-2 / 1e5)
    # the rate follows the time, not the step count: just after the slow step it is where the
    # clock says (the step's end, by the median step time) in the cycle of 95 s
    t, lr, _ = steps[41]
    pos = (t - 100 + 1.0) / 95
    assert lr == pytest.approx(float(combined_cos(0.25, 1e-2 / 25, 1e-2, 1e-2 / 1e5)(pos)))
    assert pos > 0.7


def test_fine_tune_budget_ends_on_time_annealed(voc, capsys):
    clock = FakeClock()
    learn = _learner(voc, clock, slow={30: 6.0})  # one step of six seconds mid-run
    report = learn.fine_tune_budget(60, clock=clock, report_s=2.0)
    out = capsys.readouterr().out
    assert "the plan:" in out and "estimate:" in out and "phase 1 (frozen" in out
    used = report["train_end_s"]
    assert 60 * 0.95 - 2.0 <= used <= 60 - 2.0 + 1.0  # training ends before the reserve
    head_lr = learn.recorder.lrs[-1]
    plan = report["plan"]
    assert head_lr == pytest.approx(plan["lr"] / 2 / 1e5, rel=1e-6)  # annealed at the end
    assert [p["frozen"] for p in report["phases"]][0] is True
    assert all(p["actual_s"] > 0 for p in report["phases"])
    assert learn.plan.budget == 60 and learn.plan.call == "fine_tune_budget"


def test_the_allocator_is_set_up_before_the_budget_measures(voc, monkeypatch):
    """A first build of the block cache is spent before the plan, so the plan still fits."""
    clock = FakeClock()
    order = []
    measure = budget_module._measure

    def slow_setup() -> bool:
        if "setup" not in order:  # a block cache compiled on this machine for the first time
            clock.t += 5.0
        order.append("setup")
        return True

    monkeypatch.setattr(budget_module.runtime, "keep_freed_memory", slow_setup)
    monkeypatch.setattr(
        budget_module, "_measure", lambda *a, **k: (order.append("measure"), measure(*a, **k))[1]
    )
    learn = _learner(voc, clock)
    report = learn.fine_tune_budget(60, clock=clock, report_s=2.0)
    assert order[:2] == ["setup", "measure"]
    assert 60 * 0.95 - 2.0 <= report["train_end_s"] <= 60 - 2.0 + 1.0


def test_a_phase_that_starts_past_its_deadline_still_takes_one_step():
    cb = TimeBudgetCallback(Budget(10, FakeClock()).start())
    learn = SimpleNamespace(lr_sched=SimpleNamespace(time_up=lambda: True))
    cb.before_batch(learn)  # no step yet: it runs, so the epoch has a training loss
    cb.after_batch(learn)
    with pytest.raises(CancelTrainException):
        cb.before_batch(learn)


class _InterruptAfter(Callback):
    """Ctrl-C after `n` training steps of the run."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def after_batch(self, learn) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


def test_a_resumed_budgeted_run_keeps_the_plan_and_the_time_left(voc, tmp_path):
    ckpt = tmp_path / "run.pt"
    clock = FakeClock()
    killed = _learner(voc, clock)
    with pytest.raises(KeyboardInterrupt):
        killed.fine_tune_budget(
            60, base_lr=1e-3, clock=clock, checkpoint=ckpt, cbs=[_InterruptAfter(25)]
        )
    state = load_checkpoint(ckpt)
    used = state["budget_used"]
    assert 0 < used < 60 and state["plan"]["budget"] == 60
    with pytest.raises(BudgetError, match="budget of 60.0 s, this call has 30 s"):
        _learner(voc, FakeClock()).fine_tune_budget(30, clock=FakeClock(), resume=ckpt)

    clock2 = FakeClock()
    resumed = _learner(voc, clock2)
    report = resumed.fine_tune_budget(60, clock=clock2, resume=ckpt)
    assert report["plan"] is None  # no new measuring: the checkpoint's plan
    total = report["train_end_s"]  # seconds used before the kill's checkpoint plus since
    assert 60 * 0.95 <= total <= 61 and clock2.t - 100 == pytest.approx(total - used)
    assert resumed.plan.phases == killed.plan.phases
    assert resumed.recorder.lrs[-1] == pytest.approx(resumed.plan.phases[-1].lr.stop / 1e5)


def test_max_batch_size_fills_the_device_by_its_peak_memory():
    gib = 2**30

    def peak(bs: int) -> float:  # 1 GiB of weights, 50 MiB a sample; out of memory past 16 GiB
        need = gib + bs * 50 * 2**20
        return math.inf if need > 16 * gib else need

    assert max_batch_size(peak, 16 * gib, limit=4096) == 256  # 1 + 256 * 50 MiB < 0.85 * 16 GiB
    assert max_batch_size(peak, 16 * gib, limit=100) == 64  # at most the limit
    assert max_batch_size(peak, 2 * gib, limit=4096) == 8
    assert max_batch_size(lambda bs: math.inf, 2 * gib, limit=4096) == 1


def test_saved_activations_grow_with_the_pixels_and_the_batch(voc):
    learn = _learner(voc, FakeClock())
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    trains = [p.requires_grad for p in learn.model.parameters()]
    small = saved_activation_bytes(learn, (32, 32), bs=4)
    assert small > 0
    assert saved_activation_bytes(learn, (64, 64), bs=4) == pytest.approx(4 * small, rel=0.15)
    assert saved_activation_bytes(learn, (32, 32), bs=16) == pytest.approx(4 * small, rel=1e-6)
    after = learn.model.state_dict()  # batch-norm statistics and frozen layers as they were
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in learn.model.parameters()] == trains


def test_a_cpu_budget_leaves_out_sizes_the_memory_cannot_hold(voc, monkeypatch):
    learn = _learner(voc, FakeClock())
    finals = final_sizes((64, 64))
    per_pixel = saved_activation_bytes(learn, finals[0], 4) / (finals[0][0] * finals[0][1])
    free = 2 * per_pixel * 64 * 64 / budget_module.MEMORY_SHARE  # room for 2x the base's pixels
    monkeypatch.setattr(budget_module, "available_memory", lambda: free)
    lines: list[str] = []
    fit = budget_module._sizes_that_fit(learn, finals, 4, lines.append)
    assert fit == [s for s in finals if s[0] * s[1] <= 2 * 64 * 64 * 1.05]
    assert (64, 64) in fit and fit[-1] != finals[-1]
    assert "left out" in lines[0] and "GB free" in lines[0]
    monkeypatch.setattr(budget_module, "available_memory", lambda: 1.0)
    assert budget_module._sizes_that_fit(learn, finals, 4, lines.append) == finals[:1]


@pytest.mark.parametrize("valley, lr", [(1.6e-4, 2e-4), (5e-1, 2e-2), (7.6e-3, 7.6e-3)])
def test_a_short_range_test_sweeps_five_decades_and_stays_near_the_default(voc, valley, lr):
    from imageblocks.data.sizing import input_size

    clock = FakeClock()
    learn = _learner(voc, clock)
    calls = []

    def lr_find(start_lr, end_lr, num_it, show_plot):
        calls.append((start_lr, end_lr, num_it))
        return SimpleNamespace(valley=valley)

    learn.lr_find = lr_find
    budget = Budget(400, clock).start()
    finals = final_sizes(input_size(learn.dls))
    _, got, source = budget_module._measure(learn, finals, budget, None, lambda line: None)
    assert calls and calls[0][:2] == (1e-5, 1.0) and 12 <= calls[0][2] <= 60
    assert got == pytest.approx(lr)
    assert ("kept within 10x of 0.002" in source) == (lr != valley)
