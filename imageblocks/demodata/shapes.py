"""The 20 PASCAL VOC classes as procedural drawings, and `render_object`, which draws one.

Hand-written: no library draws recognisable, varied VOC objects offline; each drawer is a
few strokes in a unit box, with random proportions, colours and poses, so a model must learn
shape (colour comes from one palette shared by every class).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from imageblocks.demodata.canvas import hsv, random_colour, shade
from imageblocks.demodata.pen import Paint, Pen


def _u(c: Paint, lo: float, hi: float) -> float:
    return float(c.rng.uniform(lo, hi))


def _aeroplane(p: Pen, c: Paint) -> None:
    wing = shade(c.main, 0.75)
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


def _bicycle(p: Pen, c: Paint) -> None:
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


def _bird(p: Pen, c: Paint) -> None:
    if c.rng.random() < 0.35:  # in flight
        p.poly([(0.3, 0.5), (0.5, 0.0), (0.6, 0.48)], shade(c.main, 0.7))
        p.oval(0.15, 0.4, 0.8, 0.7, c.main)
        p.poly([(0.35, 0.55), (0.55, 1.0), (0.62, 0.56)], shade(c.main, 0.85))
    else:
        p.line([(0.45, 0.7), (0.42, 1.0)], c.dark, 0.03)
        p.line([(0.55, 0.7), (0.56, 1.0)], c.dark, 0.03)
        p.oval(0.18, 0.32, 0.76, 0.78, c.main)
        p.oval(0.3, 0.42, 0.66, 0.68, shade(c.main, 0.75))  # folded wing
    p.poly([(0.24, 0.5), (0.0, 0.38), (0.0, 0.64)], shade(c.main, 0.8))
    p.circle(0.8, 0.38, 0.17, c.second)
    p.poly([(0.9, 0.32), (1.0, 0.4), (0.9, 0.45)], c.light)
    p.circle(0.83, 0.34, 0.03, c.dark)


def _boat(p: Pen, c: Paint) -> None:
    if c.rng.random() < 0.6:  # sailing boat
        p.line([(0.5, 0.02), (0.5, 0.64)], c.dark, 0.025)
        p.poly([(0.53, 0.05), (0.53, 0.6), (0.93, 0.6)], c.light)
        p.poly([(0.47, 0.12), (0.47, 0.6), (0.14, 0.6)], c.second)
    else:  # motor boat with a cabin
        p.rect(0.3, 0.38, 0.72, 0.64, c.second, r=0.03)
        p.rect(0.36, 0.43, 0.66, 0.52, c.light)
    p.poly([(0.0, 0.62), (1.0, 0.62), (0.86, 0.86), (0.12, 0.86)], c.main)
    p.rect(0.05, 0.62, 0.96, 0.67, shade(c.main, 0.6))


def _bottle(p: Pen, c: Paint) -> None:
    p.rect(0.08, 0.35, 0.92, 1.0, c.main, r=0.03)
    p.poly([(0.08, 0.4), (0.36, 0.18), (0.64, 0.18), (0.92, 0.4)], c.main)
    p.rect(0.36, 0.04, 0.64, 0.22, c.main)
    p.rect(0.32, 0.0, 0.68, 0.07, c.second)
    p.rect(0.08, 0.55, 0.92, 0.8, c.light)
    p.rect(0.2, 0.4, 0.3, 0.95, shade(c.main, 1.35))  # highlight


def _bus(p: Pen, c: Paint) -> None:
    p.rect(0.0, 0.05, 1.0, 0.85, c.main, r=0.08)
    n = int(c.rng.integers(5, 8))
    for i in range(n):
        x0 = 0.05 + i * 0.9 / n
        p.rect(x0, 0.15, x0 + 0.9 / n - 0.02, 0.45, c.light, r=0.02)
    p.rect(0.0, 0.55, 1.0, 0.62, c.second)
    p.rect(0.86, 0.15, 0.97, 0.8, shade(c.light, 0.8))  # door
    for x in (0.2, 0.78):
        p.circle(x, 0.85, 0.15, c.dark)
        p.circle(x, 0.85, 0.06, c.light)


def _car(p: Pen, c: Paint) -> None:
    p.poly([(0.2, 0.45), (0.33, 0.12), (0.68, 0.12), (0.84, 0.45)], c.main)
    p.rect(0.0, 0.42, 1.0, 0.8, c.main, r=0.12)
    p.poly([(0.27, 0.43), (0.36, 0.19), (0.49, 0.19), (0.49, 0.43)], c.light)
    p.poly([(0.53, 0.43), (0.53, 0.19), (0.66, 0.19), (0.77, 0.43)], c.light)
    p.rect(0.93, 0.5, 1.0, 0.58, c.second)
    for x in (0.22, 0.78):
        p.circle(x, 0.8, 0.2, c.dark)
        p.circle(x, 0.8, 0.08, c.light)


def _cat(p: Pen, c: Paint) -> None:
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


def _chair(p: Pen, c: Paint) -> None:
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


def _cow(p: Pen, c: Paint) -> None:
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


def _diningtable(p: Pen, c: Paint) -> None:
    for x0, x1 in ((0.06, 0.06), (0.94, 0.94), (0.18, 0.2), (0.82, 0.8)):
        p.line([(x0, 0.3), (x1, 0.97 if x0 in (0.06, 0.94) else 0.85)], c.main, 0.045)
    p.poly([(0.0, 0.3), (0.14, 0.08), (0.86, 0.08), (1.0, 0.3)], c.second)
    p.rect(0.0, 0.3, 1.0, 0.38, shade(c.second, 0.7))
    for _ in range(int(c.rng.integers(0, 4))):
        x = _u(c, 0.2, 0.8)
        p.oval(x - 0.08, 0.14, x + 0.08, 0.22, c.light)


def _dog(p: Pen, c: Paint) -> None:
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


def _horse(p: Pen, c: Paint) -> None:
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


def _motorbike(p: Pen, c: Paint) -> None:
    for x in (0.2, 0.82):
        p.circle(x, 0.72, 0.26, c.dark, ring=0.1)
        p.circle(x, 0.72, 0.06, c.light)
    p.line([(0.82, 0.72), (0.72, 0.2)], c.light, 0.05)  # fork
    p.line([(0.64, 0.15), (0.78, 0.18)], c.dark, 0.05)
    p.poly([(0.3, 0.48), (0.45, 0.3), (0.7, 0.3), (0.75, 0.5), (0.55, 0.72), (0.38, 0.72)], c.main)
    p.rect(0.38, 0.52, 0.58, 0.74, c.dark, r=0.04)  # engine
    p.line([(0.22, 0.62), (0.5, 0.78)], c.light, 0.04)  # exhaust
    p.rect(0.12, 0.32, 0.48, 0.4, c.second, r=0.04)  # seat


def _person(p: Pen, c: Paint) -> None:
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


def _pottedplant(p: Pen, c: Paint) -> None:
    hue = _u(c, 0.15, 0.45) if c.rng.random() < 0.7 else c.rng.random()  # mostly greens
    leaf = hsv(hue, _u(c, 0.3, 0.9), _u(c, 0.2, 0.7))
    for _ in range(int(c.rng.integers(6, 11))):
        a = _u(c, -2.6, -0.5)
        x, y = 0.5 + 0.42 * math.cos(a), 0.6 + 0.55 * math.sin(a)
        p.line([(0.5, 0.62), (x, y)], shade(leaf, _u(c, 0.7, 1.2)), 0.06)
        p.oval(x - 0.1, y - 0.05, x + 0.1, y + 0.05, leaf)
    p.poly([(0.22, 0.62), (0.78, 0.62), (0.7, 1.0), (0.3, 1.0)], c.main)
    p.rect(0.18, 0.6, 0.82, 0.68, shade(c.main, 0.8))


def _sheep(p: Pen, c: Paint) -> None:
    wool = random_colour(c.rng, s=(0.0, 0.25), v=(0.45, 1.0))
    for x in (0.28, 0.36, 0.64, 0.7):
        p.line([(x, 0.6), (x, 1.0)], c.dark, 0.045)
    for _ in range(12):
        x, y = _u(c, 0.22, 0.72), _u(c, 0.3, 0.6)
        p.circle(x, y, _u(c, 0.1, 0.16), shade(wool, _u(c, 0.85, 1.1)))
    p.oval(0.76, 0.22, 0.98, 0.5, c.dark)
    p.oval(0.72, 0.24, 0.82, 0.32, c.dark)  # ear
    p.circle(0.88, 0.32, 0.02, c.light)


def _sofa(p: Pen, c: Paint) -> None:
    cloth = c.main
    for x in (0.06, 0.94):
        p.rect(x - 0.02, 0.8, x + 0.02, 0.95, c.dark)
    p.rect(0.06, 0.1, 0.94, 0.6, shade(cloth, 0.85), r=0.08)
    p.rect(0.04, 0.5, 0.96, 0.82, cloth, r=0.05)
    p.rect(0.0, 0.35, 0.13, 0.84, shade(cloth, 0.9), r=0.05)
    p.rect(0.87, 0.35, 1.0, 0.84, shade(cloth, 0.9), r=0.05)
    n = int(c.rng.integers(2, 4))
    for i in range(1, n):
        x = 0.13 + i * 0.74 / n
        p.line([(x, 0.15), (x, 0.8)], shade(cloth, 0.65), 0.015)
    if c.rng.random() < 0.5:
        p.rect(0.18, 0.32, 0.36, 0.55, c.second, r=0.04)  # cushion


def _train(p: Pen, c: Paint) -> None:
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


def _tvmonitor(p: Pen, c: Paint) -> None:
    p.rect(0.42, 0.78, 0.58, 0.92, c.dark)
    p.rect(0.25, 0.9, 0.75, 0.98, c.dark, r=0.02)
    p.rect(0.0, 0.0, 1.0, 0.8, c.main, r=0.02)
    p.rect(0.06, 0.06, 0.94, 0.74, c.second)
    for _ in range(int(c.rng.integers(0, 4))):  # something on the screen
        x, y = _u(c, 0.1, 0.7), _u(c, 0.1, 0.5)
        p.rect(x, y, x + _u(c, 0.1, 0.24), y + _u(c, 0.08, 0.2), random_colour(c.rng))


# class name -> (drawer, box aspect w/h, max in-plane rotation in degrees)
SHAPES: dict[str, tuple[Callable[[Pen, Paint], None], float, float]] = {
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
    draw, aspect, max_angle = SHAPES[name]
    aspect *= rng.uniform(0.85, 1.18)
    pen = Pen(max(8, int(height * aspect)), max(8, height))
    draw(pen, Paint.sample(rng))
    img = pen.image()
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = rng.uniform(-max_angle, max_angle)
    # premultiplied alpha, so resampling does not bleed the transparent black into the edges
    img = img.convert("RGBa").rotate(angle, Image.Resampling.BILINEAR, expand=True)
    return img.convert("RGBA")
