"""int8: the self-contained graph quantised by ONNX Runtime's static quantisation.

`quantize_graph(graph, images)` calibrates on uint8 images after the validation item transforms
(the graph's own input: `learn.dls.valid`'s items, or files run through the runtime's
`preprocess.py`) and returns the `model.int8.onnx` bytes. The choices, and why:

- QDQ format (QuantizeLinear/DequantizeLinear around each quantised op), not QOperator: ONNX
  Runtime's recommended format on its CPU provider (it fuses DQ -> Conv -> Q into its int8
  kernels) and a standard graph any provider can read; the same file serves everywhere.
- Only the network is quantised (the nodes under the `/model/` scope of the trace): the cast,
  /255, resize and Normalize in front, and the activation and thresholds behind, stay float:
  quantising the input normalisation or the probabilities costs accuracy and saves nothing.
- Weights per channel (one scale per output channel of each Conv/Gemm): the channels of
  depthwise convolutions (EfficientNet-Lite, MobileNet) have ranges orders of magnitude apart,
  and one scale per tensor rounds the small ones to zero; it costs nothing at inference.
- uint8 activations and int8 weights (U8S8) with MinMax calibration: on CPUs with VNNI (AVX512
  or AVX-VNNI) ONNX Runtime runs U8S8 convolutions in its fastest kernels: a batch of 64 at
  64 px took 38 ms against 64 ms for S8S8 and 65 ms in float on a 2-core Xeon (AMX), with the
  same answers. `reduce_range` (7-bit weights, against the saturation of AVX2's 16-bit sums
  without VNNI) changed more answers (39% of the label sets kept instead of 53%), so it is off.
- The graph quantised has constant "same" padding (`models/same_conv.static_padding`): with
  the padding computed from the input's shape inside the graph, the quantiser rounded those
  size computations too and EfficientNet-Lite0 kept 12% of the label sets. Measure the metric
  change on the validation set before deploying int8 (`benchmarks/runtime.py` does).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from imageblocks_runtime.errors import ImageblocksError
from imageblocks_runtime.preprocess import draft_size, prepare, valid_tfms

__all__ = ["CALIBRATION_IMAGES", "calibration_images", "quantize_graph"]

CALIBRATION_IMAGES = 256  # enough for MinMax ranges; calibration time grows with it
_BATCH = 16


def _batches(images: Iterable[np.ndarray], input_name: str) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of up to `_BATCH` images of one size (a new batch where the size changes)."""
    batch: list[np.ndarray] = []
    for image in images:
        if batch and (len(batch) == _BATCH or image.shape != batch[0].shape):
            yield {input_name: np.stack(batch)}
            batch = []
        batch.append(np.ascontiguousarray(image, dtype=np.uint8))
    if batch:
        yield {input_name: np.stack(batch)}


def calibration_images(
    config: dict, sources: Iterable[object], limit: int = CALIBRATION_IMAGES
) -> Iterator[np.ndarray]:
    """Up to `limit` of `sources` (paths, bytes, PIL images) as the graph takes them: decoded
    and item-transformed by the runtime's `preprocess` with config.json's `item_tfms`; sources
    that cannot be read are skipped."""
    tfms = valid_tfms(config["item_tfms"])
    draft = draft_size(config["item_tfms"], config.get("batch_tfms") or [])
    n = 0
    for source in sources:
        if n >= limit:
            return
        try:
            image, _ = prepare(source, tfms, draft)
        except (ImageblocksError, OSError, ValueError):
            continue  # an unreadable file: calibrate on the others
        n += 1
        yield image


def _network_nodes_only(model: object) -> list[str]:
    """The names of the graph's nodes outside the network (pre- and post-processing)."""
    return [n.name for n in model.graph.node if not n.name.startswith("/model/")]


def quantize_graph(graph: bytes, images: Iterable[np.ndarray]) -> tuple[bytes, int]:
    """The int8 (QDQ) version of a self-contained graph, calibrated on `images` (uint8 HWC
    arrays, as the graph takes them); and how many images calibrated it."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    images = iter(images)
    first = next(images, None)
    if first is None:
        raise ValueError("no calibration images: int8 quantisation needs validation images")
    images = chain([first], images)
    model = onnx.load_from_string(graph)
    input_name = model.graph.input[0].name
    count = 0

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = _batches(images, input_name)

        def get_next(self) -> dict[str, np.ndarray] | None:
            nonlocal count
            feed = next(self.feeds, None)
            count += 0 if feed is None else len(feed[input_name])
            return feed

    root = logging.getLogger()  # where onnxruntime.quantization logs its advice
    quiet = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="imageblocks-int8-") as tmp:
            out = Path(tmp) / "model.int8.onnx"
            quantize_static(
                model,
                out,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=_network_nodes_only(model),
                calibrate_method=CalibrationMethod.MinMax,
            )
            data = out.read_bytes()
    finally:
        root.setLevel(quiet)
    return data, count
