"""ONNX export: the model alone (normalised images in, raw outputs out) plus `config.json`.

The graph takes a float32 batch `(B, 3, H, W)` of RGB images scaled to [0, 1], resized as the
validation transforms do and normalised with the config's mean and std; `B` is dynamic. It
returns the raw model outputs: logits for classifiers (apply a sigmoid for multi-label), values
for points (already in [-1, 1] when the model has a `y_range`). The `onnx` section of
`config.json` spells this out for a consumer that does not use imageblocks.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

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
from imageblocks.transforms.geometry import AffineWarp
from imageblocks.transforms.normalize import Normalize

if TYPE_CHECKING:  # the type only: the Learner imports this module to export itself
    from imageblocks.learn.learner import Learner

__all__ = ["ONNX_NAME", "export_onnx", "input_size", "onnx_config"]

ONNX_NAME = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "image", "output"
_ACTIVATIONS = {
    "multilabel": "sigmoid",
    "category": "softmax",
    "points": "none",
    "regression": "none",
}


def input_size(learn: Learner) -> tuple[int, int] | None:
    """The (height, width) of the images the model sees at validation, if fixed."""
    size = None
    for t in learn.dls.item_tfms:
        if getattr(t, "size", None) is not None:
            size = tuple(t.size)
    for t in learn.dls.valid.after_batch:
        if isinstance(t, AffineWarp) and t.size is not None:
            size = tuple(t.size)
    return (int(size[0]), int(size[1])) if size is not None else None


def _normalisation(learn: Learner, n_in: int) -> tuple[list[float], list[float]]:
    for t in learn.dls.valid.after_batch:
        if isinstance(t, Normalize):
            return list(t.mean), list(t.std)
    return [0.0] * n_in, [1.0] * n_in


def onnx_config(
    learn: Learner, size: tuple[int, int], opset: int, file_name: str = ONNX_NAME
) -> dict[str, Any]:
    """The `onnx` section of config.json: the graph's input, output and preprocessing."""
    config = learner_config(learn)
    n_in = int(config["model"].get("n_in", 3))
    n_out = int(config["model"].get("n_out") or 0)
    mean, std = _normalisation(learn, n_in)
    task = config["task"]
    return {
        "file": file_name,
        "opset": opset,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", n_in, size[0], size[1]],
            "dtype": "float32",
            "preprocess": (
                "RGB scaled to [0, 1], the validation item_tfms/batch_tfms of this config "
                "(resize to height x width), then (x - mean) / std per channel"
            ),
            "mean": mean,
            "std": std,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", n_out],
            "activation": _ACTIVATIONS.get(task, "none"),
            "meaning": (
                "one logit per class of 'vocab'"
                if task in ("multilabel", "category")
                else "x, y of each point in [-1, 1] of the image region the transforms keep"
                if task == "points"
                else "the regression values"
            ),
        },
    }


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


def export_onnx(
    learn: Learner,
    path: str | os.PathLike,
    opset: int = 17,
    size: tuple[int, int] | None = None,
    check: bool = True,
) -> Path:
    """Write the model as ONNX (`path`: a `.onnx` file, or a folder for `model.onnx`) and
    `config.json` beside it; returns the ONNX file's path. Into a model folder (new, or the
    model's own export), the files are swapped in together, with the weights rewritten.

    `size` (height, width) is read from the validation transforms unless given."""
    size = size or input_size(learn)
    if size is None:
        raise ExportError(
            "the model's input size is not fixed by the transforms (no Resize/RandomResizedCrop "
            "or batch resize): pass size=(height, width)"
        )
    file = _onnx_file(path)
    folder = file.parent
    config = learner_config(learn)
    _check_same_model(folder / CONFIG_NAME, config)
    config["onnx"] = onnx_config(learn, size, opset, file.name)
    graph = _onnx_bytes(learn, size, config["onnx"]["input"]["shape"][1], opset, check)
    if not _is_model_folder(folder):  # e.g. `./model.onnx` in a folder of other things
        files = {file.name: replace_file(file, graph)}
        replace_file(folder / CONFIG_NAME, config_bytes({**config, "files": files}))
        return file
    # the model's own folder: every file, the weights too, from this learner in one swap
    weights = weights_bytes(learn.model) if (folder / WEIGHTS_NAME).exists() else None

    def write(new: Path) -> None:
        files = {file.name: write_bytes(new / file.name, graph)}
        if weights is not None:
            files[WEIGHTS_NAME] = write_bytes(new / WEIGHTS_NAME, weights)
        write_bytes(new / CONFIG_NAME, config_bytes({**config, "files": files}))

    write_folder(folder, write, replaced_files(folder))
    return file


def _is_model_folder(folder: Path) -> bool:
    """A folder export may swap as a whole: new, empty, or holding a model's config.json."""
    return not folder.exists() or (folder / CONFIG_NAME).exists() or not any(folder.iterdir())


def _onnx_bytes(learn: Learner, size: tuple[int, int], n_in: int, opset: int, check: bool) -> bytes:
    """The model as an ONNX graph (checked with `onnx` when it is installed)."""
    model = copy.deepcopy(learn.model).float().cpu().eval()
    model = model.to(memory_format=torch.contiguous_format)
    dummy = torch.rand(2, n_in, *size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; it is the one that works with the packages imageblocks depends on
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(
            model,
            (dummy,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
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
