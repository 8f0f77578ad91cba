"""Export with no pickle: `config.json` (what the model is and how to feed it) plus
`model.safetensors` (the weights). `load_learner` rebuilds an inference `Learner` from those two
files alone: no user code, no training data, nothing executed from the files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imageblocks import __version__
from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import (
    CategoryBlock,
    ImageBlock,
    MultiCategoryBlock,
    PointBlock,
    RegressionBlock,
    Task,
    TransformBlock,
    task_of,
)
from imageblocks.data.datasets import Datasets, Pipeline
from imageblocks.losses import loss_from_config
from imageblocks.transforms.batch import AffineWarp, Normalize
from imageblocks.transforms.item import ItemTransform, item_tfm_from_config

FORMAT = "imageblocks"
FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class ExportError(ValueError):
    """A learner that cannot be exported, or an export folder that cannot be loaded."""


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


def learner_config(learn: Any) -> dict:
    """Everything needed to rebuild `learn` for inference, as JSON-able values."""
    model = learn.model
    if not hasattr(model, "config"):
        raise ExportError("export needs a model built by vision_learner/create_vision_model")
    target = learn.dls.target_block
    vocab = getattr(target, "vocab", None)
    thresholds = learn.thresholds
    if isinstance(thresholds, torch.Tensor):
        thresholds = thresholds.tolist()
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
    }


def export_learner(learn: Any, path: str | os.PathLike) -> Path:
    """Write `config.json` and `model.safetensors` into the folder `path` (atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = learner_config(learn)
    state = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    tmp_w, tmp_c = path / (WEIGHTS_NAME + ".tmp"), path / (CONFIG_NAME + ".tmp")
    save_file(state, str(tmp_w), metadata={"format": FORMAT})
    tmp_c.write_text(json.dumps(config, indent=2))
    os.replace(tmp_w, path / WEIGHTS_NAME)
    os.replace(tmp_c, path / CONFIG_NAME)
    return path


def read_config(path: str | os.PathLike) -> dict:
    """The checked `config.json` of an export folder."""
    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.exists():
        raise ExportError(
            f"no {CONFIG_NAME} in {path}: is this a folder written by learn.export()?"
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{file} is not valid JSON ({e}); re-export the model") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(f"{file} is not an imageblocks model config (missing format: {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ExportError(f"{file}: 'format_version' is missing or not an integer; re-export it")
    if version > FORMAT_VERSION:
        writer = config.get("library_version")
        by = f" (written by imageblocks {writer})" if isinstance(writer, str) else ""
        raise ExportError(
            f"{file} has format_version {version!r}{by}, newer than this imageblocks "
            f"({__version__}, reads up to {FORMAT_VERSION}): upgrade imageblocks "
            "(pip install -U imageblocks), or re-export the model with this version"
        )
    for key, kind in (("task", str), ("model", dict), ("item_tfms", list), ("batch_tfms", list)):
        if not isinstance(config.get(key), kind):
            raise ExportError(f"{file}: field {key!r} is missing or not a {kind.__name__}")
    if config["task"] in ("multilabel", "category") and not isinstance(config.get("vocab"), list):
        raise ExportError(f"{file}: a {config['task']} model needs a 'vocab' list")
    return config


def _target_block(config: dict) -> TransformBlock:
    task, vocab = config["task"], config.get("vocab")
    if task == Task.MULTILABEL:
        return MultiCategoryBlock(vocab=vocab)
    if task == Task.CATEGORY:
        return CategoryBlock(vocab=vocab)
    if task == Task.POINTS:
        return PointBlock()
    if task == Task.REGRESSION:
        return RegressionBlock()
    raise ExportError(
        f"unknown task {task!r} in config.json: it must be one of {[t.value for t in Task]}"
    )


def _batch_tfms(configs: list[dict]) -> list[Any]:
    out = []
    for c in configs:
        if c.get("name") == "Resize":
            out.append(
                AffineWarp(
                    size=tuple(c["size"]),
                    mode=c.get("mode", "bilinear"),
                    pad_mode=c.get("pad_mode", "reflection"),
                    align_corners=bool(c.get("align_corners", False)),
                )
            )
        elif c.get("name") == "Normalize":
            out.append(Normalize.from_stats(c["mean"], c["std"]))
        else:
            raise ExportError(f"unknown batch transform {c!r} in config.json")
    return out


def _load_weights(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    file = path / WEIGHTS_NAME
    if not file.exists():
        raise ExportError(f"no {WEIGHTS_NAME} in {path}: the export is incomplete, re-export it")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise ExportError(
            f"{file} is not a readable safetensors file ({e}); re-export it"
        ) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(
            f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
            if keys
        )
        raise ExportError(
            f"the tensors in {file} do not match the model described by config.json ({detail}): "
            "the two files come from different exports (or the weights were edited): "
            "export the model again with learn.export() and copy both files together"
        )
    return state


def load_learner(path: str | os.PathLike, device: str | torch.device | None = None) -> Any:
    """An inference `Learner` from an export folder: `predict`, `get_preds(dl=...)`, `export`."""
    from imageblocks.learn.learner import Learner
    from imageblocks.models.backbones import create_vision_model

    path = Path(path)
    if not path.exists():
        raise ExportError(f"model folder not found: {path}")
    config = read_config(path)
    try:
        model = create_vision_model(**{**config["model"], "pretrained": False})
    except TypeError as e:
        raise ExportError(f"config.json 'model' has unexpected fields: {e}") from None
    model.load_state_dict(_load_weights(path, model))
    target = _target_block(config)
    try:
        item_tfms = [item_tfm_from_config(c) for c in config["item_tfms"]]
    except (TypeError, ValueError) as e:
        raise ExportError(f"config.json 'item_tfms': {e}") from None
    dblock = DataBlock(
        blocks=(ImageBlock, target),
        item_tfms=item_tfms,
        batch_tfms=_batch_tfms(config["batch_tfms"]),
    )
    dsets = Datasets(
        [], splits=([], []), pipelines=[Pipeline([], ImageBlock()), Pipeline([], target)]
    )
    dls = dblock.dataloaders_from(dsets, bs=64, num_workers=0, device=device)
    loss = loss_from_config(config["loss"]) if config.get("loss") else target.loss()
    learn = Learner(dls, model, loss_func=loss)
    per_class = (config.get("thresholds") or {}).get("per_class")
    if per_class is not None:
        if len(per_class) != len(config["vocab"]) or not all(
            isinstance(t, (int, float)) and math.isfinite(t) for t in per_class
        ):
            raise ExportError("config.json thresholds.per_class must be one number per class")
        learn.thresholds = torch.tensor(per_class, dtype=torch.float32)
    learn.config = config
    learn.model.eval()
    return learn
