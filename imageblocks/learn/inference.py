"""Low-latency single-image inference: the model, exported to ONNX in memory, run by ONNX Runtime.

At batch size 1 on a CPU, eager PyTorch spends most of a forward pass in per-operator overhead
(about 10 ms for EfficientNet-Lite0 at 128 px on 2 cores); ONNX Runtime, which folds batch norm
into the convolutions, takes about 1.2 ms for the same outputs (within 1e-5).
The session is rebuilt whenever the weights change (any module, parameter or buffer replaced or
modified in place, as training and `load` do), so predictions always come from the current model:
each call checks that model only (`ModelWatch`: the identity of its modules and tensors and the
tensors' version counters, about 0.06 ms); nothing outside the model is hooked. Without
onnxruntime, on a GPU, or for a model the exporter cannot handle, `predict` uses PyTorch.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import threading
import warnings
from collections.abc import Iterator
from functools import partial
from itertools import chain
from operator import attrgetter, is_not
from typing import Any

import torch
from torch import nn

_version = attrgetter("_version")
_present = partial(is_not, None)  # a module's dicts may hold None (`bias=False`)


class ModelWatch:
    """Tells whether a model changed since it was watched: a module, parameter or buffer replaced,
    added or removed (a new head, `load_state_dict(assign=True)`), or a tensor modified in place
    (optimiser steps, `load_state_dict`). It reads only that model's own dicts; nothing is hooked.

    `changed` takes about 0.06 ms for EfficientNet-Lite0 (858 dicts, 308 tensors): one
    `gc.get_referents` call lists every value of every dict (in order, in C), compared by `id`
    with the values it keeps alive, so that no new object can take an old one's address."""

    def __init__(self, model: nn.Module) -> None:
        modules = [model]
        for children in map(attrgetter("_modules"), modules):  # grows as it is walked
            modules.extend(filter(_present, children.values()))
        self.model = model
        self._dicts = [
            *map(attrgetter("_modules"), modules),
            *map(attrgetter("_parameters"), modules),
            *map(attrgetter("_buffers"), modules),
        ]
        self._values = gc.get_referents(*self._dicts)
        self._ids = [*map(id, self._values)]
        self._tensors = [
            *filter(_present, chain.from_iterable(map(dict.values, self._dicts[len(modules) :])))
        ]
        self._versions = self._tensor_versions()

    def _tensor_versions(self) -> list[int] | None:
        try:
            return [*map(_version, self._tensors)]
        except RuntimeError:  # inference tensors carry no version counter
            return None

    def changed(self, model: nn.Module) -> bool:
        """True unless `model` is the watched model, unchanged (always True when unknown)."""
        return (
            model is not self.model
            or self._versions is None
            or [*map(id, gc.get_referents(*self._dicts))] != self._ids
            or self._tensor_versions() != self._versions
        )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny single-image tensor ops on one thread: waking a second one costs more than the
    op itself (milliseconds when another process holds that core)."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class OnnxRunner:
    """Runs `model` on CPU batches through an ONNX Runtime session built from it on demand."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.session: Any = None
        self.watch: ModelWatch | None = None  # the model `session` was built from
        self.unavailable: str | None = None  # why PyTorch is used instead, once known
        self._lock = threading.Lock()

    def _build(self, model: nn.Module, x: torch.Tensor) -> Any:
        import onnxruntime as ort

        clone = copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                clone,
                (torch.zeros(1, *x.shape[1:]),),
                buf,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}},
                opset_version=17,
                do_constant_folding=True,
                dynamo=False,
            )
        options = ort.SessionOptions()
        # as many threads as torch uses (2 on 2 cores: 1.2 ms against 2.0 ms for one)
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The model's float32 output for `x`, or None when PyTorch must do it."""
        if self.unavailable is not None or x.device.type != "cpu" or x.ndim != 4:
            return None
        with self._lock:
            if self.session is None or self.watch is None or self.watch.changed(model):
                watch = ModelWatch(model)  # before the export: it reads these weights
                try:
                    self.session = self._build(model, x)
                except ImportError:
                    self.unavailable = "onnxruntime is not installed"
                    return None
                except Exception as e:  # an architecture the exporter cannot handle
                    self.unavailable = f"ONNX export failed ({type(e).__name__}: {e})"
                    return None
                self.watch = watch
            session = self.session
        out = session.run(None, {"input": x.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)
