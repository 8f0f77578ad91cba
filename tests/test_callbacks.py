"""Callbacks that steer training: the Cancel*Exceptions, early stopping, the best epoch kept,
the learning rate lowered on a plateau, and the CLI's --early-stop and --save-best.

Most tests drive the real loop with a tiny model and a scripted validation (`_scripted`), so
the valid_loss of every epoch is known in advance."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from imageblocks.cli import app
from imageblocks.learn import callbacks
from imageblocks.learn.callbacks import Callback
from imageblocks.learn.checkpoint import load_checkpoint
from imageblocks.learn.learner import Learner
from imageblocks.learn.metrics import accuracy_multi
from imageblocks.learn.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback
from imageblocks.lists import L
from imageblocks.seeding import set_seed
from imageblocks.transforms.item import Resize
from tests.conftest import voc_block


def _learner(voc, path=None) -> Learner:
    """A two-group conv net on the `voc` fixture at 16 px: 3 batches of 4 per epoch."""
    set_seed(0)
    df, dblock = voc_block(voc, Resize(16))
    dls = dblock.dataloaders(df, bs=4, num_workers=0)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), head)
    return Learner(dls, model, metrics=[accuracy_multi], path=path or voc)


def _scripted(learn: Learner, losses: list[float], accuracies: list[float] | None = None):
    """Validation returns `losses[epoch]` (and `accuracies[epoch]`) instead of computing them."""
    accuracies = accuracies or [0.5] * len(losses)
    learn.validate = lambda: L([losses[learn.epoch], accuracies[learn.epoch]])
    return learn


class _Events(Callback):
    """Counts every hook call; keeps the weights after each epoch."""

    order = 5

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.weights: list[dict[str, torch.Tensor]] = []

    def __getattribute__(self, name: str):
        if name.startswith(("before_", "after_")):
            calls = object.__getattribute__(self, "calls")
            calls[name] = calls.get(name, 0) + 1
        return object.__getattribute__(self, name)

    def after_epoch(self, learn) -> None:
        self.weights.append({k: v.clone() for k, v in learn.model.state_dict().items()})


class _Raise(Callback):
    """Raises `exc` (a class, or 'CancelFit' for CancelFitException...) from the hook `event`
    when `when(learn)` holds."""

    def __init__(self, event: str, exc: type[BaseException] | str, when) -> None:
        exc = getattr(callbacks, f"{exc}Exception") if isinstance(exc, str) else exc
        self.event, self.exc, self.when = event, exc, when

    def __getattribute__(self, name: str):
        if name == object.__getattribute__(self, "event"):
            when, exc = object.__getattribute__(self, "when"), object.__getattribute__(self, "exc")

            def hook(learn):
                if when(learn):
                    raise exc()

            return hook
        return object.__getattribute__(self, name)


# --- the Cancel*Exceptions --------------------------------------------------------------------


def test_cancel_batch_skips_the_step_and_still_calls_after_batch(voc):
    learn, events = _learner(voc), _Events()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.fit(2, 1e-2, cbs=[events, _Raise("before_batch", "CancelBatch", lambda _: True)])
    assert events.calls["after_cancel_batch"] == 6 and events.calls["after_batch"] == 6
    assert learn.recorder.losses == [] and len(learn.recorder.values) == 2
    for k, v in learn.model.state_dict().items():  # no step was taken
        assert torch.equal(v, before[k]), k


def test_cancel_train_still_validates_and_records_the_epoch(voc):
    learn, events = _learner(voc), _Events()
    stop_after_first = _Raise("after_batch", "CancelTrain", lambda lr: lr.iter == 0)
    learn.fit(2, 1e-2, cbs=[events, stop_after_first])
    assert len(learn.recorder.losses) == 2  # one batch per epoch
    assert events.calls["after_cancel_train"] == 2 and events.calls["after_train"] == 2
    assert all(row[1] is not None for row in learn.recorder.values)  # validated anyway


def test_cancel_valid_leaves_the_epochs_validation_columns_none(voc, capsys):
    learn, events = _learner(voc), _Events()
    skip_second = _Raise("before_validate", "CancelValid", lambda lr: lr.epoch == 1)
    learn.fit(2, 1e-2, cbs=[events, skip_second])
    first, second = learn.recorder.values
    assert first[1] is not None and second[1:] == [None, None]
    assert events.calls["after_cancel_validate"] == 1 and events.calls["after_validate"] == 2
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert rows.count("1") == 1  # the progress table printed the epoch without validation


def test_cancel_epoch_ends_training_and_validation_but_records_the_epoch(voc):
    learn, events = _learner(voc), _Events()
    cut = _Raise("after_batch", "CancelEpoch", lambda lr: (lr.epoch, lr.iter) == (0, 1))
    learn.fit(2, 1e-2, cbs=[events, cut])
    assert len(learn.recorder.losses) == 2 + 3 and learn.recorder.iters == [2, 5]
    assert learn.recorder.values[0][1:] == [None, None] and learn.recorder.values[1][1] is not None
    assert events.calls["after_cancel_epoch"] == 1 and events.calls["after_epoch"] == 2


def test_cancel_fit_mid_epoch_keeps_the_recorder_and_checkpoint_consistent(voc, tmp_path):
    learn, events = _learner(voc), _Events()
    stop = _Raise("after_batch", "CancelFit", lambda lr: (lr.epoch, lr.iter) == (1, 0))
    ckpt = tmp_path / "run.pt"
    learn.fit(4, 1e-2, cbs=[events, stop], checkpoint=ckpt)
    assert len(learn.recorder.values) == 1  # the epoch in progress is dropped
    assert events.calls["after_cancel_fit"] == 1 and events.calls["after_fit"] == 1
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["n_epoch"]) == (4, 4)  # the fit is done
    assert len(state["recorder"]["values"]) == 1
    for k, v in learn.model.state_dict().items():  # with the weights the fit ended with
        assert torch.equal(state["model"][k], v.cpu()), k

    resumed = _learner(voc)
    resumed.fit(4, 1e-2, resume=ckpt)  # nothing left to run: the weights are the checkpoint's
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(state["model"][k], v.cpu()), k


def test_cancel_fit_in_fine_tunes_frozen_phase_goes_on_to_the_unfrozen_one(voc):
    learn, fits = _learner(voc), []

    class Phases(Callback):
        def before_fit(self, learn) -> None:
            fits.append(learn.phase)

    stop = _Raise("after_batch", "CancelFit", lambda lr: lr.phase == 0 and lr.iter == 1)
    learn.fine_tune(2, 1e-2, freeze_epochs=2, cbs=[Phases(), stop])
    assert fits == [0, 1] and len(learn.recorder.values) == 2


def test_cancel_fit_from_after_epoch_lets_every_callback_see_the_epoch(voc, capsys):
    learn, events = _learner(voc), _Events()
    early = _Raise("after_epoch", "CancelFit", lambda lr: lr.epoch == 1)
    early.order = -1  # before the progress table and `events`
    learn.fit(5, 1e-2, cbs=[early, events])
    assert len(learn.recorder.values) == 2 and len(events.weights) == 2
    table = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert table[1:] == ["0", "1"]  # the header, then both epochs


def test_cbs_take_one_callback_or_a_class_and_name_a_wrong_one(voc):
    learn = _learner(voc)
    learn.fit(1, 1e-2, cbs=EarlyStoppingCallback)  # a class, as fastai allows
    learn.fit(1, 1e-2, cbs=ReduceLROnPlateau(patience=3))  # one callback
    with pytest.raises(TypeError, match="cbs= takes Callback objects"):
        learn.fit(1, 1e-2, cbs=["EarlyStoppingCallback"])


# --- the trackers -----------------------------------------------------------------------------


def test_early_stopping_stops_after_patience_epochs_without_improvement(voc, tmp_path, capsys):
    learn = _scripted(_learner(voc, tmp_path), [1.0, 0.8, 0.85, 0.9, 0.7, 0.6], [0.1, 0, 0, 0.2])
    cb = EarlyStoppingCallback(patience=2)
    learn.fit(6, 1e-2, cbs=[cb, SaveModelCallback(monitor="accuracy_multi")])
    assert [row[1] for row in learn.recorder.values] == [1.0, 0.8, 0.85, 0.9]
    assert cb.stopped_epoch == 3 and cb.best == 0.8
    out = capsys.readouterr().out  # the last epoch is saved (and said) before the stop
    assert out.index("Better model found at epoch 3") < out.index(
        "No improvement since epoch 1: early stopping"
    )


def test_early_stopping_min_delta_and_a_metric_where_higher_is_better(voc):
    learn = _scripted(_learner(voc), [1.0, 0.95, 0.5, 0.45, 0.44, 0.1])
    learn.fit(6, 1e-2, cbs=EarlyStoppingCallback(min_delta=0.1, patience=1))
    assert len(learn.recorder.values) == 2  # 0.95 is not 0.1 better than 1.0

    accuracy = [0.5, 0.6, 0.7, 0.65, 0.9]
    learn = _scripted(_learner(voc), [1.0] * 5, accuracy)
    cb = EarlyStoppingCallback(monitor="accuracy_multi", patience=1)
    learn.fit(5, 1e-2, cbs=cb)
    assert cb.comp is np.greater and len(learn.recorder.values) == 4 and cb.best == 0.7


def test_tracker_names_the_columns_it_can_monitor(voc):
    learn = _learner(voc)
    with pytest.raises(ValueError, match="monitor='mAP'.*train_loss, valid_loss, accuracy_multi"):
        learn.fit(1, 1e-2, cbs=EarlyStoppingCallback(monitor="mAP"))


def test_early_stopping_resumes_with_its_patience_count(voc, tmp_path):
    losses = [1.0, 0.8, 0.85, 0.9, 0.7, 0.6]
    ckpt = tmp_path / "run.pt"
    killed = _scripted(_learner(voc), losses)
    kill = _Raise("after_batch", KeyboardInterrupt, lambda lr: (lr.epoch, lr.iter) == (3, 1))
    with pytest.raises(KeyboardInterrupt):
        killed.fit(6, 1e-2, cbs=[EarlyStoppingCallback(patience=2), kill], checkpoint=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 3  # epochs 0-2 done; epoch 2 waited once

    resumed = _scripted(_learner(voc), losses)
    cb = EarlyStoppingCallback(patience=2)
    resumed.fit(6, 1e-2, cbs=cb, resume=ckpt)
    assert cb.stopped_epoch == 3 and len(resumed.recorder.values) == 4


def test_save_model_restores_the_best_epochs_weights(voc, tmp_path, capsys):
    learn = _scripted(_learner(voc, tmp_path), [0.9, 0.5, 0.7, 0.8])
    events, cb = _Events(), SaveModelCallback(with_opt=True)
    learn.fit(4, 1e-2, cbs=[events, cb])
    assert cb.best_epoch == 1 and cb.best == 0.5
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, events.weights[1][k]), k
        assert not torch.equal(v, events.weights[3][k]) or v.dtype == torch.int64, k
    saved = load_file(str(tmp_path / "models" / "model.safetensors"))
    assert all(torch.equal(saved[k], events.weights[1][k]) for k in saved)
    assert (tmp_path / "models" / "model.opt.pt").is_file()
    assert "Better model found at epoch 1 with valid_loss value: 0.5." in capsys.readouterr().out


def test_save_model_every_epoch_and_at_end(voc, tmp_path):
    learn = _scripted(_learner(voc, tmp_path), [0.9, 0.5, 0.7])
    events = _Events()
    learn.fit(3, 1e-2, cbs=[events, SaveModelCallback(every_epoch=True)])
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["model_0.safetensors", "model_1.safetensors", "model_2.safetensors"]
    for k, v in learn.model.state_dict().items():  # nothing restored: the last epoch's weights
        assert torch.equal(v, events.weights[2][k]), k

    learn.fit(2, 1e-2, cbs=SaveModelCallback(fname="final", at_end=True))
    saved = load_file(str(tmp_path / "models" / "final.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in learn.model.state_dict().items())


def test_reduce_lr_on_plateau_divides_the_constant_rate(voc, capsys):
    learn = _scripted(_learner(voc), [1.0, 1.0, 0.5, 0.6, 0.7])
    learn.fit(5, 1e-2, cbs=ReduceLROnPlateau(patience=1, factor=10, min_lr=2e-5))
    per_epoch = np.array(learn.recorder.lrs).reshape(5, 3)
    assert np.allclose(per_epoch[:, 0], [1e-2, 1e-2, 1e-3, 1e-3, 1e-4])
    assert "Epoch 1: reducing lr to 0.001" in capsys.readouterr().out

    learn = _scripted(_learner(voc), [1.0] * 5)
    learn.fit(5, 1e-2, cbs=ReduceLROnPlateau(patience=1, factor=10, min_lr=2e-5))
    per_epoch = np.array(learn.recorder.lrs).reshape(5, 3)
    assert np.allclose(per_epoch[:, 0], [1e-2, 1e-2, 1e-3, 1e-4, 2e-5])  # never below min_lr


def test_reduce_lr_on_plateau_scales_the_rest_of_the_one_cycle(voc):
    plain = _scripted(_learner(voc), [1.0, 0.9, 0.8, 0.8])
    plain.fit_one_cycle(4, 1e-2)
    reduced = _scripted(_learner(voc), [1.0, 0.9, 0.8, 0.8])
    reduced.fit_one_cycle(4, 1e-2, cbs=ReduceLROnPlateau(patience=1, factor=4))
    before, after = np.array(plain.recorder.lrs), np.array(reduced.recorder.lrs)
    assert np.allclose(after[:12], before[:12])  # epochs 0-2: no plateau yet
    assert np.allclose(after[12:], before[12:] / 4)  # the rest of the cycle, 4 times lower


# --- the command line -------------------------------------------------------------------------


def _train(voc, out, *extra: str):
    args = [
        "train", "multilabel", "--csv", voc / "train.csv", "--images", voc / "train",
        "--out", out, "--size", "32", "--arch", "resnet18", "--no-pretrained", "--bs", "4",
        "--workers", "0", "--freeze-epochs", "1", "--no-tune-thresholds", *extra,
    ]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text()), pd.read_csv(out / "history.csv")


def test_cli_early_stop_ends_the_run_where_patience_runs_out(voc, tmp_path):
    metrics, history = _train(voc, tmp_path / "run", "--epochs", "8", "--lr", "0.05",
                              "--early-stop", "1")  # fmt: skip
    unfrozen = history[history.epoch >= 1].valid_loss.tolist()  # the frozen epoch is 0
    stop = next(i for i in range(1, len(unfrozen)) if unfrozen[i] >= min(unfrozen[:i]))
    assert len(unfrozen) == stop + 1 < 8  # it stopped at the first epoch without improvement
    assert metrics["early_stop"] == {"patience": 1, "stopped_at_epoch": stop}


def test_cli_save_best_exports_the_best_epoch(voc, tmp_path):
    out = tmp_path / "run"
    metrics, history = _train(voc, out, "--epochs", "4", "--lr", "0.05", "--save-best")
    unfrozen = history[history.epoch >= 1].valid_loss.tolist()
    best = int(np.argmin(unfrozen))
    assert metrics["best_epoch"]["epoch"] == best
    # the model evaluated and exported after the fit is the best epoch's, not the last one's
    assert metrics["valid_loss"] == pytest.approx(unfrozen[best], rel=1e-4)
    assert best != len(unfrozen) - 1, "the test needs a run whose last epoch is not the best"
    assert not (out / "models").exists()  # the best weights are the export now


def test_trackers_take_fastais_arguments_in_fastais_order():
    def first(cls):  # positional order and defaults, after self
        return [(k, p.default) for k, p in inspect.signature(cls.__init__).parameters.items()][1:]

    head = [("monitor", "valid_loss"), ("comp", None), ("min_delta", 0.0), ("patience", 1)]
    assert first(EarlyStoppingCallback) == [*head, ("reset_on_fit", True)]
    assert first(ReduceLROnPlateau) == [
        *head, ("factor", 10.0), ("min_lr", 0), ("reset_on_fit", True)
    ]  # fmt: skip
    stop = EarlyStoppingCallback("train_loss", None, 0.5, 3, False)
    assert (stop.monitor, stop.min_delta, stop.patience, stop.reset_on_fit) == (
        "train_loss", -0.5, 3, False,
    )  # fmt: skip
