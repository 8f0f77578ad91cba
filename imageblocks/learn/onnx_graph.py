"""The self-contained ONNX graph of a learner: uint8 images in, the task's outputs out.

`DeployedModel` wraps the network with everything `learn.predict` does after the validation item
transforms: cast to float, scale by 1/255, NHWC to NCHW, the validation batch transforms (the
resize of `AffineWarp`, `Normalize`: the ones config.json describes, run by their own code), the
network, the loss's activation and the decision (per-class thresholds, argmax). `graph_bytes`
traces it into ONNX; the contract (names, dtypes, shapes, the `onnx` section) is the runtime's
`onnx_spec`, so the writer and the reader share one definition.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from imageblocks.data.blocks import Task, task_of
from imageblocks.learn.model_config import ExportError
from imageblocks.learn.predict import activation
from imageblocks.learn.thresholds import decision_thresholds
from imageblocks.models.same_conv import static_padding
from imageblocks.transforms.geometry import AffineWarp
from imageblocks.transforms.normalize import Normalize
from imageblocks_runtime.onnx_spec import (
    INPUT_NAME,
    INT8_NAME,
    ONNX_NAME,
    onnx_section,
    output_spec,
)

if TYPE_CHECKING:  # the type only: the Learner imports the exporters to export itself
    from imageblocks.learn.learner import Learner

__all__ = [
    "INT8_NAME",
    "ONNX_NAME",
    "OPSET",
    "DeployedModel",
    "deployed_model",
    "graph_bytes",
    "graph_section",
    "input_size",
    "item_size",
]

OPSET = 17


def item_size(learn: Learner) -> tuple[int, int] | None:
    """The (height, width) of the images after the validation item transforms, if fixed: the
    graph's input size."""
    size = None
    for t in sorted(learn.dls.item_tfms, key=lambda t: getattr(t, "order", 0)):
        if getattr(t, "size", None) is not None:
            size = tuple(t.size)
    return (int(size[0]), int(size[1])) if size is not None else None


def input_size(learn: Learner) -> tuple[int, int] | None:
    """The (height, width) of the images the network sees at validation, if fixed."""
    size = item_size(learn)
    for t in learn.dls.valid.after_batch:
        if isinstance(t, AffineWarp) and t.size is not None:
            size = tuple(t.size)
    return (int(size[0]), int(size[1])) if size is not None else None


def _batch_tfms(learn: Learner) -> list[Callable]:
    """The validation batch transforms config.json describes, in the loader's order."""
    return [
        t
        for t in learn.dls.valid.after_batch
        if (isinstance(t, AffineWarp) and t.size is not None) or isinstance(t, Normalize)
    ]


class DeployedModel(nn.Module):
    """uint8 (B, H, W, C) images after the item transforms -> the task's outputs (`onnx_spec`)."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        batch_tfms: Sequence[Callable] = (),
        act: Callable[[Tensor], Tensor] | None = None,
        thresholds: Tensor | None = None,
    ) -> None:
        super().__init__()
        if task is Task.MULTILABEL and thresholds is None:
            raise ExportError("a multi-label model needs decision thresholds to export its graph")
        self.model, self.task = model, task
        self.batch_tfms = list(batch_tfms)  # plain callables, not modules: nothing to train
        self.act = act or (lambda x: x)
        self.register_buffer("thresholds", thresholds, persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        """The outputs `output_spec(task)` names, in its order."""
        x = image.permute(0, 3, 1, 2).float().div(255)  # as the loaders do, NCHW then / 255
        for t in self.batch_tfms:
            (x,) = t((x,), ("image",), False)
        preds = self.act(self.model(x).float())
        if self.task is Task.MULTILABEL:
            return preds, preds > self.thresholds
        if self.task is Task.CATEGORY:
            return preds, preds.argmax(-1)
        if self.task is Task.POINTS:
            return (preds.reshape(preds.shape[0], -1, 2),)
        return (preds,)


def _traceable(model: nn.Module) -> nn.Module:
    """`model` itself when it is CPU float32 in the default layout (the exporter traces it in
    eval mode and restores its mode), else a copy made so (about 70 ms for EfficientNet-Lite0)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(
        t.device.type == "cpu"
        and (t.dtype == torch.float32 or not t.is_floating_point())
        and (t.dim() != 4 or t.is_contiguous())
        for t in tensors
    ):
        return model
    model = copy.deepcopy(model).float().cpu()
    return model.to(memory_format=torch.contiguous_format)


def deployed_model(learn: Learner) -> DeployedModel:
    """`learn`'s network (on the CPU, float32) wrapped as the deployed graph computes it."""
    model = _traceable(learn.model)
    task = task_of(learn.dls.target_block)
    if task is None:
        raise ExportError("the target block has no task (multilabel, category, points...)")
    thresholds = decision_thresholds(learn) if task is Task.MULTILABEL else None
    return DeployedModel(model, task, _batch_tfms(learn), activation(learn.loss_func), thresholds)


def _trace_size(learn: Learner, size: tuple[int, int] | None) -> tuple[int, int]:
    """The example's (height, width): the fixed input size, else one the batch resize must
    change (so the trace records it), else `size`, else 64 x 64."""
    fixed = item_size(learn)
    if fixed is not None:
        return fixed
    seen = input_size(learn)
    if seen is not None:
        return seen[0] + 7, seen[1] + 5
    return tuple(size) if size is not None else (64, 64)


@contextlib.contextmanager
def _restored(modes: list[tuple[nn.Module, bool]]) -> Iterator[None]:
    """Each module's train/eval mode as it was, afterwards (the exporter resets them all)."""
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def graph_bytes(
    learn: Learner, opset: int = OPSET, size: tuple[int, int] | None = None, check: bool = False
) -> bytes:
    """`learn` as a self-contained ONNX graph (`check`: run onnx's checker on it too).

    `size`: the (height, width) to trace at when no transform fixes one (the input then takes
    any size, which only networks without size-dependent padding handle)."""
    wrapped = deployed_model(learn)
    n_in = int(getattr(learn.model, "config", {}).get("n_in", 3))
    h, w = _trace_size(learn, size)
    example = torch.randint(0, 256, (2, h, w, n_in), dtype=torch.uint8)
    names = list(output_spec(wrapped.task.value, 2))
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in names}
    axes[INPUT_NAME] = {0: "batch"} if item_size(learn) else {0: "batch", 1: "height", 2: "width"}
    buffer = io.BytesIO()
    modes = [(m, m.training) for m in wrapped.modules()]  # the learner's own modules, maybe
    wrapped.eval()
    fixed = static_padding() if item_size(learn) else contextlib.nullcontext()
    with _restored(modes), fixed, warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; it is the one that works with the packages imageblocks depends on
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    graph = buffer.getvalue()
    if check:
        try:
            import onnx
        except ImportError:
            onnx = None  # checking is optional; `pip install imageblocks[onnx]` adds it
        if onnx is not None:
            onnx.checker.check_model(onnx.load_from_string(graph))
    return graph


def graph_section(learn: Learner, opset: int = OPSET, file: str | None = None) -> dict[str, Any]:
    """config.json's `onnx` section for `learn`'s graph (`onnx_spec.onnx_section`)."""
    task = task_of(learn.dls.target_block)
    config = getattr(learn.model, "config", {})
    n_out, n_in = int(config.get("n_out") or 0), int(config.get("n_in", 3))
    thresholds = decision_thresholds(learn) if task is Task.MULTILABEL else None
    extra = {"file": file} if file is not None else {}
    return onnx_section(
        task.value,
        n_out,
        item_size(learn),
        opset,
        thresholds.tolist() if thresholds is not None else None,
        n_in,
        **extra,
    )
