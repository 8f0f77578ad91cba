"""Where a run's history goes: CSVLogger's file, TensorBoard's event files and MLflow's file
store, each read back and compared with what the recorder saw."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from imageblocks.learn.callbacks import Callback
from imageblocks.learn.learner import Learner, vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.metrics import accuracy_multi
from imageblocks.learn.tracking import CSVLogger, MLflowCallback, TensorBoardCallback, run_params
from imageblocks.recipes.history import LossHistory
from imageblocks.seeding import set_seed
from imageblocks.transforms.item import Resize
from tests.conftest import voc_block


def _learner(voc, tiny: bool = True) -> Learner:
    """The `voc` fixture at 16 px (3 batches of 4 per epoch): a tiny conv net, or
    efficientnet_lite0 (which exports)."""
    set_seed(0)
    df, dblock = voc_block(voc, Resize(16 if tiny else 32))
    dls = dblock.dataloaders(df, bs=4, num_workers=0)
    if not tiny:
        return vision_learner(dls, "efficientnet_lite0", metrics=[accuracy_multi], path=voc)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), head)
    return Learner(dls, model, metrics=[accuracy_multi], path=voc)


class _Rows(Callback):
    """Every epoch's recorder row, across the fits of a call."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []

    def after_epoch(self, learn) -> None:
        self.rows.append(list(learn.recorder.values[-1]))


class _InterruptAfterEpoch(Callback):
    """Ctrl-C once every other callback has seen `epoch` of phase `phase`, before its checkpoint."""

    order = 99

    def __init__(self, phase: int, epoch: int) -> None:
        self.phase, self.epoch = phase, epoch

    def after_epoch(self, learn) -> None:
        if (learn.phase, learn.epoch) == (self.phase, self.epoch):
            raise KeyboardInterrupt


# --- CSVLogger --------------------------------------------------------------------------------


def test_csv_logger_writes_every_epoch_of_the_call(voc):
    learn, rows, log = _learner(voc), _Rows(), CSVLogger()
    learn.fine_tune(2, 1e-2, freeze_epochs=1, cbs=[rows, log])
    lines = (voc / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,valid_loss,accuracy_multi,time"
    df = log.read_log()
    assert df.epoch.tolist() == [0, 1, 2]  # fine_tune's frozen epoch, then the unfrozen two
    assert np.allclose(df[["train_loss", "valid_loss", "accuracy_multi"]].to_numpy(), rows.rows)
    assert all(len(t) == 5 and t[2] == ":" for t in df.time)  # mm:ss


def test_csv_logger_append_keeps_the_rows_before(voc):
    learn = _learner(voc)
    learn.fit(2, 1e-2, cbs=CSVLogger())
    learn.fit(1, 1e-2, cbs=CSVLogger(append=True))
    text = (voc / "history.csv").read_text()
    assert text.count("epoch,") == 1 and pd.read_csv(voc / "history.csv").epoch.tolist() == [
        0,
        1,
        0,
    ]
    learn.fit(1, 1e-2, cbs=CSVLogger())
    assert pd.read_csv(voc / "history.csv").epoch.tolist() == [0]


def test_csv_logger_on_a_resumed_call_writes_each_epoch_once(voc, tmp_path):
    ckpt = tmp_path / "run.pt"
    killed = _learner(voc)
    with pytest.raises(KeyboardInterrupt):  # epoch 1's row is written, its checkpoint is not
        killed.fine_tune(
            2, 1e-2, freeze_epochs=1, checkpoint=ckpt, cbs=[CSVLogger(), _InterruptAfterEpoch(1, 0)]
        )
    assert pd.read_csv(voc / "history.csv").epoch.tolist() == [0, 1]

    resumed, rows = _learner(voc), _Rows()
    resumed.fine_tune(2, 1e-2, freeze_epochs=1, resume=ckpt, cbs=[rows, CSVLogger()])
    df = pd.read_csv(voc / "history.csv")
    assert df.epoch.tolist() == [0, 1, 2]
    assert np.allclose(df[["train_loss", "valid_loss", "accuracy_multi"]].to_numpy()[1:], rows.rows)


# --- TensorBoard ------------------------------------------------------------------------------


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_logs_params_steps_epochs_preds_and_model(voc, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams import plugin_data_pb2

    learn, history, rows = _learner(voc, tiny=False), LossHistory(), _Rows()
    tb = TensorBoardCallback(tmp_path / "tb", log_preds=True, log_model=True)
    learn.fine_tune(1, 1e-3, freeze_epochs=1, cbs=[history, rows, tb])

    acc = _events(tmp_path / "tb")
    steps = acc.Scalars("train_loss")
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]  # both phases, one step per batch
    assert np.allclose([s.value for s in steps], history.train, rtol=1e-6)
    valid = acc.Scalars("epoch/valid_loss")
    assert [s.step for s in valid] == [0, 1]
    assert np.allclose([s.value for s in valid], [r[1] for r in rows.rows], rtol=1e-6)
    assert [s.step for s in acc.Scalars("epoch/accuracy_multi")] == [0, 1]
    assert "sample_results" in acc.Tags()["images"]

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["call"].string_value == "fine_tune" and hparams["bs"].number_value == 4
    assert hparams["phase1.lr"].string_value == str(run_params(learn)["phase1.lr"])

    model = load_learner(tmp_path / "tb" / "model")  # the exported folder, whole
    for k, v in learn.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[k].cpu(), v.cpu()), k


def test_tensorboard_traces_the_graph_and_closes_when_the_fit_is_interrupted(voc, tmp_path):
    pytest.importorskip("tensorboard")
    learn, tb = _learner(voc), TensorBoardCallback(tmp_path / "tb", trace_model=True)
    with pytest.raises(KeyboardInterrupt):
        learn.fine_tune(2, 1e-2, freeze_epochs=1, cbs=[tb, _InterruptAfterEpoch(1, 0)])
    assert tb._plan is None and not tb._active  # the run ended with the call
    acc = _events(tmp_path / "tb")
    assert [s.step for s in acc.Scalars("epoch/valid_loss")] == [0, 1]
    graph = acc.Graph()
    assert any(node.op == "aten::_convolution" for node in graph.node), [n.op for n in graph.node]


# --- MLflow -----------------------------------------------------------------------------------


def test_mlflow_logs_params_steps_epochs_and_model_to_the_file_store(voc, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"file:{tmp_path / 'mlruns'}"
    learn, history, rows = _learner(voc, tiny=False), LossHistory(), _Rows()
    cb = MLflowCallback(experiment="chapter6", tracking_uri=uri, run_name="ft", log_model=True)
    learn.fine_tune(1, 1e-3, freeze_epochs=1, cbs=[history, rows, cb])
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # opted in for that client only

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(cb.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "ft"
    assert client.get_experiment(run.info.experiment_id).name == "chapter6"
    params = run.data.params
    assert params["call"] == "fine_tune" and params["bs"] == "4"
    assert params["phase0.frozen"] == "True" and params["phase1.epochs"] == "1"
    loss = client.get_metric_history(cb.run_id, "train_loss")
    assert [m.step for m in loss] == [1, 2, 3, 4, 5, 6]
    assert np.allclose([m.value for m in loss], history.train, rtol=1e-6)
    valid = sorted(client.get_metric_history(cb.run_id, "epoch/valid_loss"), key=lambda m: m.step)
    assert [m.step for m in valid] == [0, 1]
    assert np.allclose([m.value for m in valid], [r[1] for r in rows.rows], rtol=1e-6)

    names = {os.path.basename(a.path) for a in client.list_artifacts(cb.run_id, "model")}
    assert {"config.json", "model.safetensors"} <= names
    folder = client.download_artifacts(cb.run_id, "model", str(tmp_path / "dl"))
    model = load_learner(folder)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[k].cpu(), v.cpu()), k


def test_mlflow_run_is_killed_by_ctrl_c(voc, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    learn, cb = _learner(voc), MLflowCallback(tracking_uri=uri)
    with pytest.raises(KeyboardInterrupt):
        learn.fine_tune(2, 1e-2, freeze_epochs=1, cbs=[cb, _InterruptAfterEpoch(1, 0)])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(cb.run_id)
    assert run.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(cb.run_id, "epoch/valid_loss")] == [0, 1]
