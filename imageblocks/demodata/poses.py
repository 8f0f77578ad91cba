"""The key-point demo's geometry and text files: the BIWI camera, smooth head trajectories, and
the pose, calibration and head-template files in BIWI's formats.

Hand-written so that the book's `get_ctr` (pose file through `rgb.cal`) gives back exactly the
centre that `points` draws, to the digits the files hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imageblocks.demodata.canvas import make_rng

BIWI_FOCAL = 517.679
BIWI_PRINCIPAL = (320.0, 240.5)


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
    rng = make_rng(seed, 2, person)
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


def pose_text(spec: FrameSpec) -> str:
    """A `frame_XXXXX_pose.txt`: the head's rotation matrix, a blank line, its centre in mm."""
    rot = _rotation(spec.yaw, spec.pitch, spec.roll)
    return "".join(_row(r) for r in rot) + "\n" + _row((spec.x, spec.y, spec.z))


def cal_text(
    focal: float, principal: tuple[float, float], rotation: Sequence, translation: Sequence
) -> str:
    """A BIWI `.cal` file for a camera of this focal length, principal point and extrinsics."""
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


# the extrinsic rotation and translation written to every rgb.cal
RGB_EXTRINSICS = (
    ((0.999947, 0.00432361, 0.00929419), (-0.00446314, 0.999877, 0.0150443),
     (-0.009228, -0.015085, 0.999844)),
    (-24.0198, 5.8896, -13.2308),
)  # fmt: skip


# `NN.obj`: BIWI ships a head mesh per person; the demo writes an octahedron in its place
OBJ_TEXT = """\
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
