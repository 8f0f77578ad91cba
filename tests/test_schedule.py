"""Schedules (one-cycle, discriminative LRs, fine_tune plan) and the LR-finder suggestions."""

import inspect
import math
from dataclasses import replace
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from imageblocks.learn.learner import Learner
from imageblocks.learn.lr_find import (
    LossSmoother,
    SuggestedLRs,
    exponential_lrs,
    minimum,
    plot_lr_find,
    should_stop,
    slide,
    smooth_losses,
    steep,
    suggest,
    valley,
)
from imageblocks.learn.plan import TrainingPlan
from imageblocks.learn.schedule import (
    FineTuneArgs,
    FitPhase,
    combined_cos,
    discriminative_lrs,
    fine_tune_plan,
    one_cycle_lrs,
    one_cycle_moms,
    sched_cos,
    sched_exp,
    sched_lin,
    set_hypers,
)

# --- annealing -----------------------------------------------------------------------------------


def test_annealers_end_points_and_middle():
    for f in (sched_lin, sched_cos, sched_exp):
        assert f(1.0, 4.0, 0.0) == pytest.approx(1.0)
        assert f(1.0, 4.0, 1.0) == pytest.approx(4.0)
    assert sched_lin(1.0, 4.0, 0.5) == pytest.approx(2.5)
    assert sched_cos(1.0, 4.0, 0.5) == pytest.approx(2.5)
    assert sched_cos(1.0, 4.0, 0.25) < sched_lin(1.0, 4.0, 0.25)  # slow start
    assert sched_exp(1.0, 4.0, 0.5) == pytest.approx(2.0)
    pos = torch.linspace(0, 1, 5)
    assert torch.allclose(sched_cos(1.0, 4.0, pos)[[0, -1]], torch.tensor([1.0, 4.0]))


def test_combined_cos_scalar_and_tensor_agree():
    f = combined_cos(0.3, 1.0, 10.0, 0.0)
    assert f(0.0) == pytest.approx(1.0) and f(0.3) == pytest.approx(10.0) and f(1.0) == 0.0
    pos = torch.tensor([0.0, 0.1, 0.3, 0.7, 1.0], dtype=torch.float64)
    assert torch.allclose(f(pos), torch.tensor([f(p) for p in pos.tolist()], dtype=torch.float64))


# --- one cycle -----------------------------------------------------------------------------------


def test_one_cycle_lrs_shape_of_the_cycle():
    lrs = one_cycle_lrs(1e-2, 101, pct_start=0.25, div=25.0, div_final=1e5)
    assert lrs.shape == (101,)
    assert lrs[0].item() == pytest.approx(1e-2 / 25)
    assert lrs[25].item() == pytest.approx(1e-2)
    assert int(lrs.argmax()) == 25
    assert lrs[-1].item() == pytest.approx(1e-2 / 1e5)
    assert torch.all(lrs[1:26] > lrs[:25]) and torch.all(lrs[26:] < lrs[25:-1])


def test_one_cycle_lrs_per_group():
    lr_max = [1e-4, 1e-3, 1e-2]
    lrs = one_cycle_lrs(lr_max, 50, pct_start=0.3)
    assert lrs.shape == (50, 3)
    single = one_cycle_lrs(1e-3, 50, pct_start=0.3)
    assert torch.allclose(lrs[:, 1], single)
    assert torch.allclose(lrs[:, 2] / lrs[:, 0], torch.full((50,), 100.0, dtype=torch.float64))
    assert one_cycle_lrs(torch.tensor(lr_max), 50).shape == (50, 3)


def test_one_cycle_edge_cases():
    assert one_cycle_lrs(1.0, 1).tolist() == [pytest.approx(1 / 25)]
    lrs = one_cycle_lrs(1.0, 10, pct_start=1.0)  # warm-up only
    assert lrs[-1].item() == pytest.approx(1.0) and torch.all(torch.isfinite(lrs))
    lrs = one_cycle_lrs(1.0, 10, pct_start=0.0)  # annealing only
    assert lrs[0].item() == pytest.approx(1.0) and torch.all(torch.isfinite(lrs))


def test_one_cycle_moms():
    moms = one_cycle_moms(41, pct_start=0.25)
    assert moms.shape == (41,)
    assert moms[0].item() == pytest.approx(0.95) and moms[-1].item() == pytest.approx(0.95)
    assert moms[10].item() == pytest.approx(0.85) and moms.min().item() == pytest.approx(0.85)


def test_set_hypers_writes_lr_and_beta1():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.AdamW([{"params": [p]} for p in params], lr=1.0)
    set_hypers(opt, [1e-3, 2e-3, 3e-3], mom=0.9)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 2e-3, 3e-3]
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    sgd = torch.optim.SGD(params, lr=1.0, momentum=0.5)
    set_hypers(sgd, 0.1, mom=0.8)
    assert sgd.param_groups[0]["lr"] == 0.1 and sgd.param_groups[0]["momentum"] == 0.8


# --- discriminative learning rates ---------------------------------------------------------------


def test_discriminative_lrs():
    assert discriminative_lrs(1e-3, 3) == [1e-3] * 3
    assert discriminative_lrs(slice(1e-3), 3) == pytest.approx([1e-4, 1e-4, 1e-3])
    lo, hi = 1e-5, 1e-3
    assert discriminative_lrs(slice(lo, hi), 3) == pytest.approx([lo, math.sqrt(lo * hi), hi])
    assert discriminative_lrs(slice(lo, hi), 1) == [hi]
    assert discriminative_lrs([1.0, 2.0], 2) == [1.0, 2.0]
    with pytest.raises(ValueError):
        discriminative_lrs([1.0, 2.0], 3)
    with pytest.raises(ValueError):
        discriminative_lrs(slice(1e-3, None), 3)


# --- fine_tune ---------------------------------------------------------------------------------


def test_fine_tune_plan_matches_fastai():
    frozen, unfrozen = fine_tune_plan(FineTuneArgs(3, base_lr=3e-3, freeze_epochs=4))
    assert frozen == FitPhase(frozen=True, epochs=4, lr=3e-3, pct_start=0.99, div=5.0)
    assert unfrozen.frozen is False and unfrozen.epochs == 3
    assert unfrozen.lr == slice(1.5e-3 / 100, 1.5e-3)
    assert unfrozen.pct_start == 0.3 and unfrozen.div == 5.0
    (only,) = fine_tune_plan(FineTuneArgs(2, base_lr=1e-2, freeze_epochs=0))
    assert not only.frozen and only.lr == slice(5e-3 / 100, 5e-3)
    lrs = unfrozen.lrs(n_groups=3, steps_per_epoch=10)
    assert lrs.shape == (30, 3)
    assert lrs.max(0).values.tolist() == pytest.approx([1.5e-5, 1.5e-4, 1.5e-3], rel=1e-2)


def test_fit_signatures_keep_fastai_order_and_defaults():
    def defaults(method):
        return [(k, p.default) for k, p in inspect.signature(method).parameters.items()][1:]

    tail = [("wd", None), ("moms", None), ("cbs", ()), ("checkpoint", None), ("resume", None)]
    assert defaults(Learner.fine_tune) == [
        ("epochs", inspect.Parameter.empty), ("base_lr", 2e-3), ("freeze_epochs", 1),
        ("lr_mult", 100), ("pct_start", 0.3), ("div", 5.0), *tail,
    ]  # fmt: skip
    assert defaults(Learner.fit_one_cycle) == [
        ("n_epoch", inspect.Parameter.empty), ("lr_max", None), ("div", 25.0),
        ("div_final", 1e5), ("pct_start", 0.25), *tail,
    ]  # fmt: skip
    assert FineTuneArgs(1).base_lr == 2e-3  # fine_tune_plan's defaults are the same ones


# --- LR finder -----------------------------------------------------------------------------------


def _range_test_curve() -> tuple[torch.Tensor, np.ndarray]:
    """Flat loss, a smooth valley between 1e-4 and 1e-2, then a blow-up."""
    lrs = exponential_lrs(1e-7, 10, 100)
    x = lrs.log10().numpy()
    s = np.clip((x + 4) / 2, 0, 1)
    loss = 2.3 - 1.8 * (1 - np.cos(np.pi * s)) / 2 + 3 * np.clip(x + 2, 0, None) ** 2
    return lrs, loss


def test_exponential_lrs():
    lrs = exponential_lrs(1e-7, 10, 100)
    assert lrs.shape == (100,)
    assert lrs[0].item() == pytest.approx(1e-7) and lrs[-1].item() == pytest.approx(10)
    ratios = lrs[1:] / lrs[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))


def test_smooth_losses_debiased():
    assert smooth_losses([2.0, 2.0, 2.0]).tolist() == pytest.approx([2.0, 2.0, 2.0])
    raw = [1.0, 3.0, 2.0, 5.0]
    s = smooth_losses(raw, beta=0.9)
    online = LossSmoother(0.9)
    assert s.tolist() == pytest.approx([online(x) for x in raw])
    assert s[1].item() == pytest.approx((0.09 * 1 + 0.1 * 3) / (1 - 0.81))


def test_should_stop():
    assert not should_stop(1.0, 0.5, it=3)
    assert should_stop(2.1, 0.5, it=3)
    assert should_stop(float("nan"), 0.5, it=3)
    assert should_stop(0.5, 0.5, it=99, num_it=100) and not should_stop(0.5, 0.5, 98, num_it=100)


def test_suggestions_fall_in_the_valley():
    lrs, loss = _range_test_curve()
    assert minimum(lrs, loss) == pytest.approx(lrs[int(np.argmin(loss))].item() / 10)
    for f in (steep, valley, slide):
        assert 1e-4 <= f(lrs, loss) <= 1e-2, f.__name__
    assert 5e-4 <= steep(lrs, loss) <= 2e-3  # steepest at the valley's middle, 1e-3


def test_suggestions_on_a_noisy_smoothed_curve():
    lrs, loss = _range_test_curve()
    g = torch.Generator().manual_seed(0)
    raw = torch.tensor(loss) + 0.1 * torch.randn(len(loss), generator=g, dtype=torch.float64)
    sugg, _ = suggest(lrs, smooth_losses(raw), (minimum, steep, valley, slide))
    # smoothing lags the curve to the right, so allow up to the blow-up
    for name, lr in sugg._asdict().items():
        assert 1e-4 <= lr <= 3e-2, name


def test_suggest_names_points_and_unpacking():
    lrs, loss = _range_test_curve()
    sugg, points = suggest(lrs, loss, (minimum, steep, valley))
    assert type(sugg).__name__ == "SuggestedLRs"
    assert sugg._fields == ("minimum", "steep", "valley")
    min_lr, steep_lr, valley_lr = sugg  # the book unpacks the result
    assert min_lr == sugg.minimum and valley_lr == sugg.valley
    assert len(points) == 3 and all(len(p) == 2 for p in points)
    assert points[2][0] == sugg.valley and 0.5 < points[2][1] < 2.3
    (default,), _ = suggest(lrs, torch.tensor(loss))
    assert default == pytest.approx(sugg.valley)
    named, _ = suggest(lrs, loss, (partial(slide, lr_diff=10), slide))
    assert named._fields == ("slide", "slide_2")
    assert repr(SuggestedLRs(valley=0.5)) == "SuggestedLRs(valley=0.5)"


def test_suggest_ignores_nan_after_divergence():
    lrs, loss = _range_test_curve()
    loss = loss.copy()
    loss[-3:] = np.nan
    sugg, _ = suggest(lrs, loss, (valley, minimum))
    assert all(math.isfinite(v) for v in sugg)


def test_plot_lr_find_returns_a_figure():
    lrs, loss = _range_test_curve()
    sugg, points = suggest(lrs, loss, (minimum, steep, valley, slide))
    fig = plot_lr_find(lrs, loss, sugg, points)
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert [lab.split(":")[0] for lab in labels] == ["minimum", "steep", "valley", "slide"]
        colours = {line.get_color() for line in ax.lines[1:]}
        assert len(colours) == 4
    finally:
        plt.close(fig)
    fig, ax = plt.subplots()
    try:
        assert plot_lr_find(lrs, loss, {"valley": sugg.valley}, ax=ax) is fig
    finally:
        plt.close(fig)


def test_a_plan_survives_a_checkpoint_and_names_its_differences(tmp_path):
    plan = TrainingPlan("fine_tune", tuple(fine_tune_plan(FineTuneArgs(2, base_lr=1e-3))), 6, 1e-2)
    torch.save({"plan": plan.to_dict()}, tmp_path / "plan.pt")
    stored = torch.load(tmp_path / "plan.pt", weights_only=True)["plan"]  # plain data only
    assert plan.differences(stored) == []
    other = TrainingPlan("fine_tune", tuple(fine_tune_plan(FineTuneArgs(3, base_lr=1e-3))), 7, 1e-2)
    assert other.differences(stored) == [
        "phases[1].epochs: the checkpoint has 2, this call 3",
        "batches_per_epoch: the checkpoint has 6, this call 7",
    ]
    short = fine_tune_plan(FineTuneArgs(2, 1e-3, freeze_epochs=0))
    shorter = TrainingPlan("fine_tune", tuple(short), 6, 1e-2)
    assert shorter.differences(stored)[0] == "phases.count: the checkpoint has 2, this call 1"


def test_constant_phase_schedule_has_no_momentum():
    phase = FitPhase(None, 2, slice(1e-4, 1e-2), pct_start=0.0, div=1.0, kind="constant")
    lrs, moms = phase.schedule(n_groups=3, steps_per_epoch=5)
    assert moms is None and lrs.shape == (10, 3)
    assert torch.allclose(lrs[0], torch.tensor([1e-4, 1e-3, 1e-2], dtype=torch.float64))
    assert torch.equal(lrs[0], lrs[-1])
    lrs, moms = replace(phase, kind="one_cycle", pct_start=0.25, moms=(0.95, 0.85, 0.95)).schedule(
        3, 5
    )
    assert moms.shape == (10,) and moms[0] == 0.95
    with pytest.raises(ValueError, match="unknown phase kind"):
        FitPhase(None, 1, 1e-3, 0.25, 25.0, kind="linear")
