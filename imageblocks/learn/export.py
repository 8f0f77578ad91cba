"""Export with no pickle: `config.json` (what the model is and how to feed it) plus
`model.safetensors` (the weights), written from a learner; `loading.load_learner` reads them back;
and `model.onnx`, the self-contained graph the runtime runs without PyTorch (`onnx_graph`).

The folder is written as a whole (`model_folder.write_folder`): a reader sees the old export or
the new one, never a mix. `config.json` records the weights' sha256 and size (`files`), and is
checked field by field (`model_config.validate_config`) before it is written, so an export that
could not be loaded back is refused. A model the ONNX exporter cannot handle is still exported,
without `model.onnx` (and its `onnx` section), with a warning naming the reason. This module knows no `Learner` class: it reads the
attributes a learner has (`model`, `dls`, `loss_func`, `thresholds`).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from imageblocks import __version__
from imageblocks.data.blocks import Task, TransformBlock, task_of
from imageblocks.learn.model_config import FORMAT, FORMAT_VERSION, ExportError, validate_config
from imageblocks.learn.model_folder import write_bytes, write_folder
from imageblocks.learn.onnx_graph import ONNX_NAME, graph_bytes, graph_section
from imageblocks.transforms.geometry import AffineWarp
from imageblocks.transforms.item import ItemTransform
from imageblocks.transforms.normalize import Normalize

if TYPE_CHECKING:  # the type only: the Learner imports this module to export itself
    from imageblocks.learn.learner import Learner

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "ExportError",
    "config_bytes",
    "export_learner",
    "learner_config",
    "onnx_files",
    "replaced_files",
    "weights_bytes",
]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def _task(block: TransformBlock | None) -> Task:
    """The target block's task, which config.json records; a block without one cannot export."""
    task = task_of(block)
    if task is None:
        raise ExportError(
            f"cannot export a learner whose target block is {block!r}: use MultiCategoryBlock, "
            "CategoryBlock, PointBlock or RegressionBlock as the DataBlock's last block"
        )
    return task


def _item_config(tfms: list[Any]) -> list[dict]:
    out = []
    for t in tfms:
        if not isinstance(t, ItemTransform):
            raise ExportError(
                f"item transform {t!r} is not one of imageblocks' own, so it cannot be described "
                "in config.json: use Resize/RandomResizedCrop, or apply it before the DataBlock"
            )
        out.append(t.config())
    return out


def _batch_config(tfms: list[Any]) -> list[dict]:
    """Only what validation does survives: the resize of `AffineWarp` and `Normalize`."""
    out = []
    for t in tfms:
        if isinstance(t, AffineWarp) and t.size is not None:
            out.append(
                {
                    "name": "Resize",
                    "size": list(t.size),
                    "mode": t.mode,
                    "pad_mode": t.pad_mode,
                    "align_corners": t.align_corners,
                }
            )
        elif isinstance(t, Normalize):
            out.append({"name": "Normalize", "mean": list(t.mean), "std": list(t.std)})
    return out


def learner_config(learn: Learner) -> dict:
    """Everything needed to rebuild `learn` for inference, as JSON-able values."""
    model = learn.model
    if not hasattr(model, "config"):
        raise ExportError("export needs a model built by vision_learner/create_vision_model")
    target = learn.dls.target_block
    vocab = getattr(target, "vocab", None)
    thresholds = learn.thresholds
    if isinstance(thresholds, torch.Tensor):
        thresholds = thresholds.tolist()
    pairs = getattr(target, "flip_pairs", None)
    flip_pairs = {"flip_pairs": [list(p) for p in pairs]} if pairs else {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "task": _task(target).value,
        "model": dict(model.config),
        "vocab": list(vocab) if vocab is not None else None,
        "loss": learn.loss_func.config() if hasattr(learn.loss_func, "config") else None,
        "thresholds": {
            "global": getattr(learn.loss_func, "thresh", None) if thresholds is None else None,
            "per_class": thresholds,
        },
        "item_tfms": _item_config(learn.dls.item_tfms),
        "batch_tfms": _batch_config(learn.dls.valid.after_batch),
        **flip_pairs,  # only a points model with mirror pairs has them
    }


def config_bytes(config: dict[str, Any]) -> bytes:
    """`config` as the text of a `config.json`, checked first: an export that could not be
    loaded back is refused when it is written, naming the field."""
    text = json.dumps(config, indent=2, allow_nan=False)
    validate_config(json.loads(text), "the exported config")
    return text.encode()


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's state as the bytes of a `model.safetensors` file."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return safetensors.torch.save(state, metadata={"format": FORMAT})


def replaced_files(path: Path) -> set[str]:
    """The entries of an existing export folder that a new export replaces (and so drops when
    it writes none): its config, weights and the files its config lists (an old model.onnx)."""
    names = {CONFIG_NAME, WEIGHTS_NAME}
    try:
        old = json.loads((path / CONFIG_NAME).read_bytes())
    except (OSError, ValueError, RecursionError):
        return names
    if isinstance(old, dict):
        files, onnx = old.get("files"), old.get("onnx")
        names |= {k for k in files if isinstance(k, str)} if isinstance(files, dict) else set()
        if isinstance(onnx, dict) and isinstance(onnx.get("file"), str):
            names.add(onnx["file"])
    return names


def onnx_files(learn: Learner) -> tuple[dict[str, Any], bytes] | None:
    """The `onnx` section and bytes of `learn`'s self-contained graph, or None (with a warning
    naming the reason) when the ONNX exporter cannot handle this model."""
    try:
        return graph_section(learn), graph_bytes(learn)
    except Exception as e:  # an architecture or transform the exporter cannot trace
        first = (str(e).strip().splitlines() or [""])[0]
        reason = f"{type(e).__name__}: {first}"
        warnings.warn(
            f"{ONNX_NAME} not written ({reason[:300]}): the export loads with load_learner, but "
            "the runtime (imageblocks-runtime, `imageblocks predict` without PyTorch) cannot "
            "run it",
            stacklevel=3,
        )
        return None


def export_learner(learn: Learner, path: str | os.PathLike, onnx: bool = True) -> Path:
    """Write `config.json`, `model.safetensors` and (`onnx`) the self-contained `model.onnx`
    into the folder `path`, as one atomic swap of the folder (its other files stay); the files
    of the previous export (an old model.int8.onnx) are dropped."""
    path = Path(path)
    config = learner_config(learn)
    config_bytes(config)
    weights = weights_bytes(learn.model)
    graph = onnx_files(learn) if onnx else None
    if graph is not None:
        config["onnx"] = graph[0]

    def write(folder: Path) -> None:
        files = {WEIGHTS_NAME: write_bytes(folder / WEIGHTS_NAME, weights)}
        if graph is not None:
            files[ONNX_NAME] = write_bytes(folder / ONNX_NAME, graph[1])
        write_bytes(folder / CONFIG_NAME, config_bytes({**config, "files": files}))

    write_folder(path, write, replaced_files(path))
    return path
