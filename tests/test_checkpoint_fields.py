"""A checkpoint with a missing or wrongly typed field is a `CheckpointError` naming the field,
never a `TypeError`/`KeyError` from deep inside the resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imageblocks.learn.checkpoint import CheckpointError, load_checkpoint, restore, rng_state


def _state() -> dict:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return {
        "format": 1,
        "plan": {"call": "fit_one_cycle"},
        "phase": 0,
        "epoch": 1,
        "n_epoch": 2,
        "n_iter": 6,
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "recorder": {
            "lrs": [],
            "moms": [],
            "losses": [],
            "values": [],
            "iters": [],
            "smooth": [0, 0],
        },
        "rng": rng_state(),
    }


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("format", "1", "'format' is str"),
        ("format", [1], "'format' is list"),
        ("format", None, "'format' is NoneType"),
        ("format", True, "'format' is bool"),
        ("phase", "0", "'phase'"),
        ("epoch", -1, "'epoch'"),
        ("epoch", 5, "past the phase's n_epoch"),
        ("n_iter", 1.5, "'n_iter'"),
        ("plan", 3, "'plan'"),
        ("model", [torch.zeros(2)], "'model'"),
        ("model", {"w": "not a tensor"}, "'model'"),
        ("opt", {}, "'opt'"),
        ("recorder", {"lrs": []}, "'recorder'"),
        ("rng", {"torch": torch.zeros(3)}, "'rng'"),
        ("rng", None, "'rng' must be"),
    ],
)
def test_wrongly_typed_fields_are_checkpoint_errors(tmp_path, key, value, match):
    state = _state()
    state[key] = value
    torch.save(state, tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "run.pt")


def test_missing_field_is_named(tmp_path):
    state = _state()
    del state["recorder"]
    torch.save(state, tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match="'recorder'.*missing"):
        load_checkpoint(tmp_path / "run.pt")


def test_a_valid_checkpoint_loads(tmp_path):
    torch.save(_state(), tmp_path / "run.pt")
    assert load_checkpoint(tmp_path / "run.pt")["epoch"] == 1


def test_a_checkpoint_of_another_model_does_not_restore(tmp_path):
    torch.save(_state(), tmp_path / "run.pt")
    state = load_checkpoint(tmp_path / "run.pt")
    other = nn.Linear(3, 3)
    learn = SimpleNamespace(model=other, opt=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(CheckpointError, match="does not fit this learner"):
        restore(learn, state)
