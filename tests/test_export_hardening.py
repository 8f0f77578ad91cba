"""Export is atomic as a folder: interrupted re-exports (real SIGINT/SIGKILL) leave the old model
or the new one, never a mix; a mismatched pair is refused; nothing temporary is left behind."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
import torch

from imageblocks.learn import export, model_folder, onnx_export
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner, read_export
from imageblocks.learn.model_config import ExportError
from imageblocks.learn.model_folder import digest
from imageblocks.learn.onnx_export import export_onnx
from imageblocks.seeding import set_seed
from imageblocks.transforms.item import Resize
from tests.conftest import noise_voc, voc_block

ARCH = "mobilenetv3_small_050"  # 6.5 MB of weights: many exports a second
THRESHOLDS = ([0.3, 0.5, 0.7], [0.6, 0.4, 0.2])


@pytest.fixture(scope="module")
def learners(tmp_path_factory):
    """Two learners of the same architecture and vocab, with different weights and thresholds."""
    root = noise_voc(tmp_path_factory.mktemp("pair"))
    df, dblock = voc_block(root, Resize(32))
    out = []
    for seed, thresholds in enumerate(THRESHOLDS):
        set_seed(seed)
        learn = vision_learner(dblock.dataloaders(df, bs=4, num_workers=0), ARCH, pretrained=False)
        learn.thresholds = torch.tensor(thresholds)
        out.append(learn)
    return out


@pytest.fixture(scope="module")
def graphs(learners) -> dict[int, bytes]:
    """Each learner's model.onnx, traced once: the exports below rewrite it, not re-trace it."""
    return {id(learn): onnx_export.graph_bytes(learn) for learn in learners}


@pytest.fixture(autouse=True)
def _traced_once(graphs, monkeypatch):
    """Exports write the learners' graphs traced once (many exports a second, as before)."""
    for module in (export, onnx_export):
        monkeypatch.setattr(module, "graph_bytes", lambda learn, *args: graphs[id(learn)])


def _which(folder, learners, check_files: bool = True) -> int:
    """Which of `learners` the folder holds (0 or 1), checking the whole folder is that one
    (and, with `check_files`, that its files are still those its config lists)."""
    config, state = read_export(folder)  # what load_learner reads, checked the same way
    ours = [x.model.state_dict() for x in learners]
    found = [i for i, x in enumerate(ours) if all(torch.equal(x[k], v) for k, v in state.items())]
    assert len(found) == 1, "the weights are neither the old model's nor the new one's"
    i = found[0]
    assert config["thresholds"]["per_class"] == pytest.approx(THRESHOLDS[i]), "a mixed export"
    for name, entry in config["files"].items() if check_files else ():
        assert digest((folder / name).read_bytes()) == entry, name
    return i


def _temps(parent, pid: int | None = None) -> list[str]:
    """Hidden temporary entries beside the model folder (of one writer's pid, if given)."""
    names = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    return [n for n in names if pid is None or f".{pid}-" in n]


def _re_export_forever(learners, folder) -> None:
    """In a forked child: export the two learners in turn until a signal ends the process."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        i = 0
        while True:
            learners[i % 2].export(folder)
            i += 1
    except KeyboardInterrupt:
        code = 130
    finally:
        os._exit(code)


def _wait(pid: int, timeout: float) -> int | None:
    """The child's wait status, or None when it is still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a re-exporting child (POSIX)")
def test_interrupted_re_exports_leave_the_old_or_the_new_model(learners, tmp_path):
    folder = tmp_path / "model"
    learners[0].export(folder)
    rng = random.Random(0)
    seen, killed_mid_export, unwound, hung = set(), 0, 0, 0
    for round_ in range(20):
        pid = os.fork()
        if pid == 0:
            _re_export_forever(learners, folder)
        time.sleep(rng.uniform(0.05, 0.3))
        seen.add(_which(folder, learners, check_files=False))  # while the child swaps exports in
        time.sleep(rng.uniform(0.0, 0.1))
        sig = signal.SIGINT if round_ % 2 == 0 else signal.SIGKILL
        os.kill(pid, sig)
        status = _wait(pid, 20 if sig == signal.SIGINT else 60)
        if status is None:
            # a forked child of a process with threads can block forever on a lock another
            # thread held at the fork (then it never runs the SIGINT handler): kill it instead
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            hung += 1
        elif sig == signal.SIGINT:  # Ctrl-C: the export unwinds and removes its temporary folder
            unwound += os.waitstatus_to_exitcode(status) == 130 and not _temps(tmp_path, pid)
        else:
            killed_mid_export += bool(_temps(tmp_path, pid))
        seen.add(_which(folder, learners))
    assert seen == {0, 1}
    assert killed_mid_export >= 1  # some kills did land in the middle of an export
    assert unwound >= 5 and hung <= 5, (unwound, hung)  # most Ctrl-Cs unwound cleanly
    learners[1].export(folder)  # the next export removes what the killed ones left
    assert not _temps(tmp_path) and _which(folder, learners) == 1
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.onnx", "model.safetensors",
    ]  # fmt: skip
    loaded = load_learner(folder)
    assert torch.equal(loaded.thresholds, learners[1].thresholds)


def _interrupt_after(monkeypatch, step: int) -> list[str]:
    """Raise KeyboardInterrupt right after the `step`-th file-system step of an export."""
    done: list[str] = []

    def wrap(module, name):
        real = getattr(module, name)

        def step_then_maybe_stop(*args, **kwargs):
            result = real(*args, **kwargs)
            done.append(name)
            if len(done) == step:
                raise KeyboardInterrupt
            return result

        monkeypatch.setattr(module, name, step_then_maybe_stop)

    wrap(onnx_export, "write_bytes")
    for name in ("_carry_over", "fsync_dir", "_exchange"):
        wrap(model_folder, name)
    return done


def test_an_interrupt_at_any_step_of_an_onnx_re_export_keeps_one_whole_export(
    learners, graphs, tmp_path, monkeypatch
):
    folder = tmp_path / "model"
    learners[0].export(folder)
    export_onnx(learners[0], folder)
    (folder / "metrics.json").write_text("{}")  # a training run's file: it stays
    steps = 0
    while True:
        with monkeypatch.context() as m:
            done = _interrupt_after(m, steps + 1)
            try:
                export_onnx(learners[1], folder)
                interrupted = False
            except KeyboardInterrupt:
                interrupted = True
        expected = 1 if "_exchange" in done else 0  # swapped in, or not at all
        assert _which(folder, learners) == expected, done
        assert (folder / "model.onnx").read_bytes() == graphs[id(learners[expected])]
        assert (folder / "metrics.json").read_text() == "{}"
        assert not _temps(tmp_path), done
        if not interrupted:
            break
        export_onnx(learners[0], folder)  # back to the old model for the next step
        steps += 1
    assert steps >= 6  # three files, the carry-over, two flushes and the swap


def test_without_rename_exchange_the_two_renames_restore_the_old_folder(
    learners, tmp_path, monkeypatch
):
    folder = tmp_path / "model"
    learners[0].export(folder)
    monkeypatch.setattr(model_folder, "_exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        real_rename(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # the old folder is aside, the new one not yet in
            raise KeyboardInterrupt

    monkeypatch.setattr(model_folder.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        learners[1].export(folder)
    monkeypatch.setattr(model_folder.os, "rename", real_rename)
    assert _which(folder, learners) == 0 and not _temps(tmp_path)
    learners[1].export(folder)
    assert _which(folder, learners) == 1 and not _temps(tmp_path)


def test_a_mismatched_pair_is_refused_naming_both_files(learners, tmp_path):
    a, b = learners[0].export(tmp_path / "a"), learners[1].export(tmp_path / "b")
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    t0 = time.perf_counter()
    with pytest.raises(ExportError, match="model.safetensors.*config.json.*different exports"):
        load_learner(a)
    assert time.perf_counter() - t0 < 2  # no export is running: refused without waiting
    config = json.loads((a / "config.json").read_text())
    del config["files"]  # a folder exported before the digest was recorded still loads
    (a / "config.json").write_text(json.dumps(config))
    assert load_learner(a).config["task"] == "multilabel"


def test_re_export_keeps_other_files_and_replaces_the_old_onnx(learners, graphs, tmp_path):
    folder = tmp_path / "model"
    learners[0].export(folder)
    export_onnx(learners[0], folder, size=(32, 32), check=False)
    (folder / "metrics.json").write_text('{"mAP": 0.5}')
    (folder / "plots").mkdir()
    (folder / "plots" / "loss.png").write_bytes(b"png")
    (folder / "config.json.tmp").write_text("left by an older imageblocks")
    (folder / "latest").symlink_to("metrics.json")
    inode = (folder / "metrics.json").stat().st_ino
    learners[1].export(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "latest", "metrics.json", "model.onnx", "model.safetensors", "plots",
    ]  # fmt: skip
    assert (folder / "model.onnx").read_bytes() == graphs[id(learners[1])]
    assert (folder / "metrics.json").stat().st_ino == inode  # hard-linked, not copied
    assert (folder / "plots" / "loss.png").read_bytes() == b"png"
    assert (folder / "latest").read_text() == '{"mAP": 0.5}'
    assert _which(folder, learners) == 1 and not _temps(tmp_path)


def test_export_onnx_into_the_model_folder_rewrites_its_weights(learners, tmp_path):
    folder = tmp_path / "model"
    learners[0].export(folder)
    export_onnx(learners[1], folder, size=(32, 32), check=False)
    assert _which(folder, learners) == 1  # weights, thresholds and graph from the same learner
    assert set(json.loads((folder / "config.json").read_text())["files"]) == {
        "model.onnx",
        "model.safetensors",
    }


def test_stale_temporary_folders_of_killed_exports_are_removed(learners, tmp_path):
    folder = tmp_path / "model"
    dead = tmp_path / ".model.4194999-dead.export-tmp"  # above any pid: its writer is gone
    busy = tmp_path / f".model.{os.getppid()}-beef.export-tmp"  # a live process is writing
    for d in (dead, busy):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    learners[0].export(folder)
    assert not dead.exists() and busy.exists()
    os.utime(busy, (time.time() - 2 * 86400,) * 2)  # a day old: stale whoever holds the pid
    learners[0].export(folder)
    assert not _temps(tmp_path)


def test_export_into_a_file_is_a_clear_error(learners, tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(ExportError, match="is a file"):
        learners[0].export(tmp_path / "model")
