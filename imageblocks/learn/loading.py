"""Loading an export folder: `read_export` reads `config.json` and `model.safetensors`, each
checked and checked to belong together, and `load_learner` rebuilds an inference `Learner` from
those two files alone: no user code, no training data, nothing executed from the files.

Before any model is built, the config is checked field by field (`model_config.validate_config`)
and the safetensors header (names, shapes, dtypes) is compared with the model the config
describes, built on the meta device. `config.json` records the weights' sha256 and size
(`files`), and a pair that does not match is refused; a folder met half-way through an export's
swap is read again.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import (
    CategoryBlock,
    ImageBlock,
    MultiCategoryBlock,
    PointBlock,
    RegressionBlock,
    Task,
    TransformBlock,
)
from imageblocks.data.datasets import Datasets, Pipeline
from imageblocks.learn.export import CONFIG_NAME, WEIGHTS_NAME
from imageblocks.learn.learner import Learner
from imageblocks.learn.model_config import REDO, ExportError, parse_config
from imageblocks.learn.model_folder import digest, swap_in_progress
from imageblocks.losses import loss_from_config
from imageblocks.models.backbones import create_vision_model
from imageblocks.transforms.geometry import AffineWarp
from imageblocks.transforms.item import item_tfm_from_config
from imageblocks.transforms.normalize import Normalize

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_INT_DTYPES = {"I8", "I16", "I32", "I64", "U8"}
_READ_ATTEMPTS = 5  # a reader that meets a swap half-way looks again (0.02 s, 0.04 s ...)


class _Torn(ExportError):
    """A folder read half-way through an export's swap (or two files that do not belong
    together): worth reading again once."""


def read_config(path: str | os.PathLike) -> dict:
    """The checked `config.json` of an export folder (or the file itself)."""
    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.exists():
        raise _Torn(f"no {CONFIG_NAME} in {path}: is this a folder written by learn.export()?")
    return parse_config(file)


def _target_block(config: dict) -> TransformBlock:
    task, vocab = config["task"], config.get("vocab")
    if task == Task.MULTILABEL:
        return MultiCategoryBlock(vocab=vocab)
    if task == Task.CATEGORY:
        return CategoryBlock(vocab=vocab)
    if task == Task.POINTS:
        return PointBlock(flip_pairs=config.get("flip_pairs"))
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


def _tensor_header(file: BinaryIO, where: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's shape and dtype, read from the safetensors header (no data is read)."""
    fd_path = f"/dev/fd/{file.fileno()}"  # this very file, even if an export replaced it since
    try:
        with safe_open(fd_path if os.path.exists(fd_path) else str(where), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            return {k: (tuple(s.get_shape()), s.get_dtype()) for k, s in slices.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ExportError(f"{where} is not a readable safetensors file ({e}); {REDO}") from None


def _check_tensors(
    file: Path, expected: dict[str, torch.Tensor], got: dict[str, tuple[tuple[int, ...], str]]
) -> None:
    """Refuse weights whose names, shapes or dtypes differ from the model config.json builds."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shape = [k for k in expected if k in got and got[k][0] != tuple(expected[k].shape)]
    dtype = [
        k
        for k in expected
        if k in got
        and got[k][1] not in (_FLOAT_DTYPES if expected[k].is_floating_point() else _INT_DTYPES)
    ]
    if missing or extra or shape or dtype:
        detail = "; ".join(
            f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (
                ("missing", missing),
                ("unexpected", extra),
                ("wrong shape", shape),
                ("wrong dtype", dtype),
            )
            if keys
        )
        raise _Torn(
            f"the tensors in {file} do not match the model described by {CONFIG_NAME} ({detail}): "
            "the two files come from different exports (or the weights were edited): "
            "export the model again with learn.export() and copy both files together"
        )


def _read_weights(
    file: BinaryIO, where: Path, recorded: dict[str, Any] | None
) -> dict[str, torch.Tensor]:
    """The tensors of `file`; when config.json recorded its sha256 and size, only if they match."""
    size = os.fstat(file.fileno()).st_size
    if recorded is not None and size != recorded["bytes"]:
        found = {"bytes": size}
    else:
        try:
            data = file.read()
        except OSError as e:
            raise ExportError(f"cannot read {where} ({e.strerror or e}); {REDO}") from None
        found = recorded if recorded is None else digest(data)
    if found != recorded:
        raise _Torn(
            f"{where} ({found['bytes']} bytes) is not the file {CONFIG_NAME} describes "
            f"({recorded['bytes']} bytes, sha256 {recorded['sha256'][:12]}...): the two files come "
            "from different exports; copy the model folder as a whole, or export it again"
        )
    try:
        return safetensors.torch.load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ExportError(f"{where} is not a readable safetensors file ({e}); {REDO}") from None


def _build_model(config: dict[str, Any], meta: bool) -> torch.nn.Module | None:
    """The model config.json describes, with random weights; `meta`: on the meta device (no
    memory used; None for an architecture that cannot be built there)."""
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            return create_vision_model(**{**config["model"], "pretrained": False})
    except (ValueError, TypeError, KeyError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{CONFIG_NAME}: 'model' cannot be built ({text}); {REDO}") from None
    except Exception:
        if meta:
            return None
        raise


def _read_once(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked config and weights of an export folder, checked against each other. Both
    files are opened first, one right after the other, so an export's swap falls between the
    two opens or not at all; the recorded digest tells which."""
    if not path.exists():
        raise _Torn(f"model folder not found: {path}")
    if not path.is_dir():
        raise ExportError(f"{path} is a file: pass the model folder (with {CONFIG_NAME} in it)")
    config_file, file = path / CONFIG_NAME, path / WEIGHTS_NAME
    with contextlib.ExitStack() as files:
        try:
            config_f = files.enter_context(open(config_file, "rb"))
        except FileNotFoundError:
            message = f"no {CONFIG_NAME} in {path}: is this a folder written by learn.export()?"
            raise _Torn(message) from None
        try:
            weights_f = files.enter_context(open(file, "rb"))
        except FileNotFoundError:
            message = f"no {WEIGHTS_NAME} in {path}: the export is incomplete, re-export it"
            raise _Torn(message) from None
        config = parse_config(config_f, config_file)
        header = _tensor_header(weights_f, file)
        meta = _build_model(config, meta=True)  # no memory: nothing real is built yet
        if meta is not None:
            _check_tensors(file, meta.state_dict(), header)
        return config, _read_weights(weights_f, file, (config.get("files") or {}).get(WEIGHTS_NAME))


def read_export(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`config.json` and the weights of an export folder, each checked, and checked to belong
    together; a folder met half-way through a swap is read again."""
    path = Path(path)
    for attempt in range(_READ_ATTEMPTS):
        before = _identity(path)
        try:
            return _read_once(path)
        except _Torn as e:
            error = e
            changed = _identity(path) != before or swap_in_progress(path)
            if attempt == _READ_ATTEMPTS - 1 or not changed:  # no export was running: it stays
                break
            time.sleep(0.02 * 2**attempt)
    raise ExportError(str(error)) from None


def _identity(path: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """Which files the folder holds now (inode, size, mtime): an export's swap changes it."""
    out = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            st = os.stat(path / name)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def load_learner(path: str | os.PathLike, device: str | torch.device | None = None) -> Learner:
    """An inference `Learner` from an export folder: `predict`, `get_preds(dl=...)`, `export`."""
    config, state = read_export(path)
    model = _build_model(config, meta=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ExportError(
            f"the tensors in {Path(path) / WEIGHTS_NAME} do not match the model described by "
            f"{CONFIG_NAME} ({str(e).splitlines()[0]}): export the model again"
        ) from None
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
    if per_class is not None:  # checked by validate_config: one number in [0, 1] per class
        learn.thresholds = torch.tensor(per_class, dtype=torch.float32)
    learn.config = config
    learn.model.eval()
    return learn
