"""The pen and paint that the demo's object shapes are drawn with: a unit box on a supersampled
RGBA canvas, and an object's colours.

Hand-written: the shapes in `shapes` are procedural drawings, and this small layer over
`PIL.ImageDraw` lets each one be written in box coordinates, independent of its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from imageblocks.demodata.canvas import RGB, random_colour, random_skin


class Pen:
    """Draws in an object's unit box (x right, y down, [0, 1]^2) onto a 2x supersampled canvas."""

    SS = 2

    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.pad = max(2, int(0.05 * max(w, h)))
        size = ((w + 2 * self.pad) * self.SS, (h + 2 * self.pad) * self.SS)
        self.img = Image.new("RGBA", size, (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.img)

    def xy(self, x: float, y: float) -> tuple[float, float]:
        """Canvas pixels of the unit-box point (x, y)."""
        return ((self.pad + x * self.w) * self.SS, (self.pad + y * self.h) * self.SS)

    def poly(self, pts: Sequence[tuple[float, float]], fill: RGB) -> None:
        """A filled polygon through the unit-box points `pts`."""
        self.draw.polygon([self.xy(x, y) for x, y in pts], fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB, r: float = 0) -> None:
        """A filled rectangle, its corners rounded by `r` box heights."""
        (a, b), (c, d) = self.xy(x0, y0), self.xy(x1, y1)
        radius = int(r * self.h * self.SS)
        self.draw.rounded_rectangle((a, b, c, d), radius=radius, fill=fill)

    def oval(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        """A filled ellipse in the box from (x0, y0) to (x1, y1)."""
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
        """The drawing at its final size (the supersampled canvas averaged down)."""
        return self.img.reduce(self.SS)


@dataclass
class Paint:
    """The colours of one object: all drawn from the same palette whatever the class."""

    main: RGB
    second: RGB
    dark: RGB
    light: RGB
    skin: RGB
    rng: np.random.Generator

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Paint:
        """Five independent colours from the shared palette, and `rng` for the shape's own draws."""
        return cls(
            main=random_colour(rng),
            second=random_colour(rng),
            dark=random_colour(rng, v=(0.05, 0.3)),
            light=random_colour(rng, s=(0.0, 0.35), v=(0.7, 1.0)),
            skin=random_skin(rng),
            rng=rng,
        )
