"""`Learner`: a model, its data, a loss, an optimiser and a training loop you can read in one go.

`vision_learner` builds one for a pretrained backbone with a new head. The loop is here; the
parts around it have modules of their own: the optimiser (`optimizer.py`), freezing
(`models/freezing.py`), precision (`precision.py`), the schedules and the plan of a training
call (`schedule.py`, `plan.py`), checkpoints (`checkpoint.py`), the LR range test
(`lr_find.py`), budgeted runs (`budget.py`), prediction (`predict.py`) and export
(`export.py`, `onnx_export.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from imageblocks import runtime
from imageblocks.data.loaders import DataLoader, DataLoaders
from imageblocks.learn import distributed
from imageblocks.learn.budget import fine_tune_budget
from imageblocks.learn.callbacks import Callback, Recorder, as_callbacks
from imageblocks.learn.cam import CAM, learner_cam
from imageblocks.learn.export import export_learner
from imageblocks.learn.inference import OnnxRunner
from imageblocks.learn.loop import run_plan
from imageblocks.learn.lr_find import plot_lr_find, range_test, suggest, valley
from imageblocks.learn.metrics import metric_name
from imageblocks.learn.onnx_export import export_onnx
from imageblocks.learn.optimizer import create_opt
from imageblocks.learn.plan import TrainingPlan
from imageblocks.learn.precision import autocast, autocast_dtype, check_precision
from imageblocks.learn.predict import decode_preds, get_preds, predict, predict_batch, raw_preds
from imageblocks.learn.schedule import FineTuneArgs, FitPhase, fine_tune_plan
from imageblocks.learn.thresholds import tune_thresholds
from imageblocks.learn.tta import tta
from imageblocks.lists import L
from imageblocks.models.backbones import create_vision_model
from imageblocks.models.freezing import freeze_to, param_groups
from imageblocks.show import show_results
from imageblocks.transforms.normalize import Normalize

Moms = tuple[float, float, float]


class Learner:
    """Trains `model` on `dls` with `loss_func`; records, validates, predicts."""

    def __init__(
        self,
        dls: DataLoaders,
        model: nn.Module,
        loss_func: Callable | None = None,
        opt_func: Callable = torch.optim.AdamW,
        lr: float = 1e-3,
        splitter: Callable = param_groups,
        cbs: Callback | Sequence[Callback] | None = None,
        metrics: Any = None,
        path: Any = ".",
        wd: float = 1e-2,
        moms: Moms = (0.95, 0.85, 0.95),
        train_bn: bool = True,
        precision: str | None = "auto",
        channels_last: bool = True,
    ):
        self.dls, self.model, self.path = dls, model, path
        self.loss_func = loss_func if loss_func is not None else dls.loss_func
        self.opt_func, self.lr, self.wd, self.moms, self.train_bn = opt_func, lr, wd, moms, train_bn
        self.splitter = splitter
        self.metrics = metrics
        self.cbs = as_callbacks(cbs)  # one callback, a list, or classes, as fastai takes them
        self.recorder = Recorder()
        self.precision = check_precision(precision)
        self.channels_last = channels_last
        self.thresholds: Any = None
        self.opt: torch.optim.Optimizer | None = None
        self.grad_scaler: torch.amp.GradScaler | None = None  # set by the loop for float16
        self.fast_predict = True  # predict() through ONNX Runtime on CPU (see inference.py)
        self.onnx_runner = OnnxRunner()
        self._ddp: tuple[tuple[bool, ...], nn.Module] | None = None
        distributed.setup()  # under torchrun: join the process group
        for dl in self.dls.loaders:  # each loader's share of every epoch (and so its length)
            distributed.shard_loader(dl)
        self.epoch = self.iter = self.n_iter = self.train_iter = self.phase = 0
        self.epoch_time, self.loss = 0.0, float("nan")
        self.plan: TrainingPlan | None = None  # the training call running (set by the loop)
        self.lr_sched: torch.Tensor | None = None  # its phase's per-step rates, callbacks may lower
        self.model.to(self.dls.device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    # --- metrics ---------------------------------------------------------------------------
    @property
    def metrics(self) -> list[Callable]:
        """The metrics computed on the validation set (a function, partial, or a list)."""
        return self._metrics

    @metrics.setter
    def metrics(self, value: Any) -> None:
        listed = isinstance(value, (list, tuple))
        self._metrics = list(value) if listed else [] if value is None else [value]

    @property
    def metric_names(self) -> list[str]:
        """Column names of the metrics."""
        return [metric_name(m) for m in self.metrics]

    # --- parameters, freezing, optimiser ---------------------------------------------------
    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters in layer groups (body first, head last)."""
        return self.splitter(self.model)

    def create_opt(self) -> None:
        """AdamW over the layer groups; norm layers and biases get no weight decay."""
        groups = self.layer_groups()
        self.opt = create_opt(
            self.opt_func, self.model, groups, self.lr, self.wd, self.moms[0], self.dls.device
        )

    def freeze_to(self, n: int) -> None:
        """Train only layer groups from `n` on (norm layers always train when `train_bn`)."""
        freeze_to(self.model, n, self.layer_groups(), train_norm=self.train_bn)
        if self.opt is None:
            self.create_opt()

    def freeze(self) -> None:
        """Train only the head (and every norm layer)."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Train everything."""
        for p in self.model.parameters():
            p.requires_grad_(True)
        if self.opt is None:
            self.create_opt()

    # --- precision -------------------------------------------------------------------------
    def to_fp16(self) -> Learner:
        """Mixed precision with float16 (CUDA; the loss is scaled)."""
        self.precision = "fp16"
        return self

    def to_bf16(self) -> Learner:
        """Mixed precision with bfloat16."""
        self.precision = "bf16"
        return self

    def to_fp32(self) -> Learner:
        """Full float32 precision everywhere."""
        self.precision = "fp32"
        return self

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype the body computes in (None: float32); `precision="auto"` picks per device."""
        return autocast_dtype(self.precision, self.dls.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this learner's precision on its device."""
        return autocast(self.precision, self.dls.device)

    # --- one step --------------------------------------------------------------------------
    def split_batch(self, b: tuple) -> tuple[tuple, tuple]:
        """(inputs, targets) of a batch; 4-d inputs channels-last when the learner uses it."""
        n = self.dls.n_inp
        xs = b[:n]
        if self.channels_last:
            xs = tuple(
                x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in xs
            )
        return xs, b[n:]

    def _train_model(self) -> nn.Module:
        """The model for training steps: under torchrun, wrapped in DistributedDataParallel
        (rebuilt when freezing changes which parameters train, as DDP requires)."""
        if not distributed.active():
            return self.model
        trains = tuple(p.requires_grad for p in self.model.parameters())
        if self._ddp is None or self._ddp[0] != trains:
            self._ddp = None
            ids = [self.dls.device.index] if self.dls.device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            self._ddp = (trains, ddp)
        return self._ddp[1]

    def train_step(self, b: tuple) -> float:
        """One optimiser step on batch `b`; its loss (averaged over the processes)."""
        xs, ys = self.split_batch(b)
        with self.autocast():
            pred = self._train_model()(*xs)
            loss = self.loss_func(pred, *ys)
        # every process sees the same (averaged) loss: lr_find and the NaN check agree on all
        value = distributed.mean(loss.item(), self.dls.device)
        if not np.isfinite(value):
            raise FloatingPointError(
                f"the training loss became {value}: lower the learning rate (try lr_find), "
                "or check the targets for NaN/inf"
            )
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.opt)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return value

    # --- fitting ---------------------------------------------------------------------------
    def _plan(self, call: str, phases: Sequence[FitPhase], wd: float | None) -> TrainingPlan:
        """The plan of a training call, with the learner's defaults for what it leaves out."""
        runtime.keep_freed_memory()  # every fit starts here: see imageblocks/runtime.py
        wd = self.wd if wd is None else wd
        return TrainingPlan(call, tuple(phases), len(self.dls.train), float(wd))

    def fit(
        self,
        n_epoch: int,
        lr: float | slice | None = None,
        wd: float | None = None,
        cbs: Callback | Sequence[Callback] = (),
        checkpoint: Any = None,
        resume: Any = None,
    ) -> None:
        """Train `n_epoch` epochs at a constant learning rate (weight decay `wd` for this call).

        `checkpoint='run.pt'` saves the run after every epoch; `resume='run.pt'` continues it."""
        lr = self.lr if lr is None else lr
        phase = FitPhase(None, n_epoch, lr, pct_start=0.0, div=1.0, kind="constant")
        run_plan(self, self._plan("fit", [phase], wd), cbs, checkpoint, resume)

    def fit_one_cycle(
        self, n_epoch: int, lr_max: float | slice | None = None,
        div: float = 25.0, div_final: float = 1e5, pct_start: float = 0.25,
        wd: float | None = None, moms: Moms | None = None,
        cbs: Callback | Sequence[Callback] = (), checkpoint: Any = None, resume: Any = None,
    ) -> None:  # fmt: skip
        """Train with the one-cycle schedule: warm up to `lr_max`, then anneal (cosine).

        `checkpoint='run.pt'` saves the run after every epoch; `resume='run.pt'` continues it."""
        lr = self.lr if lr_max is None else lr_max
        phase = FitPhase(None, n_epoch, lr, pct_start, div, div_final, moms or self.moms)
        run_plan(self, self._plan("fit_one_cycle", [phase], wd), cbs, checkpoint, resume)

    def fine_tune(
        self,
        epochs: int,
        base_lr: float = FineTuneArgs.base_lr,
        freeze_epochs: int = FineTuneArgs.freeze_epochs,
        lr_mult: float = FineTuneArgs.lr_mult,
        pct_start: float = FineTuneArgs.pct_start,
        div: float = FineTuneArgs.div,
        wd: float | None = None,
        moms: Moms | None = None,
        cbs: Callback | Sequence[Callback] = (),
        checkpoint: Any = None,
        resume: Any = None,
    ) -> None:
        """Train the head with the body frozen, then everything with discriminative rates
        (defaults: fastai's, in `FineTuneArgs`).

        `checkpoint='run.pt'` saves the run after every epoch; `resume='run.pt'` continues it."""
        args = FineTuneArgs(epochs, base_lr, freeze_epochs, lr_mult, pct_start, div)
        phases = [dataclasses.replace(p, moms=moms or self.moms) for p in fine_tune_plan(args)]
        run_plan(self, self._plan("fine_tune", phases, wd), cbs, checkpoint, resume)

    def fine_tune_budget(self, budget: float | str, **kwargs: Any) -> dict[str, Any]:
        """The best model `budget` (seconds, "90s", "10m", "1h") buys on this machine: measure,
        plan sizes and phases, train on a schedule that ends on time (see `learn/budget.py`)."""
        return fine_tune_budget(self, budget, **kwargs)

    def lr_find(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10,
        num_it: int = 100,
        stop_div: bool = True,
        show_plot: bool = True,
        suggest_funcs: Sequence[Callable] = (valley,),
    ) -> tuple:
        """Train with exponentially growing rates until the loss diverges; suggest rates.

        The model and optimiser are restored afterwards. Returns `SuggestedLRs(valley=...)`.
        """
        runtime.keep_freed_memory()  # as every fit does: see imageblocks/runtime.py
        try:
            self.lr_find_lrs, self.lr_find_losses = range_test(
                self, start_lr, end_lr, num_it, stop_div
            )
        finally:
            runtime.release_kept_memory()
        suggestions, points = suggest(self.lr_find_lrs, self.lr_find_losses, suggest_funcs)
        if show_plot:
            self.lr_find_figure = plot_lr_find(
                self.lr_find_lrs, self.lr_find_losses, suggestions, points
            )
        return suggestions

    # --- evaluation ------------------------------------------------------------------------
    def _dl(self, ds_idx: int = 1, dl: DataLoader | None = None) -> DataLoader:
        return dl if dl is not None else self.dls[ds_idx]

    def _validate(self, dl: DataLoader) -> list[float]:
        preds, targs, _ = raw_preds(self, dl)
        loss = self.loss_func(preds, targs).item()
        return [loss] + [float(m(preds, targs)) for m in self.metrics]

    def validate(self, ds_idx: int = 1, dl: DataLoader | None = None) -> L:
        """`[valid_loss, *metrics]` on the validation set (or `dl`)."""
        return L(self._validate(self._dl(ds_idx, dl)))

    def get_preds(
        self,
        ds_idx: int = 1,
        dl: DataLoader | None = None,
        with_input: bool = False,
        with_decoded: bool = False,
        act: Callable | None = None,
    ) -> tuple:
        """(predictions after the loss's activation, targets), in the loader's order."""
        return get_preds(self, self._dl(ds_idx, dl), with_input, with_decoded, act)

    def tta(
        self,
        ds_idx: int = 1,
        dl: DataLoader | None = None,
        n: int = 4,
        item_tfms: Any = None,
        batch_tfms: Any = None,
        beta: float | None = 0.25,
        use_max: bool = False,
    ) -> tuple:
        """(predictions, targets) averaged over `n` augmented passes, blended with the plain
        ones by `beta`; key points mapped back before averaging (see `learn/tta.py`)."""
        return tta(self, self._dl(ds_idx, dl), n, item_tfms, batch_tfms, beta, use_max)

    def decode_preds(self, preds: torch.Tensor) -> torch.Tensor:
        """Activated predictions to decisions (multi-label: per-class thresholds when tuned)."""
        return decode_preds(self, preds)

    def predict(self, item: Any) -> tuple:
        """Predict one image (path, bytes, PIL image or array).

        Multi-label: (labels, boolean mask, probabilities). Single label: (label, index, probs).
        Points: (points in the input image's pixels (n, 2), points in [-1, 1], same)."""
        return predict(self, item)

    def predict_batch(self, items: Sequence[Any], bs: int | None = None) -> list[tuple]:
        """`predict` for many images (paths, bytes, PIL images, arrays), batched: its results."""
        return predict_batch(self, items, bs)

    def cam(self, img: Any, label: Any = None, layer: nn.Module | None = None) -> CAM | list[CAM]:
        """Grad-CAM of `img` for `label` (on the body, or `layer`); None: the predicted labels."""
        return learner_cam(self, img, label, layer)

    def show_results(
        self,
        ds_idx: int = 1,
        dl: DataLoader | None = None,
        max_n: int = 9,
        nrows: int | None = None,
        ncols: int | None = None,
        figsize: tuple | None = None,
        cam: bool = False,
    ):
        """Targets next to predictions for the first images of the validation set; a figure.

        `cam=True`: each image under the class activation map of its most likely class."""
        dl = self._dl(ds_idx, dl)
        return show_results(self, dl, max_n, nrows, ncols, figsize, cam=cam)

    # --- export and weights ----------------------------------------------------------------
    def export(self, path: Any = "export") -> Any:
        """Write `config.json` + `model.safetensors` into the folder `path` (no pickle)."""
        if not distributed.is_main():  # under torchrun only rank 0 writes
            return path
        return export_learner(self, path)

    def export_onnx(self, path: Any = "model.onnx", **kwargs: Any) -> Any:
        """The model as ONNX (dynamic batch axis) plus its config.json."""
        return export_onnx(self, path, **kwargs)

    def tune_thresholds(self, **kwargs: Any) -> Any:
        """Pick global and per-class thresholds on the validation set; stored for predict/export."""
        return tune_thresholds(self, **kwargs)

    def save(self, file: Any) -> Any:
        """Save the model weights (safetensors)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if distributed.is_main():
            save_file(state, str(file))
        return file

    def load(self, file: Any) -> Learner:
        """Load model weights saved by `save`."""
        self.model.load_state_dict(load_file(str(file), device=str(self.dls.device)))
        return self


def vision_learner(
    dls: DataLoaders,
    arch: Any,
    normalize: bool = True,
    n_out: int | None = None,
    pretrained: bool = True,
    loss_func: Callable | None = None,
    metrics: Any = None,
    y_range: tuple[float, float] | None = None,
    weights: Any = None,
    **kwargs: Any,
) -> Learner:
    """A `Learner` for `arch` (a name like 'resnet34' or any timm model, or a constructor) with a
    new head sized from `dls`; pretrained bodies start frozen and add their normalisation."""
    n_out = n_out if n_out is not None else dls.c
    if n_out is None:
        raise ValueError("cannot tell how many outputs the model needs: pass n_out=")
    model = create_vision_model(
        arch, n_out, pretrained=pretrained, y_range=y_range, weights=weights
    )
    if normalize and pretrained:
        for dl in dls.loaders:
            if not any(isinstance(t, Normalize) for t in dl.after_batch):
                dl.after_batch = sorted(
                    [*dl.after_batch, Normalize.from_stats(model.mean, model.std)],
                    key=lambda t: getattr(t, "order", 0),
                )
    learn = Learner(dls, model, loss_func=loss_func, metrics=metrics, **kwargs)
    if pretrained:
        learn.freeze()
    return learn


cnn_learner = vision_learner
