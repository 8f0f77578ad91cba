"""What every demo picture is painted with: seeded generators, one colour palette, backgrounds,
clutter and camera-like noise.

Hand-written because the demo datasets must exist with no network and no image library's
synthetic-data tool draws VOC- or BIWI-like scenes; these few primitives keep both generators
deterministic (one seeded generator per image) and make colour carry no class information.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageChops, ImageDraw

RGB = tuple[int, int, int]


def make_rng(seed: int, *keys: int) -> np.random.Generator:
    """The generator of one item: `seed` and the item's keys, so no item depends on another."""
    return np.random.default_rng([seed, *keys])


def hsv(h: float, s: float, v: float) -> RGB:
    """An 8-bit RGB colour from hue (wrapped to [0, 1)), saturation and value."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def random_colour(rng: np.random.Generator, s: tuple = (0.1, 0.95), v: tuple = (0.15, 0.95)) -> RGB:
    """A colour from one broad palette shared by every class, so colour never names a class."""
    return hsv(rng.random(), rng.uniform(*s), rng.uniform(*v))


def shade(c: RGB, f: float) -> RGB:
    """`c` darkened (f < 1) or lightened (f > 1), clipped to 0..255."""
    return tuple(int(min(255, max(0, x * f))) for x in c)


def random_skin(rng: np.random.Generator) -> RGB:
    """A skin tone: orange hues, from pale to dark."""
    return hsv(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))


_GRAIN: dict[int, np.ndarray] = {}


def _grain(seed: int) -> np.ndarray:
    """A per-seed tile of sensor-like noise; images take crops of it (cheaper than fresh noise)."""
    if seed not in _GRAIN:
        _GRAIN[seed] = make_rng(seed, 99).standard_normal((1024, 1024), dtype=np.float32)
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


def grain_image(seed: int) -> Image.Image:
    """The grain tile as an 8-bit image centred on 128, for cheap saturating addition."""
    if seed not in _GRAIN_IMAGES:
        tile = np.clip(128 + 1.2 * _grain(seed), 0, 255).astype(np.uint8)
        _GRAIN_IMAGES[seed] = Image.fromarray(tile)
    return _GRAIN_IMAGES[seed]


def finish(img: Image.Image, rng: np.random.Generator, seed: int, grain: float) -> Image.Image:
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


def clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, n: int) -> None:
    """Blobs, strokes, scribbles and dot fields: texture that is no class's shape."""
    for _ in range(n):
        kind = rng.integers(0, 4)
        col = random_colour(rng, s=(0.0, 0.6))
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


def scene_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A gradient with a blurry horizon and coarse blotches."""
    gh, gw = 6, 8
    a, b = np.array(random_colour(rng)), np.array(random_colour(rng))
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:gh, 0:gw]
    t = (np.cos(theta) * xx / (gw - 1) + np.sin(theta) * yy / (gh - 1) + 1) / 2
    grid = a * (1 - t[..., None]) + b * t[..., None] + rng.normal(0, 18, (gh, gw, 3))
    if rng.random() < 0.6:  # ground below a horizon
        k = int(rng.integers(2, gh - 1))
        grid[k:] = np.array(random_colour(rng)) + rng.normal(0, 12, (gh - k, gw, 3))
    small = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8))
    return small.resize((w, h), Image.Resampling.BICUBIC)
