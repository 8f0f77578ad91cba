"""`RuntimeModel`: a self-contained model folder run by ONNX Runtime, with no PyTorch.

The folder holds `config.json` (checked field by field), `model.onnx` (the graph of
`onnx_spec`: uint8 images after the validation item transforms in, the task's outputs out) and,
once quantised, `model.int8.onnx`; config.json records each file's sha256, checked on load.
Images are decoded and transformed by `preprocess` exactly as the training package's validation
loader does, and points are mapped back to the original image's pixels there too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imageblocks_runtime import onnx_spec
from imageblocks_runtime.config import CONFIG_NAME, ExportError, parse_config
from imageblocks_runtime.errors import ArgumentError
from imageblocks_runtime.folder import check_file, swap_in_progress
from imageblocks_runtime.preprocess import (
    draft_size,
    prepare,
    source_region,
    to_pixels,
    valid_tfms,
)
from imageblocks_runtime.records import prediction_record
from imageblocks_runtime.tasks import Task

__all__ = ["RuntimeModel", "self_contained"]

REEXPORT = "re-export it with learn.export() or `imageblocks export-onnx MODEL`"
_READ_ATTEMPTS = 5  # a folder met half-way through an export's swap is read again


def _read_folder(folder: Path, int8: bool) -> tuple[dict[str, Any], bytes, Path]:
    """The checked config and the graph's bytes (checked against config.json's digest)."""
    if not folder.is_dir():
        what = "not found" if not folder.exists() else "not a folder"
        raise ExportError(f"model folder {what}: {folder} (pass the folder with {CONFIG_NAME})")
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise ExportError(
            f"no {CONFIG_NAME} in {folder}: is this a folder written by learn.export()?"
        )
    config = parse_config(config_file)
    section = config.get("onnx")
    if not onnx_spec.is_self_contained(section):
        raise ExportError(
            f"{folder} has no self-contained model.onnx (images in, probabilities and "
            f"decisions out): {REEXPORT}"
        )
    name = section.get("file", onnx_spec.ONNX_NAME)
    if int8:
        quantised = section.get("int8")
        if not isinstance(quantised, dict):
            raise ExportError(
                f"{folder} has no int8 model: write one with `imageblocks export-onnx {folder} "
                "--int8 --images DIR`, or predict without --int8"
            )
        name = quantised.get("file", onnx_spec.INT8_NAME)
    file = folder / name
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"no {name} in {folder}: the export is incomplete, {REEXPORT}") from None
    except OSError as e:
        raise ExportError(f"cannot read {file} ({e.strerror or e}); {REEXPORT}") from None
    check_file(data, file, (config.get("files") or {}).get(name))
    return config, data, file


def self_contained(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a model folder whose graph `RuntimeModel` runs (a current export)."""
    folder = Path(folder)
    try:
        section = parse_config(folder / CONFIG_NAME).get("onnx")
    except ExportError:
        return False
    if not onnx_spec.is_self_contained(section):
        return False
    return (folder / section.get("file", onnx_spec.ONNX_NAME)).is_file()


def _session(data: bytes, threads: int | None) -> Any:
    """An ONNX Runtime CPU session on the graph `data` (`threads`: intra-op threads, default all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    # threads wait asleep, not spinning: batch prediction decodes in worker processes on the
    # same cores, and spinning graph threads took their CPU
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = max(1, int(threads))
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class RuntimeModel:
    """A model folder's graph with the pre-processing and decoding around it."""

    def __init__(self, folder: Path, config: dict[str, Any], session: Any, file: Path) -> None:
        self.folder, self.config, self.session, self.file = folder, config, session, file
        self.task = Task(config["task"])
        vocab = config.get("vocab")
        self.vocab: list[str] | None = [str(v) for v in vocab] if vocab is not None else None
        section = config["onnx"]
        thresholds = section.get("thresholds")
        if thresholds is None:
            thresholds = (config.get("thresholds") or {}).get("per_class")
        self.thresholds: list[float] | None = (
            [float(t) for t in thresholds] if thresholds is not None else None
        )
        self.tfms = valid_tfms(config.get("item_tfms") or [])
        sizes = [t.size for t in self.tfms if t.size is not None]
        self.input_size: tuple[int, int] | None = tuple(sizes[-1]) if sizes else None
        self.draft = draft_size(config.get("item_tfms") or [], config.get("batch_tfms") or [])
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]

    @classmethod
    def load(
        cls, folder: str | os.PathLike, int8: bool = False, threads: int | None = None
    ) -> RuntimeModel:
        """Read, check and open a self-contained model folder (`int8`: its quantised graph)."""
        folder = Path(folder)
        for attempt in range(_READ_ATTEMPTS):
            try:
                config, data, file = _read_folder(folder, int8)
                break
            except ExportError:
                if attempt == _READ_ATTEMPTS - 1 or not swap_in_progress(folder):
                    raise
                time.sleep(0.02 * 2**attempt)
        try:
            session = _session(data, threads)
        except Exception as e:  # onnxruntime raises its own types for a damaged graph
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(
                f"{file} cannot be loaded by ONNX Runtime ({first}); {REEXPORT}"
            ) from None
        return cls(folder, config, session, file)

    def __repr__(self) -> str:
        return f"RuntimeModel({str(self.folder)!r}, task={self.task.value}, file={self.file.name})"

    def prepare(self, source: Any) -> tuple[np.ndarray, tuple[int, int]]:
        """`source` (a path, bytes, a PIL image) as the graph takes it: a uint8 (H, W, 3) array
        after the validation item transforms, and the original image's (w, h)."""
        return prepare(source, self.tfms, self.draft)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs, by name, for a uint8 (B, H, W, 3) batch of prepared images."""
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outputs))

    def decision_thresholds(self, thresh: float | None) -> np.ndarray | None:
        """The per-class thresholds that replace the graph's decisions; None to keep them."""
        if thresh is None:
            return None
        if self.task is not Task.MULTILABEL:
            raise ArgumentError("thresh (--thresh) applies to multi-label models only")
        if not 0 < thresh < 1:
            raise ArgumentError(f"thresh (--thresh) must be between 0 and 1, not {thresh}")
        return np.full(len(self.vocab or ()), thresh, dtype=np.float32)

    def records(
        self,
        outputs: dict[str, np.ndarray],
        sizes: Sequence[tuple[int, int]],
        thresh: float | None = None,
    ) -> list[dict[str, Any]]:
        """One `prediction_record` per image of a batch's `outputs`; `sizes`: each original
        image's (w, h), for points in its pixels."""
        if self.task is Task.POINTS:
            return [
                prediction_record(self.task, None, to_pixels(p, source_region(self.tfms, w, h)))
                for p, (w, h) in zip(outputs["points"], sizes)
            ]
        if self.task is Task.REGRESSION:
            return [prediction_record(self.task, None, v) for v in outputs["values"]]
        probs, decisions = outputs["probabilities"], outputs["decisions"]
        override = self.decision_thresholds(thresh)
        if override is not None:
            decisions = probs > override
        return [prediction_record(self.task, self.vocab, p, d) for p, d in zip(probs, decisions)]

    def predict(self, source: Any, thresh: float | None = None) -> dict[str, Any]:
        """The prediction record of one image (`thresh`: one multi-label threshold for every
        class instead of the model's own)."""
        return self.predict_many([source], bs=1, thresh=thresh)[0]

    def predict_many(
        self, sources: Iterable[Any], bs: int = 32, thresh: float | None = None
    ) -> list[dict[str, Any]]:
        """`predict` for many images, `bs` at a time through the graph."""
        self.decision_thresholds(thresh)  # a bad threshold fails before any image is read
        sources = list(sources)
        out: list[dict[str, Any]] = []
        for start in range(0, len(sources), max(1, bs)):
            prepared = [self.prepare(s) for s in sources[start : start + max(1, bs)]]
            out.extend(self.predict_prepared(prepared, thresh))
        return out

    def predict_prepared(
        self, prepared: Sequence[tuple[np.ndarray, tuple[int, int]]], thresh: float | None = None
    ) -> list[dict[str, Any]]:
        """The records of images already `prepare`d: (array, original (w, h)) pairs. Arrays of
        one shape go through the graph together (all of them, when the transforms fix a size)."""
        records: list[dict[str, Any] | None] = [None] * len(prepared)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (arr, _) in enumerate(prepared):
            groups.setdefault(arr.shape, []).append(i)
        for idxs in groups.values():
            batch = np.stack([prepared[i][0] for i in idxs])
            outputs = self.run(batch)
            found = self.records(outputs, [prepared[i][1] for i in idxs], thresh)
            for i, record in zip(idxs, found):
                records[i] = record
        return records  # type: ignore[return-value]
