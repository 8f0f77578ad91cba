"""Data-parallel training with torchrun: 2 CPU processes (gloo) on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from typer.testing import CliRunner

from imageblocks.cli import app
from imageblocks.data.loaders import DataLoader, Shard
from imageblocks.learn.distributed import shard_loader, unshard


def test_training_shards_see_each_item_at_most_once_per_epoch():
    n, world = 23, 2
    for epoch in range(3):
        shards = []
        for rank in range(world):
            s = DistributedSampler(
                range(n), num_replicas=world, rank=rank, shuffle=True, drop_last=True, seed=7
            )
            s.set_epoch(epoch)
            shards.append(list(s))
        assert len(shards[0]) == len(shards[1])  # the same number of steps on every process
        seen = shards[0] + shards[1]
        assert len(set(seen)) == len(seen) == n - n % world


def test_gathered_validation_shards_rebuild_the_loader_order():
    n, world = 7, 3
    chunks = []
    for rank in range(world):
        s = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
        chunks.append(torch.tensor(list(s)))  # padded: every rank holds the same count
    assert unshard(chunks, n).tolist() == list(range(n))


def test_a_shard_gives_each_loader_its_share_of_every_epoch():
    n, world = 23, 2
    train = [DataLoader(list(range(n)), bs=4, shuffle=True, drop_last=True) for _ in range(world)]
    for rank, dl in enumerate(train):
        dl.shard = Shard(rank, world, seed=7)
    assert [len(dl) for dl in train] == [2, 2]  # 11 items each, the partial batch dropped
    for _ in range(2):  # a new shuffle every epoch, still disjoint
        seen = [int(i) for dl in train for b in dl for i in b]
        assert len(seen) == len(set(seen)) == 16
    valid = DataLoader(list(range(n)), bs=4, shard=Shard(1, world))
    assert len(valid) == 3 and [int(i) for b in valid for i in b] == list(range(1, n, 2)) + [0]
    valid.shard = None  # back to every item, in order
    assert len(valid) == 6 and [int(i) for b in valid for i in b] == list(range(n))
    with pytest.raises(ValueError, match="rank 2 is outside"):
        Shard(2, world)


def test_loaders_join_no_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, but with no rendezvous to reach
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    dl = DataLoader(list(range(6)), bs=4)
    assert [len(b) for b in dl] == [4, 2] and not dist.is_initialized()
    assert shard_loader(dl).shard is None  # no process group: the run has no shard to give
    dl.shard = Shard(0, 2)
    assert shard_loader(dl).shard is None and len(dl) == 2


def _train(voc, out, torchrun: bool) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*launcher] if torchrun else [sys.executable]
    cmd += [
        "-m", "imageblocks.cli", "train", "multilabel", "--csv", str(voc / "train.csv"),
        "--images", str(voc / "train"), "--out", str(out), "--size", "32", "--bs", "2",
        "--epochs", "1", "--freeze-epochs", "1", "--lr", "1e-3", "--workers", "0",
        "--no-tune-thresholds",
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_train_and_rank_0_writes(voc, tmp_path):
    run = _train(voc, tmp_path / "ddp", torchrun=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("epoch ") == 2  # one table per phase, from rank 0 only
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["n_valid"] == 12 and metrics["n_train"] == 12
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
    assert not (tmp_path / "ddp" / "checkpoint.pt").exists()

    # the metrics were gathered over the whole validation set, not one process's half
    df = pd.read_csv(voc / "train.csv", keep_default_na=False)
    df[df["is_valid"]].to_csv(tmp_path / "valid.csv", index=False)
    res = CliRunner().invoke(
        app,
        ["evaluate", str(tmp_path / "ddp"), "--csv", str(tmp_path / "valid.csv"),
         "--images", str(voc / "train")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    # and with rank 0's batch-norm statistics, the ones it saved: the same loss to rounding
    assert json.loads(res.output)["loss"] == pytest.approx(metrics["valid_loss"], abs=1e-4)

    single = _train(voc, tmp_path / "one", torchrun=False)
    assert single.returncode == 0, single.stderr[-3000:]
    alone = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["valid_loss"] == pytest.approx(alone["valid_loss"], abs=0.1)
