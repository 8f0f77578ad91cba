"""Prediction: a loader, one image or many through a learner, outputs decoded to labels or pixels.

The Learner (`get_preds`, `predict`, `predict_batch`, `decode_preds`), the CLI and the service
share these functions, so a decision (a threshold, a point's pixel) is made in one place. Multi-label:
(labels, boolean mask, probabilities); single label: (label, index, probabilities); points:
(points in the input image's pixels (n, 2), points in [-1, 1], the same).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from imageblocks.data.blocks import Task, task_of
from imageblocks.data.loaders import DataLoader, collate
from imageblocks.errors import ArgumentError
from imageblocks.image import decode_image
from imageblocks.learn import distributed
from imageblocks.learn.inference import one_thread
from imageblocks.learn.thresholds import decision_thresholds
from imageblocks.models.fold_bn import fold_batchnorm, has_hooks
from imageblocks.transforms.item import source_region
from imageblocks_runtime import records
from imageblocks_runtime.preprocess import to_pixels
from imageblocks_runtime.records import prediction_line

__all__ = [
    "activation",
    "decode_preds",
    "get_preds",
    "predict",
    "predict_batch",
    "prediction",
    "prediction_line",
    "prediction_record",
    "prediction_records",
    "raw_preds",
]

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def activation(loss_func: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss's activation (sigmoid for multi-label, softmax for single label), else none."""
    return getattr(loss_func, "activation", _identity)


# whether a model folds (checked once against its own outputs); weak: a model dropped is forgotten
_FOLDS: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def eval_model(learn: Learner, x: torch.Tensor) -> nn.Module:
    """The module an evaluation pass runs: a copy of the model with each batch-norm folded into
    its convolution (models/fold_bn.py: the same outputs, fewer passes over the activations),
    checked against the model on `x` the first time; the model itself where that cannot be
    done (forward hooks watching it, a layout the check rejects)."""
    model = learn.model
    if _FOLDS.get(model) is False or has_hooks(model):
        return model
    folded, n = fold_batchnorm(model, check=None if model in _FOLDS else x[:4])
    _FOLDS[model] = n > 0
    return folded


@torch.no_grad()
def raw_preds(learn: Learner, dl: DataLoader, with_input: bool = False) -> tuple:
    """Raw model outputs, targets (and inputs) for every batch of `dl`, concatenated; under
    torchrun every process gets the whole set, in order."""
    if len(dl.dataset) == 0:
        raise ValueError(
            "there is nothing to predict: this set is empty (an empty validation split?); "
            "give the splitter some validation items, or pass dl="
        )
    learn.model.eval()
    distributed.sync_buffers(learn.model)
    preds, targs, inputs = [], [], []
    model = None
    for b in distributed.shard_loader(dl):
        xs, ys = learn.split_batch(b)
        if model is None:
            model = eval_model(learn, xs[0]) if len(xs) == 1 else learn.model
        with learn.autocast():
            out = model(*xs)
        preds.append(out.float())
        if ys:
            targs.append(ys[0])
        if with_input:
            inputs.append(xs[0])
    n = len(dl.dataset)
    return tuple(
        distributed.gather(torch.cat(ts), n) if ts else None for ts in (preds, targs, inputs)
    )


def get_preds(
    learn: Learner,
    dl: DataLoader,
    with_input: bool = False,
    with_decoded: bool = False,
    act: Callable | None = None,
) -> tuple:
    """(predictions after the loss's activation, targets), in the loader's order; the inputs
    first `with_input`, the decisions last `with_decoded`."""
    raw, targs, inputs = raw_preds(learn, dl, with_input)
    preds = (act or activation(learn.loss_func))(raw)
    if targs is not None and preds.numel() == targs.numel() and preds.shape != targs.shape:
        preds = preds.reshape(targs.shape)  # points: (B, 2n) -> (B, n, 2)
    res: list[Any] = [preds, targs]
    if with_decoded:
        res.append(decode_preds(learn, preds))
    if with_input:
        res.insert(0, inputs)
    return tuple(res)


def decode_preds(learn: Learner, preds: torch.Tensor) -> torch.Tensor:
    """Activated predictions to decisions (multi-label: `decision_thresholds`, per class)."""
    thresholds = decision_thresholds(learn)
    if thresholds is not None:
        return preds > thresholds.to(dtype=preds.dtype, device=preds.device)
    return getattr(learn.loss_func, "decodes", _identity)(preds)


def prediction(learn: Learner, item: Any, preds: torch.Tensor) -> tuple:
    """One item's activated predictions as `predict` returns them."""
    target = learn.dls.target_block
    if task_of(target) is Task.POINTS:
        rel = preds.reshape(-1, 2)
        _, (w, h) = decode_image(item, draft=(1, 1))  # only the full size is needed
        region = source_region(learn.dls.item_tfms, w, h)
        pix = torch.from_numpy(to_pixels(rel.float().cpu().numpy(), region))
        return pix, rel, rel
    vocab = getattr(target, "vocab", None)
    decoded = decode_preds(learn, preds[None])[0].cpu()
    if vocab is not None and decoded.dtype == torch.bool:
        return vocab[decoded], decoded, preds
    if vocab is not None:
        return vocab[int(decoded)], decoded, preds
    return decoded, decoded, preds


def prediction_record(learn: Learner, result: tuple) -> dict[str, Any]:
    """One `predict` result as JSON-able values (`imageblocks_runtime.records`): multi-label
    `labels` and `probabilities` by class, single label `label` and `probabilities`, points
    `points` in pixels, else `values`."""
    task = task_of(learn.dls.target_block)
    if task is Task.POINTS:
        return records.prediction_record(task, None, _array(result[0]))
    return records.prediction_record(task, learn.dls.vocab, _array(result[2]), _array(result[1]))


def _array(x: Any) -> Any:
    """A tensor as a NumPy array (anything else as it is)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def prediction_records(
    learn: Learner, items: Sequence[Any], thresh: float | None = None
) -> list[dict[str, Any]]:
    """`{"image": item, **prediction_record}` of each item (the CLI's PyTorch path); `thresh`:
    one multi-label threshold for every class instead of the model's own."""
    if thresh is not None:
        if task_of(learn.dls.target_block) is not Task.MULTILABEL:
            raise ArgumentError("--thresh applies to multi-label models only")
        if not 0 < thresh < 1:
            raise ArgumentError(f"--thresh must be between 0 and 1, not {thresh}")
        learn.thresholds = [float(thresh)] * len(learn.dls.vocab)
    return [{"image": str(p), **prediction_record(learn, learn.predict(p))} for p in items]


def predict(learn: Learner, item: Any) -> tuple:
    """Predict one image (path, bytes, PIL image or array); see the module for what comes back."""
    dl = learn.dls.test_dl([item])
    n_inp = learn.dls.n_inp
    with one_thread():
        xs = dl.process(collate([dl.dataset[0]]))[:n_inp]  # no loader for one item
    raw = learn.onnx_runner(learn.model, xs[0]) if len(xs) == 1 and learn.fast_predict else None
    if raw is None:
        learn.model.eval()
        xs, _ = learn.split_batch(xs)
        with torch.inference_mode(), learn.autocast():
            raw = learn.model(*xs).float()
    with one_thread():
        preds = activation(learn.loss_func)(raw)[0].cpu()
    return prediction(learn, item, preds)


def predict_batch(learn: Learner, items: Sequence[Any], bs: int | None = None) -> list[tuple]:
    """`predict` for many images, batched: a list of its results."""
    items = list(items)
    if not items:
        return []
    preds, _ = learn.get_preds(dl=learn.dls.test_dl(items, bs=bs))
    return [prediction(learn, item, p.reshape(-1).cpu()) for item, p in zip(items, preds)]
