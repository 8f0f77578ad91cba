"""ONNX export: the self-contained graph (`onnx_graph`) written with its `config.json`, and int8.

`export_onnx(learn, path)` writes `model.onnx` (uint8 images after the validation item
transforms in, the task's outputs out; the contract is the runtime's `onnx_spec`) and config.json
with its `onnx` section; with `int8=True` also `model.int8.onnx`, calibrated on the validation
images (`quantize`). Into a model folder (new, or the model's own export) the files are swapped
in together with the weights rewritten; `learn.export()` writes `model.onnx` too, so this is for
another opset, a quantised copy, a `.onnx` file elsewhere, or refreshing an older export.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imageblocks.learn.export import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ExportError,
    config_bytes,
    learner_config,
    replaced_files,
    weights_bytes,
)
from imageblocks.learn.model_folder import replace_file, write_bytes, write_folder
from imageblocks.learn.onnx_graph import (
    INT8_NAME,
    ONNX_NAME,
    OPSET,
    graph_bytes,
    graph_section,
    input_size,
)
from imageblocks.learn.quantize import CALIBRATION_IMAGES, quantize_graph

if TYPE_CHECKING:  # the type only: the Learner imports this module to export itself
    from imageblocks.learn.learner import Learner

__all__ = ["INT8_NAME", "ONNX_NAME", "export_onnx", "input_size", "int8_name", "valid_images"]


def _check_same_model(config_file: Path, config: dict[str, Any]) -> None:
    """Refuse to overwrite the config.json of a different model in the target folder."""
    if not config_file.exists():
        return
    try:
        old = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        old = None
    keys = ("task", "model", "vocab")
    if not isinstance(old, dict) or any(old.get(k) != config[k] for k in keys):
        raise ExportError(
            f"{config_file} describes another model: export the ONNX file into an empty folder "
            "or into this model's own export folder"
        )


def _onnx_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return path
    return path / ONNX_NAME


def int8_name(onnx_name: str) -> str:
    """The quantised graph's file name beside `onnx_name` (model.onnx -> model.int8.onnx)."""
    return INT8_NAME if onnx_name == ONNX_NAME else f"{Path(onnx_name).stem}.int8.onnx"


def valid_images(learn: Learner, limit: int = CALIBRATION_IMAGES) -> Iterator[np.ndarray]:
    """Up to `limit` validation images as the graph takes them (uint8 HWC, item-transformed),
    spread evenly over the validation set."""
    ds = learn.dls.valid.dataset
    if len(ds) == 0:
        return
    for i in np.unique(np.linspace(0, len(ds) - 1, min(len(ds), limit)).round().astype(int)):
        yield np.asarray(ds[int(i)][0])


def export_onnx(
    learn: Learner,
    path: str | os.PathLike,
    opset: int = OPSET,
    size: tuple[int, int] | None = None,
    check: bool = True,
    int8: bool = False,
    calibration: Iterable[np.ndarray] | None = None,
) -> Path:
    """Write the self-contained graph (`path`: a `.onnx` file, or a folder for `model.onnx`)
    and `config.json` beside it; returns the ONNX file's path. Into a model folder (new, or the
    model's own export), the files are swapped in together, with the weights rewritten.

    `int8`: also the int8 graph, calibrated on `calibration` (uint8 HWC item-transformed images;
    default: the validation set's, up to 256). `size` (height, width): the size to trace at
    when no transform fixes one. `check`: run onnx's checker on the graph."""
    file = _onnx_file(path)
    folder = file.parent
    config = learner_config(learn)
    _check_same_model(folder / CONFIG_NAME, config)
    config["onnx"] = graph_section(learn, opset, file.name)
    graph = graph_bytes(learn, opset, size, check)
    blobs = {file.name: graph}
    if int8:
        images = valid_images(learn) if calibration is None else calibration
        blobs[int8_name(file.name)], n = quantize_graph(graph, images)
        config["onnx"]["int8"] = {"file": int8_name(file.name), "calibration_images": n}
    if not _is_model_folder(folder):  # e.g. `./model.onnx` in a folder of other things
        files = {name: replace_file(folder / name, data) for name, data in blobs.items()}
        replace_file(folder / CONFIG_NAME, config_bytes({**config, "files": files}))
        return file
    # the model's own folder: every file, the weights too, from this learner in one swap
    weights = weights_bytes(learn.model) if (folder / WEIGHTS_NAME).exists() else None

    def write(new: Path) -> None:
        files = {name: write_bytes(new / name, data) for name, data in blobs.items()}
        if weights is not None:
            files[WEIGHTS_NAME] = write_bytes(new / WEIGHTS_NAME, weights)
        write_bytes(new / CONFIG_NAME, config_bytes({**config, "files": files}))

    write_folder(folder, write, replaced_files(folder))
    return file


def _is_model_folder(folder: Path) -> bool:
    """A folder export may swap as a whole: new, empty, or holding a model's config.json."""
    return not folder.exists() or (folder / CONFIG_NAME).exists() or not any(folder.iterdir())
