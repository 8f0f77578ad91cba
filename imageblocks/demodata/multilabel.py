"""The multi-label demo dataset: VOC-like pictures of 0 to 4 objects on cluttered backgrounds,
written in fastai's `pascal_2007` layout (train.csv, train/, test.csv, test/).

Hand-written so the book's multi-label chapter runs offline on data with VOC 2007's classes,
label sets, split and image sizes; every image has its own seeded generator.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from imageblocks.demodata.canvas import clutter, finish, make_rng, scene_background
from imageblocks.demodata.output import atomic_dir, run_tasks, save_jpeg
from imageblocks.demodata.shapes import SHAPES, render_object
from imageblocks.demodata.voc2007 import voc_rows, voc_size
from imageblocks.paths import Path, as_path

EMPTY_FRACTION = 0.07  # share of multi-label images drawn with no object at all
MAX_OBJECTS = 4


def _layout(
    rng: np.random.Generator, names: Sequence[str], w: int, h: int
) -> list[tuple[str, int, float, float]]:
    """(class, height px, centre x, centre y) per object: one slot each, left to right, overlaps."""
    k = len(names)
    lo, hi = {1: (0.4, 0.9), 2: (0.3, 0.72)}.get(k, (0.24, 0.55))
    placed = []
    for slot, name in enumerate(rng.permutation(list(names))):
        aspect = SHAPES[name][1]
        height = rng.uniform(lo, hi) * h
        height = min(height, 1.35 * w / k / aspect, 0.95 * h)
        height = max(height, 28.0)
        cx = (slot + 0.5 + rng.uniform(-0.3, 0.3)) * w / k
        half_w = min(height * aspect, w) / 2
        cx = float(np.clip(cx, 0.2 * half_w, w - 0.2 * half_w))  # at least 60% inside the frame
        cy = rng.uniform(0.35, 0.75) * h
        placed.append((str(name), int(height), cx, cy))
    return placed


def render_multilabel_image(
    labels: Sequence[str], seed: int, key: tuple[int, ...], size: tuple[int, int] | None = None
) -> Image.Image:
    """One picture holding one or more of each of `labels` (none: background only)."""
    rng = make_rng(seed, *key)
    w, h = size or voc_size(rng)
    img = scene_background(rng, w, h)
    draw = ImageDraw.Draw(img)
    clutter(draw, rng, w, h, int(rng.integers(3, 12)))
    names = list(labels)
    while 0 < len(names) < MAX_OBJECTS and rng.random() < (0.3 if "person" in names else 0.12):
        names.append("person" if "person" in names else names[int(rng.integers(len(names)))])
    for name, height, cx, cy in _layout(rng, names, w, h):
        obj = render_object(name, height, rng)
        img.paste(obj, (int(cx - obj.width / 2), int(cy - obj.height / 2)), obj)
    if names and rng.random() < 0.25:  # something in front, hiding part of an object
        clutter(draw, rng, w, h, int(rng.integers(1, 3)))
    return finish(img, rng, seed, grain=rng.uniform(1.0, 3.0))


@dataclass(frozen=True)
class _MLItem:
    path: str
    labels: tuple[str, ...]
    seed: int
    key: tuple[int, ...]


def _render_ml_item(item: _MLItem) -> int:
    save_jpeg(render_multilabel_image(item.labels, item.seed, item.key), item.path)
    return 1


def _plan_split(
    rng: np.random.Generator, split: str, ids: np.ndarray, empty_frac: float
) -> list[tuple[str, str, bool]]:
    """(fname, labels, is_valid) per image: real VOC rows sampled, a few emptied."""
    rows = voc_rows(split)
    picks = rng.choice(len(rows), size=len(ids), replace=len(ids) > len(rows))
    plan = []
    for i, pick in zip(ids, picks):
        labels, is_valid = rows[pick]
        labels = " ".join(labels.split()[:MAX_OBJECTS])
        if rng.random() < empty_frac:
            labels = ""
        plan.append((f"{int(i):06d}.jpg", labels, is_valid))
    return plan


def make_demo_multilabel(
    dest: str | os.PathLike,
    n_images: int = 2500,
    seed: int = 0,
    show_progress: bool = False,
    workers: int | None = None,
    empty_frac: float = EMPTY_FRACTION,
) -> Path:
    """Write a pascal_2007-shaped dataset (train.csv, train/, test.csv, test/) to `dest`."""
    rng = make_rng(seed, 0)
    n_test = max(1, round(n_images * 0.1))
    n_total = n_images + n_test
    pool = np.arange(1, max(10000, n_total + 1))  # VOC 2007 ids run from 000001 to 009963
    ids = rng.choice(pool, size=n_total, replace=False)
    splits = {"train": np.sort(ids[:n_images]), "test": np.sort(ids[n_images:])}
    with atomic_dir(dest) as tmp:
        items = []
        for split_no, (split, split_ids) in enumerate(splits.items()):
            os.makedirs(os.path.join(tmp, split))
            plan = _plan_split(rng, split, split_ids, empty_frac)
            _write_csv(os.path.join(tmp, f"{split}.csv"), plan)
            items += [
                _MLItem(os.path.join(tmp, split, f), tuple(lbl.split()), seed, (1, split_no, i))
                for i, (f, lbl, _) in enumerate(plan)
            ]
        run_tasks(_render_ml_item, items, len(items), workers, show_progress, "demo_multilabel")
    return as_path(dest)


def _write_csv(path: str, rows: Sequence[tuple[str, str, bool]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["fname", "labels", "is_valid"])
        writer.writerows(rows)
