"""The schema of an export folder's `config.json`, and the one function that checks it.

`validate_config` checks every field's type and range before anything is built from it: a
config that asks for a million outputs, a 20000 px input, a vocab shorter than the outputs or a
string where a list belongs is refused with an `ExportError` naming the field, never a
`TypeError`/`KeyError` or a model that fills the memory. The limits are far above any model
imageblocks trains; `Limits` lists them.
"""

from __future__ import annotations

import array
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from imageblocks_runtime.errors import ImageblocksError
from imageblocks_runtime.onnx_spec import input_spec, is_self_contained, output_spec
from imageblocks_runtime.pairs import check_flip_pairs
from imageblocks_runtime.tasks import Task

CONFIG_NAME, WEIGHTS_NAME, ONNX_NAME = "config.json", "model.safetensors", "model.onnx"
FORMAT = "imageblocks"
FORMAT_VERSION = 1
TASKS = tuple(t.value for t in Task)
# the losses that fit each task (what `loss_for_block` picks, and L1 for points)
TASK_LOSSES = {
    "multilabel": ("BCEWithLogitsLossFlat",),
    "category": ("CrossEntropyLossFlat",),
    "points": ("MSELossFlat", "L1LossFlat"),
    "regression": ("MSELossFlat", "L1LossFlat"),
}
REDO = "re-export the model with learn.export() (or `imageblocks train`)"


class ExportError(ImageblocksError, ValueError):
    """A learner that cannot be exported, or an export folder that cannot be loaded."""


@dataclass(frozen=True)
class Limits:
    """The largest values a config may hold."""

    config_bytes: int = 16 * 2**20
    outputs: int = 100_000  # n_out, and so the vocab's length
    hidden: int = 16_384  # one hidden layer of the head
    hidden_layers: int = 8
    side: int = 4096  # one side of an input image, in pixels
    channels: int = 16  # n_in
    transforms: int = 16  # item_tfms or batch_tfms
    label_chars: int = 1000
    file_bytes: int = 2**40


LIMITS = Limits()
Check = Callable[[Any, str], Any]


def _show(value: Any) -> str:
    """A short description of `value` for an error message (never a huge or deep repr)."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        return "a huge integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Invalid(ImageblocksError):
    """A field that breaks the schema: where it is and what it should be."""

    def __init__(self, field: str, expected: str, value: Any) -> None:
        super().__init__(f"{field} must be {expected}, not {_show(value)}")


def _int(lo: int, hi: int) -> Check:
    def check(v: Any, field: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise _Invalid(field, f"an integer in [{lo}, {hi}]", v)
        return v

    return check


def _num(lo: float, hi: float, lo_open: bool = False) -> Check:
    def check(v: Any, field: str) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or not (lo < v if lo_open else lo <= v) or v > hi:
            raise _Invalid(field, f"a number in {'(' if lo_open else '['}{lo}, {hi}]", v)
        return float(v)

    return check


def _bool(v: Any, field: str) -> bool:
    if not isinstance(v, bool):
        raise _Invalid(field, "true or false", v)
    return v


def _choice(*options: Any) -> Check:
    def check(v: Any, field: str) -> Any:
        if isinstance(v, bool) or not any(type(v) is type(o) and v == o for o in options):
            raise _Invalid(field, f"one of {list(options)}", v)
        return v

    return check


def _optional(inner: Check) -> Check:
    def check(v: Any, field: str) -> Any:
        return None if v is None else inner(v, field)

    return check


def _list(item: Check, min_len: int = 0, max_len: int = 1_000_000, what: str = "") -> Check:
    def check(v: Any, field: str) -> list:
        if not isinstance(v, list) or not min_len <= len(v) <= max_len:
            n = f"{min_len}" if min_len == max_len else f"{min_len} to {max_len}"
            raise _Invalid(field, what or f"a list of {n} values", v)
        return [item(x, f"{field}[{i}]") for i, x in enumerate(v)]

    return check


def _str(max_len: int) -> Check:
    def check(v: Any, field: str) -> str:
        if not isinstance(v, str) or not 0 < len(v) <= max_len:
            raise _Invalid(field, f"a string of 1 to {max_len} characters", v)
        return v

    return check


def _file_name(v: Any, field: str) -> str:
    name = _str(255)(v, field)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise _Invalid(field, "a file name in the model folder (no path)", v)
    return name


def _size(v: Any, field: str) -> Any:
    """An item transform size: N or [height, width], each side in [1, LIMITS.side]."""
    return _pair(v, field) if isinstance(v, list) else _int(1, LIMITS.side)(v, field)


def _pair(v: Any, field: str) -> list[int]:
    """A [height, width] size, each side in [1, LIMITS.side]."""
    return _list(_int(1, LIMITS.side), 2, 2, f"[height, width] up to {LIMITS.side} px")(v, field)


def _seq(v: Any, field: str, max_len: int) -> list:
    """A list of at most `max_len` entries (checked one by one by the caller)."""
    if not isinstance(v, list) or len(v) > max_len:
        raise _Invalid(field, f"a list of at most {max_len} entries", v)
    return v


def _fields(v: Any, field: str, spec: dict[str, Check], required: tuple[str, ...] = ()) -> dict:
    """Check a JSON object against `spec` (field -> check); unknown fields are refused."""
    if not isinstance(v, dict):
        raise _Invalid(field, "an object", v)
    for key in v:
        if key not in spec:
            raise _Invalid(f"{field}.{key}", f"absent (known fields: {sorted(spec)})", v[key])
    for key in required:
        if key not in v:
            raise _Invalid(f"{field}.{key}", "present", None)
    return {k: spec[k](x, f"{field}.{k}") for k, x in v.items()}


_RESAMPLE = _choice(0, 1, 2, 3, 4, 5)  # PIL's NEAREST .. LANCZOS


def _resize_spec(size: Check, **more: Check) -> dict[str, Check]:
    """The fields of a Resize (item or batch): its size check, pad_mode, and its own `more`."""
    return {"size": size, "pad_mode": _choice("zeros", "border", "reflection"), **more}


_ITEM_TFMS: dict[str, dict[str, Check]] = {
    "Resize": _resize_spec(_size, method=_choice("crop", "pad", "squish"), resample=_RESAMPLE),
    "RandomResizedCrop": {
        "size": _size,
        "min_scale": _num(0, 1, lo_open=True),
        "max_scale": _num(0, 1, lo_open=True),
        "ratio": _list(_num(0, 100, lo_open=True), 2, 2, "[min, max]"),
        "resample": _RESAMPLE,
        "val_xtra": _num(0, 1),
    },
    "FlipItem": {"p": _num(0, 1)},
}


def _item_tfm(v: Any, field: str) -> dict:
    name = v.get("name") if isinstance(v, dict) else None
    if not isinstance(name, str) or name not in _ITEM_TFMS:
        raise _Invalid(
            f"{field}.name", f"one of {sorted(_ITEM_TFMS)} (unknown item transform)", name
        )
    spec = {"name": _str(64), **_ITEM_TFMS[name]}
    out = _fields(v, field, spec, ("size",) if "size" in spec else ())
    if name == "RandomResizedCrop":
        if out.get("min_scale", 0.08) > out.get("max_scale", 1.0):
            raise _Invalid(f"{field}.min_scale", "at most max_scale", out.get("min_scale"))
        ratio = out.get("ratio", [0.75, 4 / 3])
        if ratio[0] > ratio[1]:
            raise _Invalid(f"{field}.ratio", "[min, max] with min <= max", ratio)
    return out


def _batch_tfm(v: Any, field: str, n_in: int) -> dict:
    name = v.get("name") if isinstance(v, dict) else None
    stat = _list(_num(-1e6, 1e6), n_in, n_in, f"a list of {n_in} numbers (one per channel)")
    specs: dict[str, dict[str, Check]] = {
        "Resize": _resize_spec(
            _pair, mode=_choice("bilinear", "nearest", "bicubic"), align_corners=_bool
        ),
        "Normalize": {"mean": stat, "std": stat},
    }
    if not isinstance(name, str) or name not in specs:
        raise _Invalid(f"{field}.name", f"one of {sorted(specs)} (unknown batch transform)", name)
    required = ("size",) if name == "Resize" else ("mean", "std")
    out = _fields(v, field, {"name": _str(64), **specs[name]}, required)
    if name == "Normalize" and min(out["std"]) <= 0:
        raise _Invalid(f"{field}.std", "positive numbers", out["std"])
    return out


def _model(v: Any, field: str) -> dict:
    spec: dict[str, Check] = {
        "arch": _str(200),
        "n_out": _int(1, LIMITS.outputs),
        "y_range": _optional(_list(_num(-1e9, 1e9), 2, 2, "[low, high]")),
        "concat_pool": _bool,
        "lin_ftrs": _optional(_list(_int(1, LIMITS.hidden), 0, LIMITS.hidden_layers)),
        "ps": lambda p, f: p if isinstance(p, list) else _num(0, 1)(p, f),  # list: below
        "n_in": _int(1, LIMITS.channels),
        "first_bn": _bool,
        "bn_final": _bool,
    }
    out = _fields(v, field, spec, ("arch", "n_out"))
    y_range = out.get("y_range")
    if y_range is not None and not y_range[0] < y_range[1]:
        raise _Invalid(f"{field}.y_range", "[low, high] with low < high", y_range)
    lin_ftrs = out.get("lin_ftrs")
    n_linear = (len(lin_ftrs) if lin_ftrs is not None else 1) + 1  # the default head: [512]
    if isinstance(out.get("ps"), list):
        ps = _list(_num(0, 1), n_linear, n_linear, f"a number or {n_linear} numbers (one a layer)")
        ps(out["ps"], f"{field}.ps")
    return out


def _files(v: Any, field: str) -> dict:
    if not isinstance(v, dict) or len(v) > 16:
        raise _Invalid(field, "an object of at most 16 files", v)
    digest = {"sha256": _hex64, "bytes": _int(0, LIMITS.file_bytes)}
    return {
        _file_name(k, f"{field} key"): _fields(x, f"{field}.{k}", digest, tuple(digest))
        for k, x in v.items()
    }


def _hex64(v: Any, field: str) -> str:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise _Invalid(field, "a sha256 digest (64 lowercase hex digits)", v)
    return v


def _dim(v: Any, field: str) -> Any:
    """One axis of the graph's input: a size in pixels or channels, or a named dynamic axis."""
    return v if v in ("batch", "height", "width") else _int(1, LIMITS.side)(v, field)


def _onnx(v: Any, field: str, task: str, n_out: int, n_in: int) -> dict:
    """The `onnx` section: a self-contained graph's (`onnx_spec`) checked in full; an older
    export's (float input, raw outputs) only for its file name and opset."""
    if not isinstance(v, dict):
        raise _Invalid(field, "an object", v)
    if not is_self_contained(v):
        if "file" in v:
            _file_name(v["file"], f"{field}.file")
        if "opset" in v:
            _int(1, 1000)(v["opset"], f"{field}.opset")
        return v
    int8 = {"file": _file_name, "calibration_images": _int(1, 10**9)}
    shape = _list(_dim, 4, 4, '["batch", height, width, channels]')
    graph_input = {"name": _str(100), "dtype": _str(16), "layout": _str(16), "shape": shape}
    spec: dict[str, Check] = {
        "file": _file_name,
        "opset": _int(7, 1000),
        "input": lambda x, f: _fields(x, f, graph_input, tuple(graph_input)),
        "outputs": lambda x, f: x,  # compared with the task's below
        "thresholds": _optional(_list(_num(0, 1), n_out, n_out, f"a list of {n_out} numbers")),
        "int8": lambda x, f: _fields(x, f, int8, tuple(int8)),
    }
    out = _fields(v, field, spec, ("file", "opset", "input", "outputs", "thresholds"))
    h, w = out["input"]["shape"][1:3]
    expected = input_spec((h, w) if isinstance(h, int) and isinstance(w, int) else None, n_in)
    if out["input"] != expected:
        raise _Invalid(f"{field}.input", f"{expected} (with H, W or 'height', 'width')", v["input"])
    if out["outputs"] != output_spec(task, n_out):
        raise _Invalid(f"{field}.outputs", f"{output_spec(task, n_out)}", out["outputs"])
    if (task == "multilabel") != (out["thresholds"] is not None):
        what = "a list of the per-class thresholds" if task == "multilabel" else "null"
        raise _Invalid(f"{field}.thresholds", f"{what} for a {task} model", out["thresholds"])
    return out


def _same_thresholds(section: dict, thresholds: Any) -> None:
    """The thresholds a multi-label graph bakes in are the config's (to float32): a hand-edited
    config.json would otherwise decide one way in PyTorch and another in the runtime."""
    baked = section.get("thresholds") if is_self_contained(section) else None
    if baked is None or not isinstance(thresholds, dict):
        return
    ours = thresholds.get("per_class") or [thresholds.get("global")] * len(baked)
    if None in ours or array.array("f", ours) != array.array("f", baked):
        raise _Invalid(
            "onnx.thresholds", "the config's thresholds (re-export to change them)", baked
        )


def _label(v: Any, field: str) -> Any:
    if isinstance(v, str) and len(v) <= LIMITS.label_chars:
        return v
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63:
        return v
    raise _Invalid(field, f"a class name (a string of up to {LIMITS.label_chars} characters)", v)


def _flip_pairs(v: Any, task: str, n_out: int) -> list:
    """The landmark pairs a mirror swaps: [[i, j], ...], indices of the model's n_out / 2 points."""
    if task != "points":
        raise _Invalid("flip_pairs", f"null for a {task} model", v)
    n = n_out // 2
    pair = _list(_int(0, n - 1), 2, 2, f"[i, j], two indices of the {n} points")
    pairs = _list(pair, 0, n, f"a list of at most {n} [i, j] pairs")(v, "flip_pairs")
    try:
        check_flip_pairs(pairs)
    except ValueError as e:
        raise _Invalid("flip_pairs", "pairs of distinct points, each in one pair", v) from e
    return pairs


def _check(config: Any) -> None:
    """Raise `_Invalid` for the first field of `config` that breaks the schema."""
    if not isinstance(config, dict):
        raise _Invalid("the config", "a JSON object", config)
    task = _choice(*TASKS)(config.get("task"), "task")
    model = _model(config.get("model"), "model")
    n_out, n_in = model["n_out"], model.get("n_in", 3)
    _optional(_str(100))(config.get("library_version"), "library_version")
    vocab = config.get("vocab")
    if task in ("multilabel", "category"):
        _list(_label, n_out, n_out, f"a list of n_out = {n_out} class names")(vocab, "vocab")
        if len(set(vocab)) != len(vocab):
            raise _Invalid("vocab", "a list of distinct class names", vocab)
    else:
        if vocab is not None:
            raise _Invalid("vocab", f"null for a {task} model", vocab)
        if task == "points" and n_out % 2:
            raise _Invalid("model.n_out", "even for a points model (x, y per point)", n_out)
    loss = config.get("loss")
    if loss is not None:
        losses = TASK_LOSSES[task]
        spec: dict[str, Check] = {"name": _choice(*losses), "axis": _int(-4, 3)}
        if "BCEWithLogitsLossFlat" in losses:
            spec["thresh"] = _num(0, 1)
        _fields(loss, "loss", spec, ("name",))
    thresholds = config.get("thresholds")
    if thresholds is not None:
        per_class = _list(_num(0, 1), n_out, n_out, f"a list of n_out = {n_out} numbers")
        spec = {"global": _optional(_num(0, 1)), "per_class": _optional(per_class)}
        out = _fields(thresholds, "thresholds", spec)
        if task != "multilabel" and out.get("per_class") is not None:
            raise _Invalid("thresholds.per_class", f"null for a {task} model", out["per_class"])
    if config.get("flip_pairs") is not None:
        _flip_pairs(config["flip_pairs"], task, n_out)
    for i, t in enumerate(_seq(config.get("item_tfms"), "item_tfms", LIMITS.transforms)):
        _item_tfm(t, f"item_tfms[{i}]")
    for i, t in enumerate(_seq(config.get("batch_tfms"), "batch_tfms", LIMITS.transforms)):
        _batch_tfm(t, f"batch_tfms[{i}]", n_in)
    if "files" in config:
        _files(config["files"], "files")
    if "onnx" in config:
        _same_thresholds(_onnx(config["onnx"], "onnx", task, n_out, n_in), thresholds)


def validate_config(config: Any, where: str | Path = "config.json") -> dict[str, Any]:
    """`config` if it is a complete imageblocks model config; otherwise `ExportError` naming
    the first bad field (`where` says which file it came from)."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(
            f"{where} is not an imageblocks model config (missing format: {FORMAT!r})"
        )
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportError(f"{where}: 'format_version' is missing or not a positive integer; {REDO}")
    if version > FORMAT_VERSION:
        writer = config.get("library_version")
        by = f" (written by imageblocks {writer})" if isinstance(writer, str) else ""
        raise ExportError(
            f"{where} has format_version {version!r}{by}, newer than this imageblocks (reads up "
            f"to {FORMAT_VERSION}): upgrade imageblocks (pip install -U imageblocks), or "
            "re-export the model with this version"
        )
    try:
        _check(config)
    except _Invalid as e:
        raise ExportError(f"{where}: {e}; {REDO}") from None
    return config


def parse_config(file: Path | BinaryIO, where: str | Path | None = None) -> dict[str, Any]:
    """Read and validate a `config.json`: its path, or the file opened in binary mode."""
    where = where or file
    try:
        if isinstance(file, Path):
            with open(file, "rb") as f:
                return parse_config(f, where)
        size = os.fstat(file.fileno()).st_size
        if size > LIMITS.config_bytes:
            raise ExportError(
                f"{where} is {size} bytes, more than a model config can be "
                f"({LIMITS.config_bytes}); {REDO}"
            )
        text = file.read()
    except OSError as e:
        raise ExportError(f"cannot read {where} ({e.strerror or e}); {REDO}") from None
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, too deep, huge int
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:120]
        raise ExportError(f"{where} is not valid JSON ({detail}); {REDO}") from None
    return validate_config(config, where)
