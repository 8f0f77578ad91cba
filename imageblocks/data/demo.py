"""Deterministic demo datasets in the on-disk formats of PASCAL VOC 2007 and BIWI head pose.

`make_demo_multilabel` draws the 20 VOC classes as procedural shapes on cluttered backgrounds,
with the label sets, split and sizes of real VOC 2007 images (fastai's `pascal_2007` layout).
`make_demo_points` draws head-like figures whose image centre is exactly the projection of the
head position in each `frame_XXXXX_pose.txt` through `rgb.cal` (fastai's `biwi_head_pose`
layout). Every image has its own seeded generator, so the output does not depend on how the
work is split between processes.
"""

from __future__ import annotations

import colorsys
import csv
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops, ImageDraw

if TYPE_CHECKING:
    from imageblocks.paths import Path

__all__ = [
    "BIWI_FOCAL",
    "BIWI_PRINCIPAL",
    "VOC_CLASSES",
    "FrameSpec",
    "frame_specs",
    "make_demo_multilabel",
    "make_demo_points",
    "project_head",
    "render_multilabel_image",
    "render_object",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
BIWI_FOCAL = 517.679
BIWI_PRINCIPAL = (320.0, 240.5)
JPEG_QUALITY = 90
EMPTY_FRACTION = 0.07  # share of multi-label images drawn with no object at all
MAX_OBJECTS = 4
PARALLEL_MIN = 200  # below this many images, one process is faster than starting a pool

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# shared helpers


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _colour(rng: np.random.Generator, s: tuple = (0.1, 0.95), v: tuple = (0.15, 0.95)) -> RGB:
    """A colour from one broad palette shared by every class, so colour never names a class."""
    return _hsv(rng.random(), rng.uniform(*s), rng.uniform(*v))


def _shade(c: RGB, f: float) -> RGB:
    return tuple(int(min(255, max(0, x * f))) for x in c)


def _skin(rng: np.random.Generator) -> RGB:
    return _hsv(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))


@contextmanager
def _atomic_dir(dest: str | os.PathLike) -> Iterator[str]:
    """A temporary folder next to `dest` that is renamed to `dest` when the block succeeds."""
    dest = os.fspath(dest)
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    _check_free(dest)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if os.path.isdir(dest) and not os.listdir(dest):
            os.rmdir(dest)
        os.rename(tmp, dest)  # fails if something appeared at `dest` meanwhile: never overwrite
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_free(dest: str) -> None:
    if os.path.exists(dest) and not (os.path.isdir(dest) and not os.listdir(dest)):
        raise FileExistsError(f"{dest} already exists; delete it or choose another destination")


_GRAIN: dict[int, np.ndarray] = {}


def _grain(seed: int) -> np.ndarray:
    """A per-seed tile of sensor-like noise; images take crops of it (cheaper than fresh noise)."""
    if seed not in _GRAIN:
        _GRAIN[seed] = _rng(seed, 99).standard_normal((1024, 1024), dtype=np.float32)
    return _GRAIN[seed]


def _grain_crop(seed: int, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random h x w window of the grain tile (repeated when the image is larger)."""
    tile = _grain(seed)
    if w > tile.shape[1] or h > tile.shape[0]:
        tile = np.tile(tile, (h // tile.shape[0] + 1, w // tile.shape[1] + 1))
    y0 = int(rng.integers(0, tile.shape[0] - h + 1))
    x0 = int(rng.integers(0, tile.shape[1] - w + 1))
    return tile[y0 : y0 + h, x0 : x0 + w]


_GRAIN_IMAGES: dict[int, Image.Image] = {}


def _grain_image(seed: int) -> Image.Image:
    """The grain tile as an 8-bit image centred on 128, for cheap saturating addition."""
    if seed not in _GRAIN_IMAGES:
        tile = np.clip(128 + 1.2 * _grain(seed), 0, 255).astype(np.uint8)
        _GRAIN_IMAGES[seed] = Image.fromarray(tile)
    return _GRAIN_IMAGES[seed]


def _finish(img: Image.Image, rng: np.random.Generator, seed: int, grain: float) -> Image.Image:
    """Add blotchy low-frequency texture and fine grain, then apply a global exposure change."""
    w, h = img.size
    mottle = rng.normal(0, rng.uniform(3, 10), (h // 40 + 2, w // 40 + 2)).astype(np.float32)
    mottle_img = Image.fromarray(mottle).resize((w, h), Image.Resampling.BILINEAR)
    noise = np.asarray(mottle_img) + _grain_crop(seed, rng, w, h) * grain + 128
    noise_img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    img = ImageChops.add(img, Image.merge("RGB", (noise_img,) * 3), offset=-128)
    gain, bias = rng.uniform(0.8, 1.15), rng.uniform(-12, 12)
    lut = np.clip(np.arange(256) * gain + bias, 0, 255).astype(np.uint8).tolist()
    return img.point(lut * 3)


def _save_jpeg(img: Image.Image, path: str) -> None:
    img.save(path, "JPEG", quality=JPEG_QUALITY)


def _run_tasks(
    fn: Callable, tasks: Sequence, n_items: int, workers: int | None, show: bool, label: str
) -> None:
    """Run `fn(task)` for all tasks (2 processes for big jobs); each returns its item count."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n_items >= PARALLEL_MIN else 1
    with _progress(label, n_items, show) as advance:
        if workers <= 1:
            for task in tasks:
                advance(fn(task))
            return
        import multiprocessing

        # fork where it exists: spawn and forkserver re-run an unguarded user script in each worker
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for n in pool.imap_unordered(fn, tasks):
                advance(n)


@contextmanager
def _progress(label: str, total: int, show: bool) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as p:
        task = p.add_task(label, total=total)
        yield lambda n: p.advance(task, n)


# --------------------------------------------------------------------------------------------
# drawing objects in a unit box


class _Pen:
    """Draws in an object's unit box (x right, y down, [0, 1]^2) onto a 2x supersampled canvas."""

    SS = 2

    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.pad = max(2, int(0.05 * max(w, h)))
        size = ((w + 2 * self.pad) * self.SS, (h + 2 * self.pad) * self.SS)
        self.img = Image.new("RGBA", size, (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.img)

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return ((self.pad + x * self.w) * self.SS, (self.pad + y * self.h) * self.SS)

    def poly(self, pts: Sequence[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon([self.xy(x, y) for x, y in pts], fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB, r: float = 0) -> None:
        (a, b), (c, d) = self.xy(x0, y0), self.xy(x1, y1)
        radius = int(r * self.h * self.SS)
        self.draw.rounded_rectangle((a, b, c, d), radius=radius, fill=fill)

    def oval(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        (a, b), (c, d) = self.xy(x0, y0), self.xy(x1, y1)
        self.draw.ellipse((min(a, c), min(b, d), max(a, c), max(b, d)), fill=fill)

    def circle(self, cx: float, cy: float, r: float, fill: RGB, ring: float = 0) -> None:
        """A circle of radius `r` box heights (round whatever the aspect); `ring`: tyre width."""
        x, y = self.xy(cx, cy)
        rr = r * self.h * self.SS
        width = int(ring * self.h * self.SS) if ring else 0
        box = (x - rr, y - rr, x + rr, y + rr)
        if width:
            self.draw.ellipse(box, outline=fill, width=max(1, width))
        else:
            self.draw.ellipse(box, fill=fill)

    def line(self, pts: Sequence[tuple[float, float]], fill: RGB, width: float) -> None:
        """A polyline `width` box heights thick, with round joints."""
        px = int(max(1, width * self.h * self.SS))
        self.draw.line([self.xy(x, y) for x, y in pts], fill=fill, width=px, joint="curve")
        for x, y in (pts[0], pts[-1]):
            cx, cy = self.xy(x, y)
            self.draw.ellipse((cx - px / 2, cy - px / 2, cx + px / 2, cy + px / 2), fill=fill)

    def image(self) -> Image.Image:
        return self.img.reduce(self.SS)


@dataclass
class _Paint:
    """The colours of one object: all drawn from the same palette whatever the class."""

    main: RGB
    second: RGB
    dark: RGB
    light: RGB
    skin: RGB
    rng: np.random.Generator

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Paint:
        return cls(
            main=_colour(rng),
            second=_colour(rng),
            dark=_colour(rng, v=(0.05, 0.3)),
            light=_colour(rng, s=(0.0, 0.35), v=(0.7, 1.0)),
            skin=_skin(rng),
            rng=rng,
        )


def _u(c: _Paint, lo: float, hi: float) -> float:
    return float(c.rng.uniform(lo, hi))


def _aeroplane(p: _Pen, c: _Paint) -> None:
    wing = _shade(c.main, 0.75)
    p.poly([(0.45, 0.48), (0.58, 0.48), (0.66, 0.12), (0.6, 0.12)], wing)  # far wing
    p.poly([(0.02, 0.5), (0.0, 0.12), (0.1, 0.12), (0.24, 0.46)], c.second)  # tail fin
    p.oval(0.0, 0.4, 0.97, 0.6, c.main)
    p.poly([(0.88, 0.42), (1.0, 0.5), (0.88, 0.58)], c.main)
    p.poly([(0.4, 0.53), (0.6, 0.53), (0.5, 0.95), (0.4, 0.95)], wing)  # near wing
    p.poly([(0.02, 0.5), (0.14, 0.5), (0.06, 0.66), (0.0, 0.66)], wing)
    for i in range(7):
        p.circle(0.3 + 0.075 * i, 0.47, 0.016, c.light)
    if c.rng.random() < 0.5:
        p.oval(0.42, 0.7, 0.54, 0.8, c.dark)  # engine


def _bicycle(p: _Pen, c: _Paint) -> None:
    tyre = 0.045
    p.circle(0.2, 0.7, 0.28, c.dark, ring=tyre)
    p.circle(0.8, 0.7, 0.28, c.dark, ring=tyre)
    rear, pedal, seat, head, front = (0.2, 0.7), (0.47, 0.72), (0.4, 0.3), (0.72, 0.28), (0.8, 0.7)
    for a, b in ((rear, pedal), (rear, seat), (seat, pedal), (seat, head), (head, pedal)):
        p.line([a, b], c.main, 0.035)
    p.line([front, head, (0.7, 0.12)], c.main, 0.035)
    p.line([(0.62, 0.12), (0.8, 0.1)], c.dark, 0.035)
    p.line([(0.33, 0.24), (0.47, 0.24)], c.second, 0.05)
    p.circle(0.47, 0.72, 0.05, c.dark)


def _bird(p: _Pen, c: _Paint) -> None:
    if c.rng.random() < 0.35:  # in flight
        p.poly([(0.3, 0.5), (0.5, 0.0), (0.6, 0.48)], _shade(c.main, 0.7))
        p.oval(0.15, 0.4, 0.8, 0.7, c.main)
        p.poly([(0.35, 0.55), (0.55, 1.0), (0.62, 0.56)], _shade(c.main, 0.85))
    else:
        p.line([(0.45, 0.7), (0.42, 1.0)], c.dark, 0.03)
        p.line([(0.55, 0.7), (0.56, 1.0)], c.dark, 0.03)
        p.oval(0.18, 0.32, 0.76, 0.78, c.main)
        p.oval(0.3, 0.42, 0.66, 0.68, _shade(c.main, 0.75))  # folded wing
    p.poly([(0.24, 0.5), (0.0, 0.38), (0.0, 0.64)], _shade(c.main, 0.8))
    p.circle(0.8, 0.38, 0.17, c.second)
    p.poly([(0.9, 0.32), (1.0, 0.4), (0.9, 0.45)], c.light)
    p.circle(0.83, 0.34, 0.03, c.dark)


def _boat(p: _Pen, c: _Paint) -> None:
    if c.rng.random() < 0.6:  # sailing boat
        p.line([(0.5, 0.02), (0.5, 0.64)], c.dark, 0.025)
        p.poly([(0.53, 0.05), (0.53, 0.6), (0.93, 0.6)], c.light)
        p.poly([(0.47, 0.12), (0.47, 0.6), (0.14, 0.6)], c.second)
    else:  # motor boat with a cabin
        p.rect(0.3, 0.38, 0.72, 0.64, c.second, r=0.03)
        p.rect(0.36, 0.43, 0.66, 0.52, c.light)
    p.poly([(0.0, 0.62), (1.0, 0.62), (0.86, 0.86), (0.12, 0.86)], c.main)
    p.rect(0.05, 0.62, 0.96, 0.67, _shade(c.main, 0.6))


def _bottle(p: _Pen, c: _Paint) -> None:
    p.rect(0.08, 0.35, 0.92, 1.0, c.main, r=0.03)
    p.poly([(0.08, 0.4), (0.36, 0.18), (0.64, 0.18), (0.92, 0.4)], c.main)
    p.rect(0.36, 0.04, 0.64, 0.22, c.main)
    p.rect(0.32, 0.0, 0.68, 0.07, c.second)
    p.rect(0.08, 0.55, 0.92, 0.8, c.light)
    p.rect(0.2, 0.4, 0.3, 0.95, _shade(c.main, 1.35))  # highlight


def _bus(p: _Pen, c: _Paint) -> None:
    p.rect(0.0, 0.05, 1.0, 0.85, c.main, r=0.08)
    n = int(c.rng.integers(5, 8))
    for i in range(n):
        x0 = 0.05 + i * 0.9 / n
        p.rect(x0, 0.15, x0 + 0.9 / n - 0.02, 0.45, c.light, r=0.02)
    p.rect(0.0, 0.55, 1.0, 0.62, c.second)
    p.rect(0.86, 0.15, 0.97, 0.8, _shade(c.light, 0.8))  # door
    for x in (0.2, 0.78):
        p.circle(x, 0.85, 0.15, c.dark)
        p.circle(x, 0.85, 0.06, c.light)


def _car(p: _Pen, c: _Paint) -> None:
    p.poly([(0.2, 0.45), (0.33, 0.12), (0.68, 0.12), (0.84, 0.45)], c.main)
    p.rect(0.0, 0.42, 1.0, 0.8, c.main, r=0.12)
    p.poly([(0.27, 0.43), (0.36, 0.19), (0.49, 0.19), (0.49, 0.43)], c.light)
    p.poly([(0.53, 0.43), (0.53, 0.19), (0.66, 0.19), (0.77, 0.43)], c.light)
    p.rect(0.93, 0.5, 1.0, 0.58, c.second)
    for x in (0.22, 0.78):
        p.circle(x, 0.8, 0.2, c.dark)
        p.circle(x, 0.8, 0.08, c.light)


def _cat(p: _Pen, c: _Paint) -> None:
    fur = c.main
    if c.rng.random() < 0.5:  # sitting
        p.line([(0.7, 0.92), (0.95, 0.75), (0.88, 0.45)], fur, 0.06)
        p.oval(0.15, 0.38, 0.75, 1.0, fur)
        hx, hy = 0.45, 0.3
    else:  # walking
        p.line([(0.2, 0.45), (0.06, 0.3), (0.1, 0.05)], fur, 0.06)
        for x in (0.25, 0.35, 0.62, 0.72):
            p.line([(x, 0.6), (x, 0.98)], fur, 0.07)
        p.oval(0.15, 0.35, 0.8, 0.72, fur)
        hx, hy = 0.82, 0.33
    p.poly([(hx - 0.16, hy - 0.05), (hx - 0.13, hy - 0.3), (hx - 0.02, hy - 0.12)], fur)
    p.poly([(hx + 0.16, hy - 0.05), (hx + 0.13, hy - 0.3), (hx + 0.02, hy - 0.12)], fur)
    p.circle(hx, hy, 0.18, fur)
    for dx in (-0.06, 0.06):
        p.circle(hx + dx, hy - 0.03, 0.035, c.second)
        p.circle(hx + dx, hy - 0.03, 0.015, c.dark)
    for dy in (0.03, 0.07):
        p.line([(hx - 0.18, hy + dy), (hx + 0.18, hy + dy)], c.light, 0.008)


def _chair(p: _Pen, c: _Paint) -> None:
    wood = c.main
    for x0, x1 in ((0.12, 0.1), (0.88, 0.92), (0.25, 0.27), (0.75, 0.73)):
        p.line([(x0, 0.6), (x1, 1.0)], wood, 0.035)
    p.line([(0.12, 0.62), (0.12, 0.0)], wood, 0.04)
    p.line([(0.82, 0.55), (0.82, 0.0)], wood, 0.04)
    if c.rng.random() < 0.5:
        p.rect(0.12, 0.02, 0.82, 0.3, c.second, r=0.03)  # upholstered back
    else:
        for y in (0.05, 0.17, 0.29):
            p.line([(0.12, y), (0.82, y)], wood, 0.03)
    p.poly([(0.02, 0.6), (0.18, 0.5), (0.98, 0.5), (0.88, 0.64)], c.second)


def _cow(p: _Pen, c: _Paint) -> None:
    for x in (0.22, 0.32, 0.66, 0.74):
        p.line([(x, 0.55), (x, 0.97)], c.main, 0.08)
        p.rect(x - 0.03, 0.93, x + 0.03, 1.0, c.dark)
    p.line([(0.14, 0.32), (0.1, 0.72)], c.main, 0.025)
    p.rect(0.14, 0.22, 0.82, 0.68, c.main, r=0.12)
    for _ in range(int(c.rng.integers(2, 5))):
        x, y = _u(c, 0.22, 0.7), _u(c, 0.3, 0.55)
        p.oval(x - 0.08, y - 0.07, x + 0.08, y + 0.07, c.second)
    p.oval(0.46, 0.6, 0.6, 0.72, c.light)  # udder
    p.poly([(0.78, 0.2), (0.98, 0.26), (1.0, 0.5), (0.86, 0.54)], c.main)
    p.oval(0.88, 0.4, 1.0, 0.55, c.light)
    p.line([(0.82, 0.22), (0.78, 0.08)], c.light, 0.03)
    p.line([(0.92, 0.24), (0.96, 0.1)], c.light, 0.03)
    p.circle(0.9, 0.3, 0.025, c.dark)


def _diningtable(p: _Pen, c: _Paint) -> None:
    for x0, x1 in ((0.06, 0.06), (0.94, 0.94), (0.18, 0.2), (0.82, 0.8)):
        p.line([(x0, 0.3), (x1, 0.97 if x0 in (0.06, 0.94) else 0.85)], c.main, 0.045)
    p.poly([(0.0, 0.3), (0.14, 0.08), (0.86, 0.08), (1.0, 0.3)], c.second)
    p.rect(0.0, 0.3, 1.0, 0.38, _shade(c.second, 0.7))
    for _ in range(int(c.rng.integers(0, 4))):
        x = _u(c, 0.2, 0.8)
        p.oval(x - 0.08, 0.14, x + 0.08, 0.22, c.light)


def _dog(p: _Pen, c: _Paint) -> None:
    fur = c.main
    p.line([(0.22, 0.4), (0.08, 0.12)], fur, 0.06)
    for x in (0.26, 0.36, 0.64, 0.72):
        p.line([(x, 0.55), (x + _u(c, -0.04, 0.04), 1.0)], fur, 0.08)
    p.oval(0.18, 0.3, 0.78, 0.66, fur)
    p.line([(0.7, 0.45), (0.8, 0.25)], fur, 0.16)
    p.circle(0.82, 0.22, 0.16, fur)
    p.rect(0.84, 0.22, 1.0, 0.36, fur, r=0.05)  # snout
    p.circle(0.98, 0.25, 0.035, c.dark)
    p.oval(0.68, 0.12, 0.78, 0.44, c.second)  # floppy ear
    p.circle(0.86, 0.17, 0.025, c.dark)


def _horse(p: _Pen, c: _Paint) -> None:
    coat = c.main
    p.line([(0.2, 0.35), (0.1, 0.55), (0.08, 0.75)], c.second, 0.07)  # tail
    for x in (0.24, 0.33, 0.66, 0.74):
        p.line([(x, 0.5), (x + _u(c, -0.05, 0.05), 0.96)], coat, 0.05)
        p.rect(x - 0.025, 0.94, x + 0.035, 1.0, c.dark)
    p.oval(0.18, 0.28, 0.8, 0.6, coat)
    p.poly([(0.66, 0.34), (0.8, 0.05), (0.9, 0.08), (0.8, 0.45)], coat)  # neck
    p.poly([(0.82, 0.0), (0.9, 0.0), (1.0, 0.24), (0.93, 0.28)], coat)  # head
    p.line([(0.66, 0.3), (0.8, 0.02)], c.second, 0.04)  # mane
    p.circle(0.89, 0.08, 0.02, c.dark)


def _motorbike(p: _Pen, c: _Paint) -> None:
    for x in (0.2, 0.82):
        p.circle(x, 0.72, 0.26, c.dark, ring=0.1)
        p.circle(x, 0.72, 0.06, c.light)
    p.line([(0.82, 0.72), (0.72, 0.2)], c.light, 0.05)  # fork
    p.line([(0.64, 0.15), (0.78, 0.18)], c.dark, 0.05)
    p.poly([(0.3, 0.48), (0.45, 0.3), (0.7, 0.3), (0.75, 0.5), (0.55, 0.72), (0.38, 0.72)], c.main)
    p.rect(0.38, 0.52, 0.58, 0.74, c.dark, r=0.04)  # engine
    p.line([(0.22, 0.62), (0.5, 0.78)], c.light, 0.04)  # exhaust
    p.rect(0.12, 0.32, 0.48, 0.4, c.second, r=0.04)  # seat


def _person(p: _Pen, c: _Paint) -> None:
    shirt, trousers = c.main, c.second
    legs_apart = _u(c, 0.0, 0.18)
    p.line([(0.4, 0.56), (0.4 - legs_apart, 0.98)], trousers, 0.075)
    p.line([(0.6, 0.56), (0.6 + legs_apart, 0.98)], trousers, 0.075)
    p.rect(0.25, 0.19, 0.75, 0.6, shirt, r=0.05)
    for side in (-1, 1):
        hand_y = _u(c, -0.05, 0.6)
        elbow = (0.5 + side * 0.36, 0.42 if hand_y > 0.3 else 0.28)
        hand = (0.5 + side * _u(c, 0.3, 0.48), hand_y)
        p.line([(0.5 + side * 0.23, 0.23), elbow, hand], shirt, 0.06)
        p.circle(hand[0], hand[1], 0.03, c.skin)
    p.rect(0.45, 0.15, 0.55, 0.21, c.skin)
    p.circle(0.5, 0.1, 0.085, c.skin)
    p.oval(0.38, 0.0, 0.62, 0.08, c.dark)  # hair


def _pottedplant(p: _Pen, c: _Paint) -> None:
    hue = _u(c, 0.15, 0.45) if c.rng.random() < 0.7 else c.rng.random()  # mostly greens
    leaf = _hsv(hue, _u(c, 0.3, 0.9), _u(c, 0.2, 0.7))
    for _ in range(int(c.rng.integers(6, 11))):
        a = _u(c, -2.6, -0.5)
        x, y = 0.5 + 0.42 * math.cos(a), 0.6 + 0.55 * math.sin(a)
        p.line([(0.5, 0.62), (x, y)], _shade(leaf, _u(c, 0.7, 1.2)), 0.06)
        p.oval(x - 0.1, y - 0.05, x + 0.1, y + 0.05, leaf)
    p.poly([(0.22, 0.62), (0.78, 0.62), (0.7, 1.0), (0.3, 1.0)], c.main)
    p.rect(0.18, 0.6, 0.82, 0.68, _shade(c.main, 0.8))


def _sheep(p: _Pen, c: _Paint) -> None:
    wool = _colour(c.rng, s=(0.0, 0.25), v=(0.45, 1.0))
    for x in (0.28, 0.36, 0.64, 0.7):
        p.line([(x, 0.6), (x, 1.0)], c.dark, 0.045)
    for _ in range(12):
        x, y = _u(c, 0.22, 0.72), _u(c, 0.3, 0.6)
        p.circle(x, y, _u(c, 0.1, 0.16), _shade(wool, _u(c, 0.85, 1.1)))
    p.oval(0.76, 0.22, 0.98, 0.5, c.dark)
    p.oval(0.72, 0.24, 0.82, 0.32, c.dark)  # ear
    p.circle(0.88, 0.32, 0.02, c.light)


def _sofa(p: _Pen, c: _Paint) -> None:
    cloth = c.main
    for x in (0.06, 0.94):
        p.rect(x - 0.02, 0.8, x + 0.02, 0.95, c.dark)
    p.rect(0.06, 0.1, 0.94, 0.6, _shade(cloth, 0.85), r=0.08)
    p.rect(0.04, 0.5, 0.96, 0.82, cloth, r=0.05)
    p.rect(0.0, 0.35, 0.13, 0.84, _shade(cloth, 0.9), r=0.05)
    p.rect(0.87, 0.35, 1.0, 0.84, _shade(cloth, 0.9), r=0.05)
    n = int(c.rng.integers(2, 4))
    for i in range(1, n):
        x = 0.13 + i * 0.74 / n
        p.line([(x, 0.15), (x, 0.8)], _shade(cloth, 0.65), 0.015)
    if c.rng.random() < 0.5:
        p.rect(0.18, 0.32, 0.36, 0.55, c.second, r=0.04)  # cushion


def _train(p: _Pen, c: _Paint) -> None:
    p.line([(0.0, 0.97), (1.0, 0.97)], c.dark, 0.03)
    n_cars = int(c.rng.integers(1, 3))
    length = 1.0 / (n_cars + 1)
    p.poly([(0.0, 0.85), (0.0, 0.35), (0.08, 0.12), (length, 0.12), (length, 0.85)], c.main)
    p.poly([(0.02, 0.35), (0.08, 0.18), (0.16, 0.18), (0.16, 0.4)], c.light)
    for i in range(1, n_cars + 1):
        x0 = i * length + 0.01
        p.rect(x0, 0.12, x0 + length - 0.01, 0.85, c.main, r=0.03)
        for k in range(3):
            w = (length - 0.05) / 3
            p.rect(x0 + 0.02 + k * w, 0.22, x0 + k * w + w, 0.45, c.light)
    p.rect(0.0, 0.6, 1.0, 0.66, c.second)
    for i in range(2 * (n_cars + 1)):
        p.circle((i + 0.5) * length / 2, 0.88, 0.08, c.dark)


def _tvmonitor(p: _Pen, c: _Paint) -> None:
    p.rect(0.42, 0.78, 0.58, 0.92, c.dark)
    p.rect(0.25, 0.9, 0.75, 0.98, c.dark, r=0.02)
    p.rect(0.0, 0.0, 1.0, 0.8, c.main, r=0.02)
    p.rect(0.06, 0.06, 0.94, 0.74, c.second)
    for _ in range(int(c.rng.integers(0, 4))):  # something on the screen
        x, y = _u(c, 0.1, 0.7), _u(c, 0.1, 0.5)
        p.rect(x, y, x + _u(c, 0.1, 0.24), y + _u(c, 0.08, 0.2), _colour(c.rng))


# class name -> (drawer, box aspect w/h, max in-plane rotation in degrees)
_SHAPES: dict[str, tuple[Callable[[_Pen, _Paint], None], float, float]] = {
    "aeroplane": (_aeroplane, 1.7, 25),
    "bicycle": (_bicycle, 1.6, 8),
    "bird": (_bird, 1.3, 25),
    "boat": (_boat, 1.1, 10),
    "bottle": (_bottle, 0.36, 12),
    "bus": (_bus, 2.2, 5),
    "car": (_car, 2.0, 6),
    "cat": (_cat, 1.2, 12),
    "chair": (_chair, 0.65, 8),
    "cow": (_cow, 1.5, 8),
    "diningtable": (_diningtable, 1.6, 6),
    "dog": (_dog, 1.4, 10),
    "horse": (_horse, 1.2, 8),
    "motorbike": (_motorbike, 1.5, 10),
    "person": (_person, 0.42, 10),
    "pottedplant": (_pottedplant, 0.75, 8),
    "sheep": (_sheep, 1.4, 8),
    "sofa": (_sofa, 2.0, 5),
    "train": (_train, 3.0, 6),
    "tvmonitor": (_tvmonitor, 1.2, 8),
}


def render_object(name: str, height: int, rng: np.random.Generator) -> Image.Image:
    """One object of class `name`, about `height` pixels high, as an RGBA image."""
    draw, aspect, max_angle = _SHAPES[name]
    aspect *= rng.uniform(0.85, 1.18)
    pen = _Pen(max(8, int(height * aspect)), max(8, height))
    draw(pen, _Paint.sample(rng))
    img = pen.image()
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = rng.uniform(-max_angle, max_angle)
    # premultiplied alpha, so resampling does not bleed the transparent black into the edges
    img = img.convert("RGBa").rotate(angle, Image.Resampling.BILINEAR, expand=True)
    return img.convert("RGBA")


# --------------------------------------------------------------------------------------------
# multi-label images


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, n: int) -> None:
    """Blobs, strokes, scribbles and dot fields: texture that is no class's shape."""
    for _ in range(n):
        kind = rng.integers(0, 4)
        col = _colour(rng, s=(0.0, 0.6))
        if kind == 0:
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.2) * w
            e = rng.uniform(0.4, 1.0)
            draw.ellipse((x - r, y - r * e, x + r, y + r * e), fill=col)
        elif kind == 1:
            pts = [(rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h) for _ in range(2)]
            draw.line(pts, fill=col, width=int(rng.integers(1, 7)))
        elif kind == 2:
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            pts = [(x, y)]
            for _ in range(int(rng.integers(3, 7))):
                x, y = x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h)
                pts.append((x, y))
            draw.line(pts, fill=col, width=int(rng.integers(1, 5)), joint="curve")
        else:
            cx, cy, spread = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.25) * w
            for x, y in rng.normal(0, spread, (int(rng.integers(10, 40)), 2)):
                r = rng.uniform(1, 4)
                draw.ellipse((cx + x - r, cy + y - r, cx + x + r, cy + y + r), fill=col)


def _scene_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A gradient with a blurry horizon and coarse blotches."""
    gh, gw = 6, 8
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:gh, 0:gw]
    t = (np.cos(theta) * xx / (gw - 1) + np.sin(theta) * yy / (gh - 1) + 1) / 2
    grid = a * (1 - t[..., None]) + b * t[..., None] + rng.normal(0, 18, (gh, gw, 3))
    if rng.random() < 0.6:  # ground below a horizon
        k = int(rng.integers(2, gh - 1))
        grid[k:] = np.array(_colour(rng)) + rng.normal(0, 12, (gh - k, gw, 3))
    small = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8))
    return small.resize((w, h), Image.Resampling.BICUBIC)


def _voc_size(rng: np.random.Generator) -> tuple[int, int]:
    """A (width, height) drawn like VOC 2007's: mostly 500 x 333..375, some portrait, a few odd."""
    r = rng.random()
    short = int(rng.choice([375, 333, int(rng.integers(334, 375))], p=[0.6, 0.2, 0.2]))
    if r < 0.7:
        return 500, short
    if r < 0.92:
        return short, 500
    return int(rng.integers(300, 501)), int(rng.integers(220, 501))


def _layout(
    rng: np.random.Generator, names: Sequence[str], w: int, h: int
) -> list[tuple[str, int, float, float]]:
    """(class, height px, centre x, centre y) per object: one slot each, left to right, overlaps."""
    k = len(names)
    lo, hi = {1: (0.4, 0.9), 2: (0.3, 0.72)}.get(k, (0.24, 0.55))
    placed = []
    for slot, name in enumerate(rng.permutation(list(names))):
        aspect = _SHAPES[name][1]
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
    rng = _rng(seed, *key)
    w, h = size or _voc_size(rng)
    img = _scene_background(rng, w, h)
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, w, h, int(rng.integers(3, 12)))
    names = list(labels)
    while 0 < len(names) < MAX_OBJECTS and rng.random() < (0.3 if "person" in names else 0.12):
        names.append("person" if "person" in names else names[int(rng.integers(len(names)))])
    for name, height, cx, cy in _layout(rng, names, w, h):
        obj = render_object(name, height, rng)
        img.paste(obj, (int(cx - obj.width / 2), int(cy - obj.height / 2)), obj)
    if names and rng.random() < 0.25:  # something in front, hiding part of an object
        _clutter(draw, rng, w, h, int(rng.integers(1, 3)))
    return _finish(img, rng, seed, grain=rng.uniform(1.0, 3.0))


@dataclass(frozen=True)
class _MLItem:
    path: str
    labels: tuple[str, ...]
    seed: int
    key: tuple[int, ...]


def _render_ml_item(item: _MLItem) -> int:
    _save_jpeg(render_multilabel_image(item.labels, item.seed, item.key), item.path)
    return 1


def _voc_rows(split: str) -> list[tuple[str, bool]]:
    """(labels, is_valid) of every real VOC 2007 image in `split` ('train' or 'test')."""
    rows: list[tuple[str, bool]] = []
    for entry in " ".join(_VOC2007_LABEL_SETS.split()).split(";"):
        labels, counts = entry.strip().rsplit(":", 1)
        n_train, n_valid, n_test = (int(n) for n in counts.split(","))
        if split == "train":
            rows += [(labels, False)] * n_train + [(labels, True)] * n_valid
        else:
            rows += [(labels, False)] * n_test
    return rows


def _plan_split(
    rng: np.random.Generator, split: str, ids: np.ndarray, empty_frac: float
) -> list[tuple[str, str, bool]]:
    """(fname, labels, is_valid) per image: real VOC rows sampled, a few emptied."""
    rows = _voc_rows(split)
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
    from imageblocks.paths import as_path  # here, so pool workers need not import torch

    rng = _rng(seed, 0)
    n_test = max(1, round(n_images * 0.1))
    n_total = n_images + n_test
    pool = np.arange(1, max(10000, n_total + 1))  # VOC 2007 ids run from 000001 to 009963
    ids = rng.choice(pool, size=n_total, replace=False)
    splits = {"train": np.sort(ids[:n_images]), "test": np.sort(ids[n_images:])}
    with _atomic_dir(dest) as tmp:
        items = []
        for split_no, (split, split_ids) in enumerate(splits.items()):
            os.makedirs(os.path.join(tmp, split))
            plan = _plan_split(rng, split, split_ids, empty_frac)
            _write_csv(os.path.join(tmp, f"{split}.csv"), plan)
            items += [
                _MLItem(os.path.join(tmp, split, f), tuple(lbl.split()), seed, (1, split_no, i))
                for i, (f, lbl, _) in enumerate(plan)
            ]
        _run_tasks(_render_ml_item, items, len(items), workers, show_progress, "demo_multilabel")
    return as_path(dest)


def _write_csv(path: str, rows: Sequence[tuple[str, str, bool]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["fname", "labels", "is_valid"])
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# head-pose frames


@dataclass(frozen=True)
class FrameSpec:
    """One frame: its number, head centre (mm, as written), rotation angles (degrees), pixels."""

    frame: int
    x: float
    y: float
    z: float
    yaw: float
    pitch: float
    roll: float
    centre: tuple[float, float]


def project_head(x: float, y: float, z: float) -> tuple[float, float]:
    """The image point of a head centre at (x, y, z) mm, as the book's `get_ctr` computes it."""
    return x * BIWI_FOCAL / z + BIWI_PRINCIPAL[0], y * BIWI_FOCAL / z + BIWI_PRINCIPAL[1]


def _smooth_path(rng: np.random.Generator, t: np.ndarray, mid: float, amp: float) -> np.ndarray:
    """A slow wandering between mid-amp and mid+amp: two sinusoids of random periods and phases."""
    p1, p2 = rng.uniform(40, 120), rng.uniform(15, 40)
    f1, f2 = rng.uniform(0, 2 * np.pi, 2)
    return mid + amp * (
        0.7 * np.sin(2 * np.pi * t / p1 + f1) + 0.3 * np.sin(2 * np.pi * t / p2 + f2)
    )


def frame_specs(seed: int, person: int, n_frames: int) -> list[FrameSpec]:
    """The frames of one person: numbers from about 3 with gaps, a smooth head trajectory."""
    rng = _rng(seed, 2, person)
    steps = np.where(rng.random(n_frames) < 0.08, rng.integers(2, 5, n_frames), 1)
    numbers = int(rng.integers(3, 6)) + np.concatenate([[0], np.cumsum(steps[1:])])
    t = numbers.astype(float)
    xs = _smooth_path(rng, t, rng.uniform(-50, 50), 95)
    ys = _smooth_path(rng, t, rng.uniform(-40, 40), 75)
    zs = _smooth_path(rng, t, rng.uniform(820, 980), 110)
    yaws = _smooth_path(rng, t, rng.uniform(-10, 10), 50)
    pitches = _smooth_path(rng, t, rng.uniform(-8, 8), 25)
    rolls = _smooth_path(rng, t, 0, 12)
    specs = []
    for i, n in enumerate(numbers):
        # round as the pose file will, so the drawn centre is the one get_ctr reads back
        x, y, z = (float(f"{v:.6g}") for v in (xs[i], ys[i], zs[i]))
        centre = project_head(x, y, z)
        specs.append(FrameSpec(int(n), x, y, z, yaws[i], pitches[i], rolls[i], centre))
    return specs


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _row(values: Sequence[float]) -> str:
    return "".join(f"{v:.6g} " for v in values) + "\n"  # BIWI lines end in a space


def _pose_text(spec: FrameSpec) -> str:
    rot = _rotation(spec.yaw, spec.pitch, spec.roll)
    return "".join(_row(r) for r in rot) + "\n" + _row((spec.x, spec.y, spec.z))


def _cal_text(
    focal: float, principal: tuple[float, float], rotation: Sequence, translation: Sequence
) -> str:
    # BIWI layout: intrinsics, distortion, extrinsic rotation, translation, then the image size
    # (with that last line, np.genfromtxt(..., skip_footer=6) returns exactly the 3x3 intrinsics)
    intrinsics = ((focal, 0, principal[0]), (0, focal, principal[1]), (0, 0, 1))
    parts = [
        "".join(_row(r) for r in intrinsics),
        _row((0, 0, 0, 0)),
        "".join(_row(r) for r in rotation),
        _row(translation),
        _row((640, 480)),
    ]
    return "\n".join(parts)


@dataclass
class _Person:
    """What stays the same across one person's frames: looks, room, lighting."""

    skin: RGB
    hair: RGB
    shirt: RGB
    long_hair: bool
    room: Image.Image
    lut: list[int]


def _make_person(seed: int, person: int) -> _Person:
    rng = _rng(seed, 3, person)
    hair = _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.6))
    if rng.random() < 0.12:
        hair = _colour(rng, s=(0.0, 0.1), v=(0.5, 0.85))  # grey
    room = _room(rng)
    gains = rng.uniform(0.75, 1.15) * rng.uniform(0.9, 1.1, 3)
    gamma = rng.uniform(0.8, 1.25)
    ramp = (np.arange(256) / 255.0) ** gamma * 255
    lut = np.concatenate([np.clip(ramp * g, 0, 255) for g in gains]).astype(np.uint8)
    return _Person(_skin(rng), hair, _colour(rng), bool(rng.random() < 0.35), room, lut.tolist())


def _room(rng: np.random.Generator) -> Image.Image:
    """A person's static background: wall, furniture-like boxes and lines, round distractors."""
    w, h = 640, 480
    img = _scene_background(rng, w, h)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # shelves, posters, door and window frames
        x0, y0 = rng.uniform(-50, w), rng.uniform(-50, h)
        x1, y1 = x0 + rng.uniform(40, 260), y0 + rng.uniform(30, 260)
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        else:
            draw.rectangle((x0, y0, x1, y1), outline=_colour(rng), width=int(rng.integers(3, 12)))
    for _ in range(int(rng.integers(1, 4))):  # round things of head size: a clock, a lamp, a ball
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 60)
        col = _skin(rng) if rng.random() < 0.4 else _colour(rng)
        draw.ellipse((x - r, y - r * rng.uniform(0.8, 1.3), x + r, y + r), fill=col)
    _clutter(draw, rng, w, h, int(rng.integers(3, 9)))
    return img


HEAD_RX_MM, HEAD_RY_MM = 78.0, 100.0
_SS = 4  # supersampling of the head patch: its centre lands within 1/8 pixel of the target


def _head_patch(
    spec: FrameSpec, who: _Person, rng: np.random.Generator
) -> tuple[Image.Image, int, int]:
    """The head as an RGBA patch, and where its top-left corner goes so its centre is exact."""
    scale = BIWI_FOCAL / spec.z
    rx, ry = HEAD_RX_MM * scale, HEAD_RY_MM * scale
    half = int(1.6 * ry) + 2
    cx, cy = spec.centre
    ox, oy = math.floor(cx) - half, math.floor(cy) - half
    size = 2 * half + 1
    # patch pixel j covers supersampled pixels S*j .. S*j+S-1, whose mean position is S*j+(S-1)/2
    ux, uy = _SS * (cx - ox) + (_SS - 1) / 2, _SS * (cy - oy) + (_SS - 1) / 2
    img = Image.new("RGBA", (size * _SS, size * _SS), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    sx, sy = rx * _SS, ry * _SS
    yaw, pitch = math.radians(spec.yaw), math.radians(spec.pitch)
    turn, nod = math.sin(yaw), math.sin(pitch)

    def ell(dx: float, dy: float, ax: float, ay: float, fill: RGB) -> None:
        x, y = ux + dx * sx, uy + dy * sy
        d.ellipse(
            (round(x - ax * sx), round(y - ay * sy), round(x + ax * sx), round(y + ay * sy)), fill
        )

    back = -turn * 0.25  # turning shows more of the back of the head
    if who.long_hair:
        x0, x1 = ux + (back - 1.1) * sx, ux + (back + 1.1) * sx
        d.rounded_rectangle(
            (x0, uy - 0.3 * sy, x1, uy + 1.15 * sy), radius=int(0.5 * sx), fill=who.hair
        )
    ell(back, -0.12, 1.12, 1.05, who.hair)
    for side in (-1, 1):  # ears show on the side the face turns away from
        if side * turn <= 0.3:
            ell(side * (1.0 - abs(turn) * 0.3), 0.05, 0.16, 0.24, _shade(who.skin, 0.9))
    ell(0, 0, 1, 1, _shade(who.skin, 0.9))
    light = (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.05))
    ell(light[0], light[1], 0.88, 0.9, who.skin)
    fx, fy = turn * 0.55, nod * 0.35
    parting = (fx - 0.1) * 60  # the fringe's chord tilts with the turn
    box = (
        round(ux - 1.03 * sx),
        round(uy - 1.03 * sy),
        round(ux + 1.03 * sx),
        round(uy + 1.03 * sy),
    )
    d.chord(box, 195 + parting, 345 + parting, fill=who.hair)
    spread = 0.36 * math.cos(yaw)
    for side in (-1, 1):
        if abs(turn) > 0.75 and side * turn < 0:
            continue  # the far eye is hidden
        ex, ey = fx + side * spread, fy - 0.12
        ell(ex, ey, 0.16, 0.09, (240, 240, 235))
        ell(ex + turn * 0.05, ey, 0.07, 0.08, (40, 30, 25))
        ell(ex, ey - 0.17, 0.17, 0.035, who.hair)
    nose = _shade(who.skin, 0.75)
    tip_y = uy + (fy + 0.28) * sy
    bridge = (ux + fx * 1.2 * sx, uy + (fy + 0.02) * sy)
    d.polygon(
        [bridge, (ux + (fx * 1.3 - 0.08) * sx, tip_y), (ux + (fx * 1.3 + 0.08) * sx, tip_y)], nose
    )
    ell(fx, fy + 0.5, 0.28 * math.cos(yaw) + 0.05, 0.06, _shade(who.skin, 0.55))
    small = img.convert("RGBa").reduce(_SS)
    # PIL's rotation centre is in pixel-edge coordinates: pixel i spans [i, i + 1)
    small = small.rotate(
        -spec.roll, Image.Resampling.BICUBIC, center=(cx - ox + 0.5, cy - oy + 0.5)
    )
    return small.convert("RGBA"), ox, oy


def _render_frame(spec: FrameSpec, who: _Person, seed: int, person: int) -> Image.Image:
    """One 640x480 frame: the person's room, a torso, maybe a moving distractor, then the head."""
    rng = _rng(seed, 4, person, spec.frame)
    img = who.room.copy()
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.35:
        x, y, r = rng.uniform(0, 640), rng.uniform(0, 480), rng.uniform(12, 45)
        draw.ellipse(
            (x - r, y - r, x + r, y + r), fill=_skin(rng) if rng.random() < 0.5 else _colour(rng)
        )
    scale = BIWI_FOCAL / spec.z
    cx, cy = spec.centre
    rx, ry = HEAD_RX_MM * scale, HEAD_RY_MM * scale
    bx = cx - math.sin(math.radians(spec.yaw)) * 0.3 * rx
    draw.rectangle(
        (cx - 0.35 * rx, cy + 0.6 * ry, cx + 0.35 * rx, cy + 1.3 * ry), _shade(who.skin, 0.8)
    )
    draw.rounded_rectangle(
        (bx - 2.6 * rx, cy + 1.15 * ry, bx + 2.6 * rx, 480 + 2 * ry), radius=int(rx), fill=who.shirt
    )
    patch, ox, oy = _head_patch(spec, who, rng)
    img.paste(patch, (ox, oy), patch)
    flicker = rng.uniform(0.97, 1.03)
    img = img.point([int(min(255, v * flicker)) for v in who.lut])
    x0, y0 = int(rng.integers(0, 1024 - 640 + 1)), int(rng.integers(0, 1024 - 480 + 1))
    grain = _grain_image(seed).crop((x0, y0, x0 + 640, y0 + 480))
    return ImageChops.add(img, Image.merge("RGB", (grain, grain, grain)), offset=-128)


@dataclass(frozen=True)
class _PersonTask:
    folder: str
    person: int
    n_frames: int
    seed: int


def _render_person(task: _PersonTask) -> int:
    who = _make_person(task.seed, task.person)
    for spec in frame_specs(task.seed, task.person, task.n_frames):
        stem = os.path.join(task.folder, f"frame_{spec.frame:05d}")
        _save_jpeg(_render_frame(spec, who, task.seed, task.person), f"{stem}_rgb.jpg")
        with open(f"{stem}_pose.txt", "w") as f:
            f.write(_pose_text(spec))
    return task.n_frames


_RGB_EXTRINSICS = (
    ((0.999947, 0.00432361, 0.00929419), (-0.00446314, 0.999877, 0.0150443),
     (-0.009228, -0.015085, 0.999844)),
    (-24.0198, 5.8896, -13.2308),
)  # fmt: skip


def make_demo_points(
    dest: str | os.PathLike,
    n_persons: int = 16,
    frames_per_person: int = 150,
    seed: int = 0,
    show_progress: bool = False,
    workers: int | None = None,
) -> Path:
    """Write a BIWI-head-pose-shaped dataset (folders 01..NN of frames, poses, calibration)."""
    from imageblocks.paths import as_path  # here, so pool workers need not import torch

    if n_persons < 1:
        raise ValueError("n_persons must be at least 1 (and at least 13 for the book's split)")
    identity = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    rgb_cal = _cal_text(BIWI_FOCAL, BIWI_PRINCIPAL, *_RGB_EXTRINSICS)
    depth_cal = _cal_text(575.816, (320.0, 240.0), identity, (0, 0, 0))
    with _atomic_dir(dest) as tmp:
        tasks = []
        for person in range(1, n_persons + 1):
            folder = os.path.join(tmp, f"{person:02d}")
            os.makedirs(folder)
            for name, text in (("rgb.cal", rgb_cal), ("depth.cal", depth_cal)):
                with open(os.path.join(folder, name), "w") as f:
                    f.write(text)
            with open(os.path.join(tmp, f"{person:02d}.obj"), "w") as f:
                f.write(_OBJ_TEXT.format(person=person))
            tasks.append(_PersonTask(folder, person, frames_per_person, seed))
        n_items = n_persons * frames_per_person
        _run_tasks(_render_person, tasks, n_items, workers, show_progress, "demo_points")
    return as_path(dest)


_OBJ_TEXT = """\
# head template of person {person:02d} (imageblocks demo: an octahedron, in mm)
v 0 0 100
v 0 0 -100
v 80 0 0
v -80 0 0
v 0 100 0
v 0 -100 0
f 1 3 5
f 1 5 4
f 1 4 6
f 1 6 3
f 2 5 3
f 2 4 5
f 2 6 4
f 2 3 6
"""

# Label sets of the real PASCAL VOC 2007 images: "labels:n_train,n_valid,n_test" per distinct set
# (labels in their most common annotation order), from the trainval and test annotation lists.
_VOC2007_LABEL_SETS = """
person:208,200,455; car:197,179,398; bird:159,134,256; dog:97,137,247; cat:121,121,238; horse
person:92,109,205; train:95,98,203; aeroplane:91,109,169; car person:79,82,185; bicycle
person:59,73,137; motorbike person:62,68,125; boat:55,65,109; cow:46,52,93;
pottedplant:48,41,84; chair person:40,41,78; dog person:47,31,78; tvmonitor:37,37,80;
sheep:37,39,75; sofa person:33,42,73; bicycle:25,34,76; bottle person:40,29,58; bus:31,27,65;
chair:27,30,64; motorbike:30,33,56; horse:31,28,53; sofa:20,29,60; chair diningtable:21,27,58;
bottle:32,23,50; train person:20,29,44; boat person:13,28,50; person chair
diningtable:21,17,46; tvmonitor person:22,23,38; bus person:20,20,40; bus car:21,27,30; sofa
chair:13,18,32; diningtable person:17,14,30; tvmonitor chair:11,16,31; bus car
person:13,12,31; aeroplane person:12,15,24; motorbike person car:13,12,23; cow
person:10,16,22; bird person:17,8,19; bottle person diningtable:12,9,23; dog sofa:12,9,22;
sofa chair person:12,6,24; pottedplant person:12,10,19; cat person:9,9,19; diningtable person
bottle chair:12,6,13; tvmonitor person chair:7,7,16; tvmonitor chair sofa:13,6,11; chair
pottedplant:4,5,20; cat chair:6,11,10; dog person sofa:10,4,13; dog chair:4,8,13; sofa
pottedplant:3,5,17; diningtable bottle chair:5,9,8; chair diningtable pottedplant:5,5,12;
sheep person:4,4,13; motorbike car:4,4,12; sofa chair pottedplant:6,4,10; bottle chair
person:5,6,8; sofa chair diningtable:5,6,8; train car:7,5,6; dog person chair:4,7,7; sofa
person bottle:5,1,11; chair pottedplant person:7,1,9; bicycle person car:8,3,5; horse person
car:6,3,7; cat pottedplant:5,6,5; cat sofa:3,7,5; diningtable:2,3,10; tvmonitor sofa:6,5,4;
sofa person pottedplant:4,2,8; cat dog:3,2,8; cat tvmonitor:1,4,8; bicycle car:3,5,4;
diningtable chair pottedplant person:4,4,4; bus car bicycle person:4,3,4; tvmonitor person
sofa:2,3,6; aeroplane car:3,2,5; tvmonitor person bottle:3,1,6; cat bottle:1,0,8; bottle
person pottedplant:3,0,6; tvmonitor bottle:4,3,2; sofa tvmonitor chair diningtable:3,2,4; cow
horse person:7,0,2; tvmonitor pottedplant:4,1,4; motorbike bicycle person:3,3,2; car
boat:5,0,3; train car person:3,2,3; diningtable chair tvmonitor:4,3,1; bicycle person
bus:3,2,2; cow bird:1,3,3; bottle person diningtable pottedplant:1,2,4; car bus motorbike
person:2,2,3; sofa car:0,5,2; cat person sofa:2,2,3; sofa chair person pottedplant:4,1,2;
person diningtable pottedplant:5,2,0; dog horse person:1,4,2; dog pottedplant:0,0,7; boat car
person:3,0,3; bottle pottedplant:2,0,4; cat car:2,0,4; person chair car:0,2,4; dog cat
sofa:3,1,2; sheep dog:3,0,3; tvmonitor sofa pottedplant:0,4,2; chair bicycle:2,1,2; boat
bird:0,3,2; diningtable chair pottedplant bottle person:2,1,2; diningtable bottle:1,1,3; car
chair:1,1,3; dog person car:2,1,2; tvmonitor person cat:0,1,4; tvmonitor dog:2,0,3; aeroplane
person car:1,0,3; bicycle person bottle:1,1,2; bicycle person chair:1,2,1; person bottle sofa
chair:1,0,3; tvmonitor chair bottle:2,1,1; bus person motorbike:3,0,1; cow car person:2,1,1;
sofa person car:3,0,1; car tvmonitor person:1,1,2; car pottedplant:2,0,2; cat chair
diningtable:1,2,1; tvmonitor cat chair:1,0,3; sofa chair diningtable pottedplant:1,1,2; chair
sofa pottedplant tvmonitor:1,1,2; chair pottedplant tvmonitor:1,2,1; tvmonitor dog
person:2,1,1; horse person pottedplant:2,1,1; aeroplane boat:3,0,0; bicycle bottle:2,0,1; dog
bicycle person:0,0,3; bicycle pottedplant:1,2,0; person bird boat:1,0,2; bird car:2,1,0; bird
pottedplant:1,0,2; cow person boat:1,1,1; bottle chair:0,1,2; diningtable chair bottle
sofa:0,2,1; bottle person chair tvmonitor:1,1,1; bottle diningtable person sofa:0,1,2; dog
bottle:1,1,1; person sofa pottedplant bottle:2,0,1; sheep bottle person:0,2,1; sofa
bottle:1,0,2; dog car:1,0,2; horse car:1,1,1; car pottedplant person:1,1,1; tvmonitor
car:0,0,3; chair person cat:1,1,1; tvmonitor sofa cat:0,2,1; sofa person chair
diningtable:0,3,0; diningtable chair tvmonitor person:0,0,3; person dog chair
pottedplant:0,1,2; tvmonitor sofa pottedplant chair person:1,0,2; tvmonitor chair sofa
person:1,1,1; dog horse:1,2,0; sheep horse:0,1,2; bus aeroplane:0,0,2; bicycle boat:0,1,1;
bicycle diningtable chair:0,1,1; motorbike bicycle person chair:1,0,1; sofa pottedplant
tvmonitor chair bicycle person:2,0,0; dog bicycle:1,0,1; bicycle sofa person:1,0,1; person
bicycle tvmonitor:2,0,0; sofa bicycle:1,0,1; tvmonitor bicycle:0,0,2; dog bird:1,0,1; sheep
bird:0,0,2; dog person boat:1,1,0; motorbike boat person:1,0,1; pottedplant boat person:1,0,1;
bottle car person:1,1,0; bottle chair diningtable pottedplant:1,0,1; person chair bottle
pottedplant:1,1,0; sofa chair pottedplant bottle tvmonitor:1,1,0; dog person bottle:1,0,1;
bottle tvmonitor person sofa:1,0,1; cow car:0,0,2; horse person dog car:0,0,2; car person
sheep:1,0,1; sofa pottedplant cat chair person:1,0,1; cat person chair sofa:0,1,1; cat sofa
chair pottedplant:1,1,0; cat diningtable:0,1,1; dog cat person:0,0,2; dog cat person
sofa:0,0,2; sheep cow:1,1,0; dog person diningtable:1,1,0; sofa diningtable person:1,0,1;
person diningtable tvmonitor:0,1,1; dog person pottedplant:0,2,0; sheep person dog:2,0,0;
person motorbike pottedplant:1,1,0; person bus aeroplane car:1,0,0; aeroplane pottedplant car
bus:0,0,1; aeroplane car motorbike:0,0,1; aeroplane chair:0,1,0; person aeroplane
tvmonitor:1,0,0; aeroplane sheep:1,0,0; sofa bottle bicycle:0,0,1; bus bicycle car:1,0,0;
bicycle cat person:0,1,0; chair sofa bicycle tvmonitor:0,1,0; cow person bicycle
motorbike:1,0,0; bicycle person pottedplant:0,0,1; bicycle person train:0,0,1; boat car
bird:0,0,1; horse bird bottle pottedplant:0,0,1; chair bird:0,1,0; pottedplant bird
chair:0,1,0; boat bus:0,1,0; boat bus car person:1,0,0; bus person boat:0,0,1; boat chair
diningtable:0,0,1; boat pottedplant chair diningtable person sofa dog:1,0,0; chair diningtable
person boat:0,1,0; train boat:1,0,0; bus car bottle person:0,1,0; car bottle:0,0,1; chair car
bottle:1,0,0; bottle person diningtable car:0,0,1; horse person bottle car:1,0,0; person
bottle car pottedplant:0,0,1; tvmonitor bottle chair cat:1,0,0; cat person diningtable
bottle:0,1,0; cat bottle dog person:0,0,1; cat pottedplant bottle:0,0,1; cat bottle
tvmonitor:1,0,0; bottle person sofa pottedplant chair diningtable:0,0,1; chair diningtable
tvmonitor person pottedplant bottle:0,1,0; chair diningtable sofa person bottle:1,0,0; bottle
dog chair:1,0,0; dog chair person bottle:0,0,1; bottle pottedplant chair:0,0,1; sofa chair
bottle:0,0,1; sofa chair tvmonitor bottle:0,1,0; cow bottle person:0,1,0; tvmonitor person
bottle diningtable:1,0,0; bottle dog pottedplant:1,0,0; sheep horse person bottle:0,0,1;
motorbike person bottle:0,0,1; car person dog bus:0,1,0; bus car motorbike:0,0,1; pottedplant
car bus:0,0,1; bus train person:0,1,0; train bus:0,0,1; cat person car:0,0,1; dog chair car
person:0,0,1; car pottedplant motorbike chair:0,0,1; tvmonitor chair person car:0,0,1; car
chair pottedplant:1,0,0; sofa chair car:0,0,1; cow horse person car:0,0,1; car person
diningtable:0,0,1; dog sofa car pottedplant person:1,0,0; car dog person sofa:1,0,0;
pottedplant motorbike car:1,0,0; tvmonitor motorbike car:0,0,1; train car pottedplant:1,0,0;
sheep car:0,1,0; sofa tvmonitor car:0,0,1; chair diningtable cat person:0,1,0; sofa chair
diningtable pottedplant cat:0,1,0; cat dog chair:0,1,0; pottedplant person cat chair:0,1,0;
sofa cat chair tvmonitor person:1,0,0; cat chair pottedplant:1,0,0; cat dog sofa
tvmonitor:0,0,1; person cat sofa pottedplant:1,0,0; tvmonitor sofa person cat
pottedplant:0,0,1; pottedplant dog tvmonitor diningtable chair:1,0,0; tvmonitor chair sofa
diningtable dog:0,0,1; diningtable sofa pottedplant chair person:1,0,0; tvmonitor chair sofa
person diningtable:0,0,1; diningtable chair pottedplant tvmonitor:0,1,0; motorbike dog person
chair:0,0,1; tvmonitor person pottedplant chair sofa dog:0,1,0; dog person sofa chair:0,1,0;
sofa pottedplant chair dog:1,0,0; tvmonitor dog sofa chair:1,0,0; horse person chair:1,0,0;
motorbike chair sofa:0,1,0; tvmonitor chair person pottedplant:0,0,1; cow dog:1,0,0; cow
horse:0,0,1; motorbike person cow:1,0,0; cow pottedplant:0,0,1; dog pottedplant
diningtable:0,0,1; diningtable person pottedplant tvmonitor:0,1,0; pottedplant
diningtable:0,1,0; sofa diningtable pottedplant:0,1,0; motorbike dog:0,1,0; motorbike person
dog:0,1,0; dog sofa person pottedplant:0,0,1; dog sofa pottedplant tvmonitor:0,1,0; tvmonitor
pottedplant dog:1,0,0; pottedplant horse:0,1,0; train horse:1,0,0; train person
motorbike:0,0,1; tvmonitor motorbike person:0,0,1; motorbike pottedplant:0,0,1; tvmonitor
person pottedplant:0,0,1
"""
