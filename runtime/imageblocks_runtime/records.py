"""One prediction as JSON-able values (`prediction_record`) and as one line of text
(`prediction_line`): the shape `imageblocks predict --json`, the runtime and the service print.

Multi-label: `labels` (the classes decided, in vocab order) and `probabilities` by class; single
label: `label` and `probabilities`; points: `points` in pixels of the original image; regression:
`values`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from imageblocks_runtime.tasks import Task

__all__ = ["prediction_line", "prediction_record"]


def prediction_record(
    task: Task | str,
    vocab: Sequence[Any] | None,
    output: Any,
    decision: Any = None,
) -> dict[str, Any]:
    """The record of one image: `output` is the activated output (probabilities, points in
    pixels (n, 2), or values); `decision` the multi-label mask (C,) or the class index."""
    task = Task(task)
    out = np.asarray(output)
    if task is Task.POINTS:
        return {"points": out.reshape(-1, 2).tolist()}
    if vocab is None:
        return {"values": out.reshape(-1).tolist()}
    names = [str(v) for v in vocab]
    probabilities = dict(zip(names, out.reshape(-1).tolist()))
    if task is Task.MULTILABEL:
        mask = np.asarray(decision, dtype=bool).reshape(-1)
        return {"labels": [n for n, m in zip(names, mask) if m], "probabilities": probabilities}
    return {
        "label": names[int(np.asarray(decision).reshape(-1)[0])],
        "probabilities": probabilities,
    }


def prediction_line(name: str, record: dict[str, Any]) -> str:
    """One line of text for a `prediction_record`: `name: labels with probabilities` (or what
    is most likely when no label passes its threshold), or the points in pixels."""
    if "points" in record:
        return f"{name}: " + "; ".join(f"({x:.1f}, {y:.1f})" for x, y in record["points"]) + " px"
    if "values" in record:
        return f"{name}: " + ", ".join(f"{v:.4g}" for v in record["values"])
    probs = record["probabilities"]
    if "label" in record:
        return f"{name}: {record['label']} {probs[record['label']]:.2f}"
    if not record["labels"]:
        best = max(probs, key=probs.get)
        return f"{name}: no known object (most likely {best} {probs[best]:.2f})"
    ranked = sorted(record["labels"], key=lambda c: -probs[c])
    return f"{name}: " + ", ".join(f"{c} {probs[c]:.2f}" for c in ranked)
