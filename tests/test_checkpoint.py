"""Checkpoints: a killed or interrupted run continues from its last completed epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from imageblocks.learn.callbacks import Callback
from imageblocks.learn.checkpoint import CheckpointError, load_checkpoint
from imageblocks.learn.learner import vision_learner
from imageblocks.seeding import set_seed
from imageblocks.transforms.item import RandomResizedCrop
from tests.conftest import voc_block


def _learner(voc, seed: int = 0):
    set_seed(seed)
    df, dblock = voc_block(voc, RandomResizedCrop(32, min_scale=0.5))
    dls = dblock.dataloaders(df, bs=4, num_workers=0)
    return vision_learner(dls, "efficientnet_lite0")


class _InterruptAt(Callback):
    """Raises KeyboardInterrupt (what Ctrl-C does) at a given epoch and batch of the second phase."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self.fits = epoch, batch, 0

    def before_fit(self, learn) -> None:
        self.fits += 1

    def after_batch(self, learn) -> None:
        if self.fits == 2 and learn.epoch == self.epoch and learn.iter == self.batch:
            raise KeyboardInterrupt


def test_resumed_fine_tune_matches_an_uninterrupted_run(voc, tmp_path, capsys):
    whole = _learner(voc)
    whole.fine_tune(2, base_lr=1e-3, freeze_epochs=1, checkpoint=tmp_path / "whole.pt")
    expected = whole.validate()

    ckpt = tmp_path / "run.pt"
    killed = _learner(voc)
    with pytest.raises(KeyboardInterrupt):
        killed.fine_tune(
            2, base_lr=1e-3, freeze_epochs=1, checkpoint=ckpt, cbs=[_InterruptAt(1, 1)]
        )
    assert "resume with resume=" in capsys.readouterr().err
    state = load_checkpoint(ckpt)
    assert (state["phase"], state["epoch"]) == (1, 1)  # the frozen epoch and one unfrozen epoch
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind

    resumed = _learner(voc, seed=123)  # a different initialisation: the checkpoint replaces it
    resumed.fine_tune(2, base_lr=1e-3, freeze_epochs=1, resume=ckpt)
    assert torch.allclose(torch.tensor(resumed.validate()), torch.tensor(expected), atol=1e-4)
    assert len(resumed.recorder.values) == 2  # the recorder carries the epochs before the kill
    assert load_checkpoint(ckpt)["epoch"] == 2


def test_resume_refuses_a_different_call_and_a_corrupt_file(voc, tmp_path):
    learn = _learner(voc)
    ckpt = tmp_path / "run.pt"
    learn.fit_one_cycle(1, 1e-3, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="fit_one_cycle.*same call"):
        _learner(voc).fit_one_cycle(2, 1e-3, resume=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        _learner(voc).fit_one_cycle(1, 1e-3, resume=ckpt)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _learner(voc).fit_one_cycle(1, 1e-3, resume=tmp_path / "missing.pt")


def test_resume_names_each_field_of_the_plan_that_differs(voc, tmp_path):
    ckpt = tmp_path / "run.pt"
    _learner(voc).fine_tune(1, base_lr=1e-3, freeze_epochs=1, checkpoint=ckpt)
    stored = load_checkpoint(ckpt)["plan"]
    assert stored["call"] == "fine_tune" and stored["wd"] == 1e-2
    assert [p["frozen"] for p in stored["phases"]] == [True, False]
    assert stored["phases"][1]["lr"] == {"start": 5e-6, "stop": 5e-4}  # slice(lr/2/100, lr/2)

    learn = _learner(voc)
    with pytest.raises(
        CheckpointError, match=r"phases\[0\]\.lr: the checkpoint has 0.001, this call 0.002"
    ):
        learn.fine_tune(1, base_lr=2e-3, freeze_epochs=1, resume=ckpt)
    with pytest.raises(CheckpointError, match=r"wd: the checkpoint has 0.01, this call 0.1"):
        learn.fine_tune(1, base_lr=1e-3, freeze_epochs=1, wd=0.1, resume=ckpt)
    with pytest.raises(
        CheckpointError, match=r"call: the checkpoint has 'fine_tune', this call 'fit'"
    ):
        learn.fit(1, 1e-3, resume=ckpt)
    learn.fine_tune(1, base_lr=1e-3, freeze_epochs=1, resume=ckpt)  # the same call resumes


def test_resume_refuses_a_checkpoint_whose_plan_is_text(voc, tmp_path):
    ckpt = tmp_path / "run.pt"
    _learner(voc).fit_one_cycle(1, 1e-3, checkpoint=ckpt)
    state = load_checkpoint(ckpt)
    state["plan"] = "fit_one_cycle(1, lr_max=0.001, ...) with 3 batches per epoch"
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="earlier imageblocks"):
        _learner(voc).fit_one_cycle(1, 1e-3, resume=ckpt)


def test_same_seed_same_split_first_batch_and_losses(voc):
    runs = []
    for _ in range(2):
        learn = _learner(voc)
        xb, yb = learn.dls.train.one_batch()
        learn.fit(1, 1e-3)
        runs.append((learn.dls.valid.dataset.idxs, xb, yb, learn.recorder.losses[:3]))
    (items_a, xa, ya, la), (items_b, xb, yb, lb) = runs
    assert items_a == items_b
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert la == lb


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "imageblocks.cli", *args]


def _train_args(voc, out) -> list[str]:
    return [
        "train", "multilabel", "--csv", str(voc / "train.csv"), "--images", str(voc / "train"),
        "--out", str(out), "--size", "32", "--bs", "2", "--epochs", "2", "--freeze-epochs", "2",
        "--lr", "1e-3", "--workers", "0", "--no-tune-thresholds",
    ]  # fmt: skip


def _start_and_wait_for_checkpoint(args: list[str], ckpt) -> subprocess.Popen:
    # started as a shell starts it, with Ctrl-C's default action (not an ignored SIGINT that a
    # process before it in the suite may have left, which Python would keep ignoring)
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written in 2 minutes"
        time.sleep(0.005)
    return proc


def test_cli_run_killed_with_sigkill_resumes_to_the_same_metrics(voc, tmp_path):
    env_ok = subprocess.run(_cli(*_train_args(voc, tmp_path / "whole")), capture_output=True)
    assert env_ok.returncode == 0, env_ok.stderr.decode()
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert not (tmp_path / "whole" / "checkpoint.pt").exists()  # removed once exported

    out = tmp_path / "run"
    proc = _start_and_wait_for_checkpoint(_cli(*_train_args(voc, out)), out / "checkpoint.pt")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["phase"] * 2 + state["epoch"] < 4  # killed before the end

    done = subprocess.run(_cli(*_train_args(voc, out), "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = json.loads((out / "metrics.json").read_text())
    for key in ("valid_loss", "accuracy_multi", "mAP"):
        assert got[key] == pytest.approx(expected[key], abs=1e-3), key


@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_stops_cleanly_with_a_resumable_checkpoint(voc, tmp_path):
    out = tmp_path / "run"
    proc = _start_and_wait_for_checkpoint(_cli(*_train_args(voc, out)), out / "checkpoint.pt")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.pt")["format"] == 1
    assert not list(out.glob(".*.tmp"))
