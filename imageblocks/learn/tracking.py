"""Where a training run's history goes: a CSV file (`CSVLogger`), TensorBoard
(`TensorBoardCallback`) or MLflow (`MLflowCallback`).

Each follows one training call (`fit`, `fit_one_cycle`, `fine_tune` with its two phases) as one
run: epochs are numbered across the call's phases (fine_tune's frozen epoch is 0, the unfrozen
ones 1, 2, ...) and steps count the batches since the call began, so a resumed run writes on
where the killed one stopped. The trackers log the call's hyper-parameters (`run_params`), the
smoothed training loss and learning rate of every step, every epoch's recorder row and, with
`log_model=True`, the exported model folder. Under torchrun only rank 0 writes. TensorBoard
and MLflow are optional: `pip install 'imageblocks[track]'`.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from imageblocks.learn import distributed
from imageblocks.learn.callbacks import Callback
from imageblocks.learn.progress import format_time
from imageblocks.utils import callable_name

__all__ = ["CSVLogger", "MLflowCallback", "RunCallback", "TensorBoardCallback", "run_params"]


def run_params(learn: Any) -> dict[str, str | int | float | bool]:
    """The hyper-parameters of the training call running: model, data, loss, optimiser, and
    each phase's epochs, rates and schedule (`phase1.lr` for fine_tune's second phase)."""
    config = getattr(learn.model, "config", {})
    params: dict[str, Any] = {
        "arch": config.get("arch") or type(learn.model).__name__,
        "n_train": len(learn.dls.train.dataset),
        "n_valid": len(learn.dls.valid.dataset),
        "bs": learn.dls.train.bs,
        "loss_func": callable_name(learn.loss_func),
        "opt_func": callable_name(learn.opt_func),
        "metrics": ", ".join(learn.metric_names),
        "precision": str(learn.precision),
    }
    plan = learn.plan
    if plan is not None:
        params.update(call=plan.call, wd=plan.wd, batches_per_epoch=plan.batches_per_epoch)
        for i, phase in enumerate(plan.to_dict()["phases"]):
            prefix = f"phase{i}." if len(plan.phases) > 1 else ""
            params.update({prefix + k: v for k, v in phase.items()})
    return {k: v if isinstance(v, (int, float, bool, str)) else str(v) for k, v in params.items()}


class RunCallback(Callback):
    """A callback that follows a whole training call: `start_run` at its first fit, `end_run`
    after its last (or when it fails), with the epoch and step numbers of the call."""

    order = 70  # after the trackers: the row an epoch logs is final

    def __init__(self) -> None:
        self._plan: Any = None

    def epoch_offset(self, learn: Any) -> int:
        """Epochs of the call's phases before the one running."""
        plan = learn.plan
        return sum(p.epochs for p in plan.phases[: learn.phase]) if plan is not None else 0

    def global_epoch(self, learn: Any) -> int:
        """The running epoch, counted from the call's start."""
        return self.epoch_offset(learn) + learn.epoch

    def global_step(self, learn: Any) -> int:
        """The running batch, counted from the call's start (1 after the first one)."""
        return self.epoch_offset(learn) * learn.n_iter + learn.train_iter + 1

    def before_fit(self, learn: Any) -> None:
        """Start a run at the call's first fit (a resumed call: the first fit it runs)."""
        if learn.plan is not self._plan and distributed.is_main():
            self._plan = learn.plan
            resumed = learn.phase > 0 or len(learn.recorder.values) > 0
            self.start_run(learn, resumed)

    def after_fit(self, learn: Any) -> None:
        """End the run after the call's last fit, or when the fit raised."""
        if self._plan is None or learn.plan is not self._plan:
            return
        error = sys.exc_info()[1]  # after_fit runs in the loop's `finally`
        last = learn.plan is None or learn.phase == len(learn.plan.phases) - 1
        if error is not None or last:
            self._plan = None
            self.end_run(learn, error)

    def epoch_row(self, learn: Any) -> dict[str, float]:
        """The last epoch's recorder row by column name, without the missing values."""
        if not learn.recorder.values:
            return {}
        names = learn.recorder.metric_names[1:-1]
        row = learn.recorder.values[-1]
        return {n: float(v) for n, v in zip(names, row) if v is not None}

    def start_run(self, learn: Any, resumed: bool) -> None:
        """Open the run (`resumed`: a killed call continues)."""

    def end_run(self, learn: Any, error: BaseException | None) -> None:
        """Close the run; `error` is what ended the fit, if anything did."""


class CSVLogger(RunCallback):
    """Writes the recorder's rows to `learn.path/fname` as they come (epoch, train_loss,
    valid_loss, the metrics, time); `append` keeps the rows already in the file."""

    def __init__(self, fname: str = "history.csv", append: bool = False) -> None:
        super().__init__()
        self.fname, self.append = fname, append
        self.file: Any = None
        self.path: Path | None = None  # known once a fit has started

    def start_run(self, learn: Any, resumed: bool) -> None:
        """Open the file: afresh with its header, or after the rows kept."""
        self.path = Path(learn.path) / self.fname
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = ",".join(learn.recorder.metric_names)
        if resumed:  # drop the rows the killed run wrote after its checkpoint
            self._keep_rows_before(self.epoch_offset(learn) + len(learn.recorder.values))
        fresh = not (resumed or self.append) or not self.path.is_file()
        self.file = open(self.path, "w" if fresh else "a", newline="")
        if fresh or self.path.stat().st_size == 0:
            self.file.write(header + "\n")
            self.file.flush()

    def _keep_rows_before(self, epoch: int) -> None:
        """Remove the file's last rows numbered `epoch` or more."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        while (
            len(lines) > 1 and _row_epoch(lines[-1]) is not None and _row_epoch(lines[-1]) >= epoch
        ):
            lines.pop()
        self.path.write_text("".join(lines))

    def after_epoch(self, learn: Any) -> None:
        """Append the epoch's row."""
        if self.file is None:
            return
        values = ["" if v is None else repr(float(v)) for v in learn.recorder.values[-1]]
        row = [str(self.global_epoch(learn)), *values, format_time(learn.epoch_time)]
        csv.writer(self.file).writerow(row)
        self.file.flush()

    def end_run(self, learn: Any, error: BaseException | None) -> None:
        """Close the file."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def read_log(self) -> pd.DataFrame:
        """The rows written so far, as a DataFrame."""
        if self.path is None or not self.path.is_file():
            raise FileNotFoundError(
                f"CSVLogger: no {self.fname} written yet: pass the logger in cbs= and fit first"
            )
        return pd.read_csv(self.path)


def _row_epoch(line: str) -> int | None:
    """The epoch number a CSV row starts with (None for a header or a blank line)."""
    head = line.split(",", 1)[0].strip()
    return int(head) if head.isdigit() else None


class _StepLogger(RunCallback, abc.ABC):
    """What the trackers share: a loss and rate every step, a row every epoch, the model folder
    at the end (`log_model`)."""

    def __init__(self, log_model: bool = False) -> None:
        super().__init__()
        self.log_model = log_model
        self._active = False

    def before_fit(self, learn: Any) -> None:
        """Start the run at the call's first fit; count the batches recorded."""
        super().before_fit(learn)
        self._n_losses = len(learn.recorder.losses)

    def start_run(self, learn: Any, resumed: bool) -> None:
        """Open the run and log the hyper-parameters."""
        self._active = True
        self.open(learn, run_params(learn))

    def after_batch(self, learn: Any) -> None:
        """Log the step's smoothed loss and the head's rate (not for a cancelled batch)."""
        losses = learn.recorder.losses
        if not self._active or len(losses) == self._n_losses:
            return
        self._n_losses = len(losses)
        step = self.global_step(learn)
        self.scalars({"train_loss": losses[-1], "lr": learn.recorder.lrs[-1]}, step)

    def after_epoch(self, learn: Any) -> None:
        """Log the epoch's recorder row."""
        if self._active:
            row = {f"epoch/{k}": v for k, v in self.epoch_row(learn).items()}
            self.scalars({**row, "epoch/time": learn.epoch_time}, self.global_epoch(learn))

    def end_run(self, learn: Any, error: BaseException | None) -> None:
        """Log the model folder (`log_model`, when the call succeeded) and close the run."""
        if not self._active:
            return
        self._active = False
        final = {f"epoch/{k}": v for k, v in self.epoch_row(learn).items()}
        model = self.save_model(learn) if self.log_model and error is None else None
        self.close(learn, final, model, error)

    # what a tracker implements
    @abc.abstractmethod
    def open(self, learn: Any, params: dict[str, Any]) -> None:
        """Start a run with these hyper-parameters."""

    @abc.abstractmethod
    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log scalars at `step`."""

    @abc.abstractmethod
    def save_model(self, learn: Any) -> str:
        """Export the model into the run; where it went."""

    @abc.abstractmethod
    def close(
        self, learn: Any, final: dict[str, float], model: str | None, error: BaseException | None
    ) -> None:
        """End the run (`final`: the last epoch's row)."""


def _missing(package: str, extra: str = "track") -> ImportError:
    return ImportError(
        f"this callback needs the {package} package: pip install 'imageblocks[{extra}]' "
        f"(or pip install {package})"
    )


class TensorBoardCallback(_StepLogger):
    """Logs to TensorBoard (`torch.utils.tensorboard`) in `log_dir` (default: runs/DATE_HOST):
    scalars `train_loss`, `lr` by step and `epoch/<column>` by epoch, the hyper-parameters in
    the HParams tab; `trace_model` adds the model's graph, `log_preds` a figure of
    `show_results` every epoch, `log_model` the exported model under `log_dir/model`."""

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        trace_model: bool = False,
        log_preds: bool = False,
        n_preds: int = 9,
        log_model: bool = False,
    ) -> None:
        super().__init__(log_model)
        self.log_dir, self.trace_model, self.log_preds, self.n_preds = (
            log_dir, trace_model, log_preds, n_preds,
        )  # fmt: skip
        self.writer: Any = None
        self._params: dict[str, Any] = {}

    def open(self, learn: Any, params: dict[str, Any]) -> None:
        """Create the writer; write the hyper-parameters as text and, optionally, the graph."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard") from None
        self.writer = SummaryWriter(log_dir=None if self.log_dir is None else str(self.log_dir))
        self._params = params
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("hyperparameters", "| name | value |\n| --- | --- |\n" + table)
        if self.trace_model:
            self._add_graph(learn)

    def _add_graph(self, learn: Any) -> None:
        dl = learn.dls.valid if len(learn.dls.valid.dataset) else learn.dls.train
        with torch.random.fork_rng(devices=[]):  # the training's random stream stays as it is
            xs, _ = learn.split_batch(dl.one_batch())
        was_training = learn.model.training
        learn.model.eval()
        try:
            with warnings.catch_warnings():  # add_graph's tracer is deprecated, not our doing
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.trace", category=FutureWarning
                )
                self.writer.add_graph(learn.model, xs[0])
        except Exception as e:  # a model the tracer cannot follow: train on, say why
            warnings.warn(
                f"TensorBoardCallback: no graph, torch.jit.trace failed on this model "
                f"({type(e).__name__}: {str(e)[:200]}); pass trace_model=False to skip it",
                stacklevel=2,
            )
        finally:
            learn.model.train(was_training)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """`add_scalar` each value."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def after_epoch(self, learn: Any) -> None:
        """The epoch's row, and a figure of predictions with `log_preds`."""
        super().after_epoch(learn)
        if self._active and self.log_preds:
            fig = learn.show_results(max_n=self.n_preds)
            self.writer.add_figure("sample_results", fig, self.global_epoch(learn))
        if self.writer is not None:
            self.writer.flush()

    def save_model(self, learn: Any) -> str:
        """Export the model into `log_dir/model`."""
        target = learn.export(Path(self.writer.log_dir) / "model")
        self.writer.add_text("model", str(target))
        return str(target)

    def close(
        self, learn: Any, final: dict[str, float], model: str | None, error: BaseException | None
    ) -> None:
        """The HParams entry (hyper-parameters against the final row), then close the writer."""
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(self._params, final):
            self.writer.file_writer.add_summary(summary)
        self.writer.close()


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store (`file:./mlruns`) unless MLFLOW_ALLOW_FILE_STORE is set:
    set it while this client opens the store (cached by MLflow afterwards), then restore it."""
    if not (uri.startswith("file:") or "://" not in uri):
        yield
        return
    old = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = old


class MLflowCallback(_StepLogger):
    """Logs to MLflow (`tracking_uri`, by default the local file store ./mlruns) in the
    experiment `experiment`, one run per training call: the hyper-parameters as params,
    `train_loss` and `lr` by step and `epoch/<column>` by epoch as metrics, and with
    `log_model` the exported model folder as the artifact `model`. `run_id` names the run."""

    def __init__(
        self,
        experiment: str = "imageblocks",
        tracking_uri: str = "file:./mlruns",
        run_name: str | None = None,
        log_model: bool = False,
    ) -> None:
        super().__init__(log_model)
        self.experiment, self.tracking_uri, self.run_name = experiment, tracking_uri, run_name
        self.client: Any = None
        self.run_id: str | None = None
        self._pending: list[Any] = []

    def open(self, learn: Any, params: dict[str, Any]) -> None:
        """Create the run (and the experiment, the first time) and log the params."""
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow-skinny") from None
        with _file_store_allowed(self.tracking_uri):
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = (
            exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment)
        )
        run = self.client.create_run(exp_id, run_name=self.run_name)
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Queue the metrics; they are written at every epoch's end (MLflow writes in batches)."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), stamp, step) for k, v in values.items()]
        if not any(k.startswith("epoch/") for k in values):
            return
        while self._pending:
            self.client.log_batch(self.run_id, metrics=self._pending[:1000])
            self._pending = self._pending[1000:]

    def save_model(self, learn: Any) -> str:
        """Export the model and upload the folder as the run's artifact `model`."""
        with tempfile.TemporaryDirectory() as tmp:
            self.client.log_artifacts(self.run_id, str(learn.export(Path(tmp) / "model")), "model")
        return "model"

    def close(
        self, learn: Any, final: dict[str, float], model: str | None, error: BaseException | None
    ) -> None:
        """Write what is queued and end the run: FINISHED, KILLED (Ctrl-C) or FAILED."""
        if self._pending:
            self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []
        status = (
            "FINISHED" if error is None
            else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        )  # fmt: skip
        self.client.set_terminated(self.run_id, status)
