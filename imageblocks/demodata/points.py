"""The key-point demo dataset: 640x480 frames of a head-like figure in a room, written in
fastai's `biwi_head_pose` layout (folders 01..NN of frames, pose files, calibration).

Hand-written so the book's key-point chapter runs offline on frames whose head centre is
exactly the projection of each pose file's position; a person's looks and room stay the same
across their frames, so the book's split by person means something.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from imageblocks.demodata.canvas import (
    RGB,
    clutter,
    grain_image,
    hsv,
    make_rng,
    random_colour,
    random_skin,
    scene_background,
    shade,
)
from imageblocks.demodata.output import atomic_dir, run_tasks, save_jpeg
from imageblocks.demodata.poses import (
    BIWI_FOCAL,
    BIWI_PRINCIPAL,
    OBJ_TEXT,
    RGB_EXTRINSICS,
    FrameSpec,
    cal_text,
    frame_specs,
    pose_text,
)
from imageblocks.paths import Path, as_path


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
    rng = make_rng(seed, 3, person)
    hair = hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.6))
    if rng.random() < 0.12:
        hair = random_colour(rng, s=(0.0, 0.1), v=(0.5, 0.85))  # grey
    room = _room(rng)
    gains = rng.uniform(0.75, 1.15) * rng.uniform(0.9, 1.1, 3)
    gamma = rng.uniform(0.8, 1.25)
    ramp = (np.arange(256) / 255.0) ** gamma * 255
    lut = np.concatenate([np.clip(ramp * g, 0, 255) for g in gains]).astype(np.uint8)
    return _Person(
        random_skin(rng), hair, random_colour(rng), bool(rng.random() < 0.35), room, lut.tolist()
    )


def _room(rng: np.random.Generator) -> Image.Image:
    """A person's static background: wall, furniture-like boxes and lines, round distractors."""
    w, h = 640, 480
    img = scene_background(rng, w, h)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # shelves, posters, door and window frames
        x0, y0 = rng.uniform(-50, w), rng.uniform(-50, h)
        x1, y1 = x0 + rng.uniform(40, 260), y0 + rng.uniform(30, 260)
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=random_colour(rng))
        else:
            draw.rectangle(
                (x0, y0, x1, y1), outline=random_colour(rng), width=int(rng.integers(3, 12))
            )
    for _ in range(int(rng.integers(1, 4))):  # round things of head size: a clock, a lamp, a ball
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 60)
        col = random_skin(rng) if rng.random() < 0.4 else random_colour(rng)
        draw.ellipse((x - r, y - r * rng.uniform(0.8, 1.3), x + r, y + r), fill=col)
    clutter(draw, rng, w, h, int(rng.integers(3, 9)))
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
            ell(side * (1.0 - abs(turn) * 0.3), 0.05, 0.16, 0.24, shade(who.skin, 0.9))
    ell(0, 0, 1, 1, shade(who.skin, 0.9))
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
    nose = shade(who.skin, 0.75)
    tip_y = uy + (fy + 0.28) * sy
    bridge = (ux + fx * 1.2 * sx, uy + (fy + 0.02) * sy)
    d.polygon(
        [bridge, (ux + (fx * 1.3 - 0.08) * sx, tip_y), (ux + (fx * 1.3 + 0.08) * sx, tip_y)], nose
    )
    ell(fx, fy + 0.5, 0.28 * math.cos(yaw) + 0.05, 0.06, shade(who.skin, 0.55))
    small = img.convert("RGBa").reduce(_SS)
    # PIL's rotation centre is in pixel-edge coordinates: pixel i spans [i, i + 1)
    small = small.rotate(
        -spec.roll, Image.Resampling.BICUBIC, center=(cx - ox + 0.5, cy - oy + 0.5)
    )
    return small.convert("RGBA"), ox, oy


def _render_frame(spec: FrameSpec, who: _Person, seed: int, person: int) -> Image.Image:
    """One 640x480 frame: the person's room, a torso, maybe a moving distractor, then the head."""
    rng = make_rng(seed, 4, person, spec.frame)
    img = who.room.copy()
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.35:
        x, y, r = rng.uniform(0, 640), rng.uniform(0, 480), rng.uniform(12, 45)
        draw.ellipse(
            (x - r, y - r, x + r, y + r),
            fill=random_skin(rng) if rng.random() < 0.5 else random_colour(rng),
        )
    scale = BIWI_FOCAL / spec.z
    cx, cy = spec.centre
    rx, ry = HEAD_RX_MM * scale, HEAD_RY_MM * scale
    bx = cx - math.sin(math.radians(spec.yaw)) * 0.3 * rx
    draw.rectangle(
        (cx - 0.35 * rx, cy + 0.6 * ry, cx + 0.35 * rx, cy + 1.3 * ry), shade(who.skin, 0.8)
    )
    draw.rounded_rectangle(
        (bx - 2.6 * rx, cy + 1.15 * ry, bx + 2.6 * rx, 480 + 2 * ry), radius=int(rx), fill=who.shirt
    )
    patch, ox, oy = _head_patch(spec, who, rng)
    img.paste(patch, (ox, oy), patch)
    flicker = rng.uniform(0.97, 1.03)
    img = img.point([int(min(255, v * flicker)) for v in who.lut])
    x0, y0 = int(rng.integers(0, 1024 - 640 + 1)), int(rng.integers(0, 1024 - 480 + 1))
    grain = grain_image(seed).crop((x0, y0, x0 + 640, y0 + 480))
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
        save_jpeg(_render_frame(spec, who, task.seed, task.person), f"{stem}_rgb.jpg")
        with open(f"{stem}_pose.txt", "w") as f:
            f.write(pose_text(spec))
    return task.n_frames


def make_demo_points(
    dest: str | os.PathLike,
    n_persons: int = 16,
    frames_per_person: int = 150,
    seed: int = 0,
    show_progress: bool = False,
    workers: int | None = None,
) -> Path:
    """Write a BIWI-head-pose-shaped dataset (folders 01..NN of frames, poses, calibration)."""
    if n_persons < 1:
        raise ValueError("n_persons must be at least 1 (and at least 13 for the book's split)")
    identity = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    rgb_cal = cal_text(BIWI_FOCAL, BIWI_PRINCIPAL, *RGB_EXTRINSICS)
    depth_cal = cal_text(575.816, (320.0, 240.0), identity, (0, 0, 0))
    with atomic_dir(dest) as tmp:
        tasks = []
        for person in range(1, n_persons + 1):
            folder = os.path.join(tmp, f"{person:02d}")
            os.makedirs(folder)
            for name, text in (("rgb.cal", rgb_cal), ("depth.cal", depth_cal)):
                with open(os.path.join(folder, name), "w") as f:
                    f.write(text)
            with open(os.path.join(tmp, f"{person:02d}.obj"), "w") as f:
                f.write(OBJ_TEXT.format(person=person))
            tasks.append(_PersonTask(folder, person, frames_per_person, seed))
        n_items = n_persons * frames_per_person
        run_tasks(_render_person, tasks, n_items, workers, show_progress, "demo_points")
    return as_path(dest)
