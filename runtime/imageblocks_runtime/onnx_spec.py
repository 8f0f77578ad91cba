"""The self-contained ONNX graph's contract: its input, its outputs by task, config.json's `onnx`.

`learn.export()` writes `model.onnx` (imageblocks.learn.onnx_graph); the runtime runs it. The
graph takes `image`: uint8 `(batch, height, width, 3)` RGB, the images after the validation item
transforms (`preprocess.py`), stacked; inside it casts, scales by 1/255, turns NCHW, applies the
validation batch transforms (a batch resize), Normalize, the network and its activation, and for
multi-label the model's per-class thresholds. Its outputs, by task:

- multilabel: `probabilities` float32 (batch, C) (sigmoid), `decisions` bool (batch, C)
  (= probabilities > thresholds);
- category: `probabilities` float32 (batch, C) (softmax), `decisions` int64 (batch,) (argmax);
- points: `points` float32 (batch, n, 2), x then y in [-1, 1] of the item-transformed image;
- regression: `values` float32 (batch, k).

The `onnx` section of config.json says so: `file`, `opset`, `input` (`name`, `dtype`, `layout`,
`shape`: `["batch", H, W, 3]`, or `"height"`/`"width"` where the item transforms fix no size),
`outputs` (name -> `dtype`, `shape`), `thresholds` (multi-label: the baked-in ones, else null)
and, once quantised, `int8` (`file`, `calibration_images`). An export by imageblocks before this
contract has an `onnx` section without `outputs` (float input, raw outputs): not self-contained.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "INPUT_NAME",
    "INT8_NAME",
    "ONNX_NAME",
    "input_spec",
    "is_self_contained",
    "onnx_section",
    "output_spec",
]

ONNX_NAME, INT8_NAME, INPUT_NAME = "model.onnx", "model.int8.onnx", "image"


def output_spec(task: str, n_out: int) -> dict[str, dict[str, Any]]:
    """The graph's outputs for a `task` model with `n_out` raw outputs: name -> dtype, shape."""
    if task == "multilabel":
        return {
            "probabilities": {"dtype": "float32", "shape": ["batch", n_out]},
            "decisions": {"dtype": "bool", "shape": ["batch", n_out]},
        }
    if task == "category":
        return {
            "probabilities": {"dtype": "float32", "shape": ["batch", n_out]},
            "decisions": {"dtype": "int64", "shape": ["batch"]},
        }
    if task == "points":
        return {"points": {"dtype": "float32", "shape": ["batch", n_out // 2, 2]}}
    return {"values": {"dtype": "float32", "shape": ["batch", n_out]}}


def input_spec(size: tuple[int, int] | None, n_in: int = 3) -> dict[str, Any]:
    """The graph's input: uint8 NHWC images of `size` (height, width), or of any size."""
    h, w = (int(size[0]), int(size[1])) if size is not None else ("height", "width")
    return {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "shape": ["batch", h, w, n_in]}


def onnx_section(
    task: str,
    n_out: int,
    size: tuple[int, int] | None,
    opset: int,
    thresholds: list[float] | None = None,
    n_in: int = 3,
    file: str = ONNX_NAME,
) -> dict[str, Any]:
    """config.json's `onnx` section for a self-contained graph (no `int8` yet)."""
    return {
        "file": file,
        "opset": int(opset),
        "input": input_spec(size, n_in),
        "outputs": output_spec(task, n_out),
        "thresholds": [float(t) for t in thresholds] if thresholds is not None else None,
    }


def is_self_contained(section: Any) -> bool:
    """Whether an `onnx` section describes a self-contained graph (uint8 images in, the task's
    outputs out), not the float-input, raw-output graph of an older export."""
    if not isinstance(section, dict) or not isinstance(section.get("input"), dict):
        return False
    return "outputs" in section and section["input"].get("layout") == "NHWC"
