"""`Learner`: a model, its data, a loss, an optimiser and a training loop you can read in one go.

`vision_learner` builds one for a pretrained backbone with a new head; `fit_one_cycle`,
`fine_tune` and `lr_find` follow fastai's schedules (hand-written in `schedule.py`, the
product's own value); everything else is plain PyTorch.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imageblocks.data.loaders import DataLoader, DataLoaders, collate
from imageblocks.image import decode_image
from imageblocks.learn import distributed
from imageblocks.learn.callbacks import Callback, ProgressTable, Recorder
from imageblocks.learn.checkpoint import Checkpointer, check_plan, load_checkpoint, restore
from imageblocks.learn.inference import OnnxRunner, one_thread
from imageblocks.learn.lr_find import (
    LossSmoother,
    exponential_lrs,
    plot_lr_find,
    should_stop,
    suggest,
    valley,
)
from imageblocks.learn.metrics import metric_name
from imageblocks.learn.precision import autocast_dtype, check_precision
from imageblocks.learn.schedule import (
    discriminative_lrs,
    fine_tune_plan,
    one_cycle_lrs,
    one_cycle_moms,
)
from imageblocks.lists import L
from imageblocks.transforms.item import source_region

_NO_DECAY = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def _fused_adamw_on(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for `device` (CUDA; CPU from torch 2.4)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, _NO_DECAY)


def _listify(o: Any) -> list:
    if o is None:
        return []
    return list(o) if isinstance(o, (list, tuple)) else [o]


def default_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """Layer groups for discriminative learning rates: the model's own `param_groups`, else
    body (`model[0]`) and head (the rest), else one group."""
    from imageblocks.models.backbones import param_groups

    return param_groups(model)


class Learner:
    """Trains `model` on `dls` with `loss_func`; records, validates, predicts."""

    def __init__(
        self,
        dls: DataLoaders,
        model: nn.Module,
        loss_func: Callable | None = None,
        opt_func: Callable = torch.optim.AdamW,
        lr: float = 1e-3,
        splitter: Callable = default_splitter,
        cbs: Sequence[Callback] | None = None,
        metrics: Any = None,
        path: Any = ".",
        wd: float = 1e-2,
        moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
        train_bn: bool = True,
        precision: str | None = "auto",
        channels_last: bool = True,
    ):
        self.dls, self.model, self.path = dls, model, path
        self.loss_func = loss_func if loss_func is not None else dls.loss_func
        self.opt_func, self.lr, self.wd, self.moms, self.train_bn = opt_func, lr, wd, moms, train_bn
        self.splitter = splitter
        self.metrics = metrics
        self.cbs = list(cbs or [])
        self.recorder = Recorder()
        self.precision = check_precision(precision)
        self.channels_last = channels_last
        self.thresholds: Any = None
        self.opt: torch.optim.Optimizer | None = None
        self._checkpointer: Checkpointer | None = None
        self.fast_predict = True  # predict() through ONNX Runtime on CPU (see inference.py)
        self._runner = OnnxRunner()
        self._ddp: tuple[tuple[bool, ...], nn.Module] | None = None
        distributed.setup()  # under torchrun: join the process group
        self.epoch = self.iter = self.n_iter = 0
        self.epoch_time = 0.0
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
        self._metrics = _listify(value)

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
        groups = []
        bn_params = {
            id(p) for m in self.model.modules() if _is_bn(m) for p in m.parameters(recurse=False)
        }
        for k, params in enumerate(self.layer_groups()):
            decay = [p for p in params if p.ndim > 1 and id(p) not in bn_params]
            no_decay = [p for p in params if not (p.ndim > 1 and id(p) not in bn_params)]
            groups.append({"params": decay, "weight_decay": self.wd, "layer_group": k})
            groups.append({"params": no_decay, "weight_decay": 0.0, "layer_group": k})
        groups = [g for g in groups if g["params"]]
        kwargs: dict[str, Any] = {"lr": self.lr, "betas": (self.moms[0], 0.99), "eps": 1e-5}
        if self.opt_func is torch.optim.AdamW and _fused_adamw_on(self.dls.device):
            kwargs["fused"] = True  # one kernel per step for all tensors: 3 ms against 7 on CPU
        self.opt = self.opt_func(groups, **kwargs)

    def _set_hypers(self, lrs: Sequence[float], mom: float | None) -> None:
        for g in self.opt.param_groups:
            g["lr"] = float(lrs[g["layer_group"]])
            if mom is not None and "betas" in g:
                g["betas"] = (float(mom), g["betas"][1])

    def freeze_to(self, n: int) -> None:
        """Train only layer groups from `n` on (norm layers always train when `train_bn`)."""
        groups = self.layer_groups()
        bn_params = {
            id(p) for m in self.model.modules() if _is_bn(m) for p in m.parameters(recurse=False)
        }
        start = n if n >= 0 else len(groups) + n
        for k, params in enumerate(groups):
            for p in params:
                p.requires_grad_(k >= start)
                if self.train_bn and id(p) in bn_params:
                    p.requires_grad_(True)
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

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dls.device.type, dtype=dtype)

    # --- one step --------------------------------------------------------------------------
    def _split_batch(self, b: tuple) -> tuple[tuple, tuple]:
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

    def _train_step(self, b: tuple) -> float:
        xs, ys = self._split_batch(b)
        with self._autocast():
            pred = self._train_model()(*xs)
            loss = self.loss_func(pred, *ys)
        # every process sees the same (averaged) loss: lr_find and the NaN check agree on all
        value = distributed.mean(loss.item(), self.dls.device)
        if not np.isfinite(value):
            raise FloatingPointError(
                f"the training loss became {value}: lower the learning rate (try lr_find), "
                "or check the targets for NaN/inf"
            )
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
            self._scaler.step(self.opt)
            self._scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return value

    # --- fitting ---------------------------------------------------------------------------
    def _fit(
        self,
        n_epoch: int,
        lrs: torch.Tensor,
        moms: torch.Tensor | None,
        cbs: Sequence[Callback] = (),
        start_epoch: int = 0,
        recorder_state: dict | None = None,
    ) -> None:
        """The loop: per-step hyper-parameters from `lrs` (steps, groups) and `moms` (steps,).

        `start_epoch`/`recorder_state` continue a run restored from a checkpoint."""
        if self.opt is None:
            self.create_opt()
        if len(self.dls.train) == 0:
            raise ValueError("the training loader has no batch: use a smaller batch size")
        use_scaler = self.autocast_dtype == torch.float16 and self.dls.device.type == "cuda"
        self._scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        table = [ProgressTable()] if distributed.is_main() else []
        callbacks = sorted([self.recorder, *self.cbs, *cbs, *table], key=lambda c: c.order)
        self.n_iter = len(self.dls.train)
        for cb in callbacks:
            cb.before_fit(self)
        if recorder_state is not None:
            self.recorder.load_state_dict(recorder_state)
        try:
            for epoch in range(start_epoch, n_epoch):
                self.epoch = epoch
                t0 = time.perf_counter()
                for cb in callbacks:
                    cb.before_epoch(self)
                self.model.train()
                for i, b in enumerate(self.dls.train):
                    self.iter = i
                    step = min(self.epoch * self.n_iter + self.iter, len(lrs) - 1)
                    mom = None if moms is None else float(moms[step])
                    self._set_hypers(lrs[step], mom)
                    loss = self._train_step(b)
                    self.recorder.add_batch(loss, float(lrs[step][-1]), mom)
                    for cb in callbacks:
                        cb.after_batch(self)
                for cb in callbacks:
                    cb.after_train(self)
                valid = self._validate(self.dls.valid) if len(self.dls.valid.dataset) else [None]
                self.epoch_time = time.perf_counter() - t0
                self.recorder.add_epoch([self.recorder.smooth_loss, *valid])
                for cb in callbacks:
                    cb.after_epoch(self)
                if self._checkpointer is not None and distributed.is_main():
                    self._checkpointer.save(self, epoch + 1, n_epoch)
        except KeyboardInterrupt:
            print(self._interrupted_message(), file=sys.stderr, flush=True)
            raise
        finally:
            for cb in callbacks:
                cb.after_fit(self)

    def _interrupted_message(self) -> str:
        msg = f"training interrupted in epoch {self.epoch}, batch {self.iter}"
        ckpt = self._checkpointer
        if ckpt is not None and ckpt.path.is_file():
            return f"{msg}; the last completed epoch is saved: resume with resume='{ckpt.path}'"
        return f"{msg}; no checkpoint was written (pass checkpoint='file.pt' to keep epochs)"

    def _train(
        self,
        call: str,
        phases: Sequence[tuple[Callable[[], None], int, Callable[[], tuple]]],
        cbs: Sequence[Callback],
        checkpoint: Any,
        resume: Any,
    ) -> None:
        """Run training phases `(prepare, n_epoch, schedule)`, checkpointing after every epoch
        when asked, or continuing a killed run from the checkpoint `resume`."""
        plan = f"{call} with {len(self.dls.train)} batches per epoch"
        state = None
        if resume is not None:
            state = load_checkpoint(resume)
            check_plan(state, plan, resume)
            checkpoint = checkpoint if checkpoint is not None else resume
        previous = self._checkpointer
        self._checkpointer = Checkpointer(Path(checkpoint), plan) if checkpoint else None
        try:
            for k, (prepare, n_epoch, schedule) in enumerate(phases):
                if state is not None and k < state["phase"]:
                    continue
                prepare()
                start, recorder_state = 0, None
                if state is not None:  # the phase the killed run was in
                    restore(self, state)
                    start, recorder_state, state = state["epoch"], state["recorder"], None
                    if start >= n_epoch:
                        continue
                if self._checkpointer is not None:
                    self._checkpointer.phase = k
                lrs, moms = schedule()
                self._fit(n_epoch, lrs, moms, cbs, start, recorder_state)
        finally:
            self._checkpointer = previous

    def _group_lrs(self, lr: float | slice | Sequence[float]) -> list[float]:
        return discriminative_lrs(lr, len(self.layer_groups()))

    def fit(
        self,
        n_epoch: int,
        lr: float | slice | None = None,
        wd: float | None = None,
        cbs: Sequence[Callback] = (),
        checkpoint: Any = None,
        resume: Any = None,
    ) -> None:
        """Train `n_epoch` epochs at a constant learning rate.

        `checkpoint='run.pt'` saves the run after every epoch; `resume='run.pt'` continues it."""
        if wd is not None:
            self.wd = wd
            self.opt = None

        def schedule() -> tuple:
            steps = max(1, n_epoch * len(self.dls.train))
            return torch.tensor([self._group_lrs(self.lr if lr is None else lr)] * steps), None

        call = f"fit({n_epoch}, lr={lr!r}, wd={self.wd!r})"
        self._train(call, [(lambda: None, n_epoch, schedule)], cbs, checkpoint, resume)

    def _one_cycle(
        self,
        n_epoch: int,
        lr_max: float | slice | None,
        div: float,
        div_final: float,
        pct_start: float,
        moms: tuple[float, float, float] | None,
    ) -> Callable[[], tuple]:
        def schedule() -> tuple:
            steps = max(1, n_epoch * len(self.dls.train))
            lr = self.lr if lr_max is None else lr_max
            lrs = one_cycle_lrs(self._group_lrs(lr), steps, pct_start, div, div_final)
            return lrs, one_cycle_moms(steps, pct_start, moms or self.moms)

        return schedule

    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: float | slice | None = None,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        wd: float | None = None,
        moms: tuple[float, float, float] | None = None,
        cbs: Sequence[Callback] = (),
        checkpoint: Any = None,
        resume: Any = None,
    ) -> None:
        """Train with the one-cycle schedule: warm up to `lr_max`, then anneal (cosine).

        `checkpoint='run.pt'` saves the run after every epoch; `resume='run.pt'` continues it."""
        if wd is not None:
            self.wd = wd
            self.opt = None
        call = (
            f"fit_one_cycle({n_epoch}, lr_max={lr_max!r}, div={div!r}, div_final={div_final!r}, "
            f"pct_start={pct_start!r}, wd={self.wd!r}, moms={moms!r})"
        )
        schedule = self._one_cycle(n_epoch, lr_max, div, div_final, pct_start, moms)
        self._train(call, [(lambda: None, n_epoch, schedule)], cbs, checkpoint, resume)

    def fine_tune(
        self,
        epochs: int,
        base_lr: float = 2e-3,
        freeze_epochs: int = 1,
        lr_mult: float = 100,
        pct_start: float = 0.3,
        div: float = 5.0,
        wd: float | None = None,
        moms: tuple[float, float, float] | None = None,
        cbs: Sequence[Callback] = (),
        checkpoint: Any = None,
        resume: Any = None,
    ) -> None:
        """Train the head with the body frozen, then everything with discriminative rates.

        `checkpoint='run.pt'` saves the run after every epoch; `resume='run.pt'` continues it."""
        if wd is not None:
            self.wd = wd
            self.opt = None
        phases = [
            (
                self.freeze if phase.frozen else self.unfreeze,
                phase.epochs,
                self._one_cycle(
                    phase.epochs, phase.lr, phase.div, phase.div_final, phase.pct_start, moms
                ),
            )
            for phase in fine_tune_plan(epochs, base_lr, freeze_epochs, lr_mult, pct_start, div)
        ]
        call = (
            f"fine_tune({epochs}, base_lr={base_lr!r}, freeze_epochs={freeze_epochs!r}, "
            f"lr_mult={lr_mult!r}, pct_start={pct_start!r}, div={div!r}, wd={self.wd!r}, "
            f"moms={moms!r})"
        )
        self._train(call, phases, cbs, checkpoint, resume)

    # --- learning-rate finder --------------------------------------------------------------
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
        if self.opt is None:
            self.create_opt()
        state = copy.deepcopy(self.model.state_dict())
        opt_state = copy.deepcopy(self.opt.state_dict())
        self._scaler = None
        lrs_sched = exponential_lrs(start_lr, end_lr, num_it)
        smoother, lrs, losses, best = LossSmoother(0.98), [], [], float("inf")
        self.model.train()
        it = 0
        try:
            while it < num_it:
                for b in self.dls.train:
                    lr = float(lrs_sched[it])
                    self._set_hypers([lr] * len(self.layer_groups()), None)
                    try:
                        raw = self._train_step(b)
                    except FloatingPointError:
                        raw = float("nan")
                    smooth = smoother(raw) if np.isfinite(raw) else float("nan")
                    lrs.append(lr)
                    losses.append(smooth)
                    if np.isfinite(smooth):
                        best = min(best, smooth)
                    if stop_div and should_stop(smooth, best, it, num_it):
                        it = num_it
                        break
                    it += 1
                    if it >= num_it:
                        break
        finally:
            self.model.load_state_dict(state)
            self.opt.load_state_dict(opt_state)
        finite = [(a, b) for a, b in zip(lrs, losses) if np.isfinite(b)]
        self.lr_find_lrs, self.lr_find_losses = [a for a, _ in finite], [b for _, b in finite]
        suggestions, points = suggest(self.lr_find_lrs, self.lr_find_losses, suggest_funcs)
        if show_plot:
            self.lr_find_figure = plot_lr_find(
                self.lr_find_lrs, self.lr_find_losses, suggestions, points
            )
        return suggestions

    # --- evaluation ------------------------------------------------------------------------
    def _dl(self, ds_idx: int = 1, dl: DataLoader | None = None) -> DataLoader:
        return dl if dl is not None else self.dls[ds_idx]

    @torch.no_grad()
    def _raw_preds(self, dl: DataLoader, with_input: bool = False) -> tuple:
        """Raw model outputs, targets (and inputs) for every batch of `dl`, concatenated."""
        if len(dl.dataset) == 0:
            raise ValueError(
                "there is nothing to predict: this set is empty (an empty validation split?); "
                "give the splitter some validation items, or pass dl="
            )
        self.model.eval()
        distributed.sync_buffers(self.model)
        preds, targs, inputs = [], [], []
        for b in dl:
            xs, ys = self._split_batch(b)
            with self._autocast():
                out = self.model(*xs)
            preds.append(out.float())
            if ys:
                targs.append(ys[0])
            if with_input:
                inputs.append(xs[0])
        n = len(dl.dataset)  # under torchrun: every process gets the whole set, in order
        cat = lambda ts: distributed.gather(torch.cat(ts), n) if ts else None
        return cat(preds), cat(targs), cat(inputs)

    def _validate(self, dl: DataLoader) -> list[float]:
        preds, targs, _ = self._raw_preds(dl)
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
        dl = self._dl(ds_idx, dl)
        raw, targs, inputs = self._raw_preds(dl, with_input)
        act = act or getattr(self.loss_func, "activation", lambda x: x)
        preds = act(raw)
        if targs is not None and preds.numel() == targs.numel() and preds.shape != targs.shape:
            preds = preds.reshape(targs.shape)  # points: (B, 2n) -> (B, n, 2)
        res: list[Any] = [preds, targs]
        if with_decoded:
            res.append(self.decode_preds(preds))
        if with_input:
            res.insert(0, inputs)
        return tuple(res)

    def decode_preds(self, preds: torch.Tensor) -> torch.Tensor:
        """Activated predictions to decisions (multi-label: per-class thresholds when tuned)."""
        if self.thresholds is not None:
            return preds > torch.as_tensor(self.thresholds, dtype=preds.dtype, device=preds.device)
        return getattr(self.loss_func, "decodes", lambda x: x)(preds)

    def predict(self, item: Any) -> tuple:
        """Predict one image (path, bytes, PIL image or array).

        Multi-label: (labels, boolean mask, probabilities). Single label: (label, index, probs).
        Points: (points in the input image's pixels (n, 2), points in [-1, 1], same)."""
        dl = self.dls.test_dl([item])
        with one_thread():
            xs = dl.process(collate([dl.dataset[0]]))[: self.dls.n_inp]  # no loader for one item
        raw = self._runner(self.model, xs[0]) if len(xs) == 1 and self.fast_predict else None
        if raw is None:
            self.model.eval()
            xs, _ = self._split_batch(xs)
            with torch.inference_mode(), self._autocast():
                raw = self.model(*xs).float()
        with one_thread():
            preds = getattr(self.loss_func, "activation", lambda x: x)(raw)[0].cpu()
        return self._prediction(item, preds)

    def predict_batch(self, items: Sequence[Any], bs: int | None = None) -> list[tuple]:
        """`predict` for many images (paths, bytes, PIL images, arrays), batched: a list of its results."""
        items = list(items)
        if not items:
            return []
        preds, _ = self.get_preds(dl=self.dls.test_dl(items, bs=bs))
        return [self._prediction(item, p.reshape(-1).cpu()) for item, p in zip(items, preds)]

    def _prediction(self, item: Any, preds: torch.Tensor) -> tuple:
        """One item's activated predictions as `predict` returns them."""
        target = self.dls.block_info.get("target_block")
        vocab = getattr(target, "vocab", None)
        if getattr(target, "kind", None) == "points":
            rel = preds.reshape(-1, 2)
            _, (w, h) = decode_image(item, draft=(1, 1))  # only the full size is needed
            x0, y0, x1, y1 = source_region(self.dls.block_info.get("item_tfms", []), w, h)
            pix = (rel + 1) / 2 * torch.tensor([x1 - x0, y1 - y0]) + torch.tensor([x0, y0])
            return pix, rel, rel
        decoded = self.decode_preds(preds[None])[0].cpu()
        if vocab is not None and decoded.dtype == torch.bool:
            return vocab[decoded], decoded, preds
        if vocab is not None:
            return vocab[int(decoded)], decoded, preds
        return decoded, decoded, preds

    def show_results(
        self,
        ds_idx: int = 1,
        dl: DataLoader | None = None,
        max_n: int = 9,
        nrows: int | None = None,
        ncols: int | None = None,
        figsize: tuple | None = None,
    ):
        """Targets next to predictions for the first images of the validation set; a figure."""
        from imageblocks.show import show_results

        return show_results(
            self, self._dl(ds_idx, dl), max_n=max_n, nrows=nrows, ncols=ncols, figsize=figsize
        )

    # --- export ----------------------------------------------------------------------------
    def export(self, path: Any = "export") -> Any:
        """Write `config.json` + `model.safetensors` into the folder `path` (no pickle)."""
        from imageblocks.learn.export import export_learner

        if not distributed.is_main():  # under torchrun only rank 0 writes
            return path
        return export_learner(self, path)

    def export_onnx(self, path: Any = "model.onnx", **kwargs: Any) -> Any:
        """The model as ONNX (dynamic batch axis) plus its config.json."""
        from imageblocks.learn.onnx_export import export_onnx

        return export_onnx(self, path, **kwargs)

    def tune_thresholds(self, **kwargs: Any) -> Any:
        """Pick global and per-class thresholds on the validation set; stored for predict/export."""
        from imageblocks.learn.thresholds import tune_thresholds

        return tune_thresholds(self, **kwargs)

    # --- weights ---------------------------------------------------------------------------
    def save(self, file: Any) -> Any:
        """Save the model weights (safetensors)."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if distributed.is_main():
            save_file(state, str(file))
        return file

    def load(self, file: Any) -> Learner:
        """Load model weights saved by `save`."""
        from safetensors.torch import load_file

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
    from imageblocks.models.backbones import create_vision_model
    from imageblocks.transforms.batch import Normalize

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
