"""Geometric batch augmentation: per-sample 3x3 matrices fused into one resample per batch.

Why this is hand-written: a chain of separate augmentations (flip, then rotate, then zoom, then
warp, then resize) resamples the images once per step, which costs time and blurs them. Here
every geometric part is a 3x3 matrix per sample (output coordinates -> input coordinates); they
are multiplied into ONE homography per sample, the sampling grid is built at the output size and a
single ``F.grid_sample`` resamples the whole batch on its own device (CPU or GPU). Key points are
mapped by the inverse of the very same matrices, so they land exactly where their pixels went.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from imageblocks.transforms.base import (
    Batch,
    BatchTransform,
    Kinds,
    check_batch,
    draw_uniform,
)
from imageblocks.transforms.pairs import FlipPairs, check_flip_pairs, swap_reflected
from imageblocks.utils import parse_size

__all__ = [
    "AffineWarp",
    "Dihedral",
    "Flip",
    "RandomResizedCropGPU",
    "Rotate",
    "Warp",
    "Zoom",
    "dihedral_mat",
    "flip_mat",
    "rotate_mat",
    "warp_batch",
    "warp_points",
    "warp_mat",
    "zoom_mat",
]

# --- per-sample 3x3 matrices (output-normalised coords -> input-normalised coords) -------------


def _rows(a, b, c, d, e, f, g=None, h=None) -> Tensor:
    """Stack per-sample (B,) entries into (B, 3, 3) matrices [[a b c] [d e f] [g h 1]]."""
    a, b, c, d, e, f = torch.broadcast_tensors(a, b, c, d, e, f)
    zero = torch.zeros_like(a)
    g = zero if g is None else g
    h = zero if h is None else h
    return torch.stack([a, b, c, d, e, f, g, h, torch.ones_like(a)], dim=-1).view(-1, 3, 3)


def flip_mat(flip: Tensor) -> Tensor:
    """Horizontal flip where ``flip`` (B,) is true/1, identity elsewhere."""
    sx = 1.0 - 2.0 * flip.float()
    zero = torch.zeros_like(sx)
    return _rows(sx, zero, zero, zero, torch.ones_like(sx), zero)


def dihedral_mat(k: Tensor) -> Tensor:
    """One of the 8 symmetries of the square per sample: bit 0 flips x, bit 1 flips y, bit 2
    transposes (k=0 is the identity)."""
    k = k.long()
    sx = 1.0 - 2.0 * (k & 1).float()
    sy = 1.0 - 2.0 * ((k >> 1) & 1).float()
    t = ((k >> 2) & 1).float()
    zero = torch.zeros_like(sx)
    return _rows(sx * (1 - t), sx * t, zero, sy * t, sy * (1 - t), zero)


def rotate_mat(degrees: Tensor, aspect: float = 1.0) -> Tensor:
    """Rotation about the centre by ``degrees`` (B,), counter-clockwise on screen; ``aspect`` is
    the image's width/height so the rotation is rigid in pixels, not in normalised units."""
    theta = degrees.float() * (math.pi / 180.0)
    cos, sin = theta.cos(), theta.sin()
    zero = torch.zeros_like(cos)
    return _rows(cos, -sin / aspect, zero, sin * aspect, cos, zero)


def zoom_mat(zoom: Tensor, cx: Tensor | float = 0.0, cy: Tensor | float = 0.0) -> Tensor:
    """Zoom in by ``zoom`` (B,) on the window centred at (cx, cy) of the input (normalised)."""
    scale = 1.0 / zoom.float()
    cx = torch.as_tensor(cx, dtype=scale.dtype, device=scale.device)
    cy = torch.as_tensor(cy, dtype=scale.dtype, device=scale.device)
    zero = torch.zeros_like(scale)
    return _rows(scale, zero, cx, zero, scale, cy)


def warp_mat(mx: Tensor, my: Tensor) -> Tensor:
    """Perspective (keystone) warp: the output corner (x, y) samples the input at
    (x * (1 + mx * y), y * (1 + my * x)); ``mx``/``my`` (B,) tilt about the two axes."""
    mx, my = torch.broadcast_tensors(mx.float(), my.float())
    # corners of the output square in the order (0,0) (1,0) (1,1) (0,1) of the unit square
    cx = torch.tensor([-1.0, 1.0, 1.0, -1.0], device=mx.device)
    cy = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=mx.device)
    x = cx * (1 + mx[:, None] * cy)  # (B, 4)
    y = cy * (1 + my[:, None] * cx)
    x0, x1, x2, x3 = x.unbind(1)
    y0, y1, y2, y3 = y.unbind(1)
    # closed-form unit-square -> quadrilateral homography (no linear solve, no host sync)
    sx, sy = x0 - x1 + x2 - x3, y0 - y1 + y2 - y3
    dx1, dx2, dy1, dy2 = x1 - x2, x3 - x2, y1 - y2, y3 - y2
    det = dx1 * dy2 - dx2 * dy1
    g = (sx * dy2 - dx2 * sy) / det
    h = (dx1 * sy - sx * dy1) / det
    quad = _rows(
        x1 - x0 + g * x1, x3 - x0 + h * x3, x0, y1 - y0 + g * y1, y3 - y0 + h * y3, y0, g, h
    )
    to_unit = torch.tensor([[0.5, 0, 0.5], [0, 0.5, 0.5], [0, 0, 1]], device=mx.device)
    return quad @ to_unit


# --- resampling -----------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _axes(h: int, w: int, align_corners: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """Normalised x (w,) and y (h,) coordinates of the output pixel centres."""

    def axis(n: int) -> Tensor:
        if align_corners:
            return (
                torch.linspace(-1.0, 1.0, n, device=device)
                if n > 1
                else torch.zeros(1, device=device)
            )
        return (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1

    return axis(w), axis(h)


def _grid(mats: Tensor, h: int, w: int, align_corners: bool, affine: bool) -> Tensor:
    """Sampling grid (B, h, w, 2): each output pixel centre mapped through its sample's matrix.

    Each row of the matrix is separable, ``m0 * x + (m1 * y + m2)``, so every coordinate is one
    broadcast add of a (B, 1, w) and a (B, h, 1) tensor, written straight into the grid."""
    xs, ys = _axes(h, w, align_corners, mats.device)
    grid = torch.empty(mats.shape[0], h, w, 2, device=mats.device)

    def row(i: int, out: Tensor | None = None) -> Tensor:
        along_x = (mats[:, i, 0, None] * xs)[:, None, :]
        along_y = (mats[:, i, 1, None] * ys + mats[:, i, 2, None])[:, :, None]
        return torch.add(along_x, along_y, out=out)

    row(0, grid[..., 0])
    row(1, grid[..., 1])
    if not affine:
        grid.div_(row(2)[..., None])  # homogeneous divide
    return grid


def _corner_scale(h: int, w: int, device: torch.device, inverse: bool = False) -> Tensor:
    """(3, 3) map from align_corners=False coordinates to align_corners=True ones (or back)."""
    sx = w / (w - 1) if w > 1 else 1.0
    sy = h / (h - 1) if h > 1 else 1.0
    if inverse:
        sx, sy = 1 / sx, 1 / sy
    return torch.diag(torch.tensor([sx, sy, 1.0], device=device))


def warp_batch(
    batch: Sequence[Tensor],
    kinds: Kinds,
    mats: Tensor | None,
    size: int | Sequence[int] | None = None,
    mode: str = "bilinear",
    pad_mode: str = "reflection",
    align_corners: bool = False,
    affine: bool | None = None,
    flip_pairs: FlipPairs | None = None,
) -> Batch:
    """Resample every image of the batch once through per-sample homographies ``mats`` (B, 3, 3)
    (output-normalised -> input-normalised coords, grid_sample's ``align_corners`` convention; None
    means identity) at ``size``, and move the points by the inverse matrices; in the samples a
    matrix mirrors (negative determinant), the ``flip_pairs`` of points swap identities."""
    check_batch(batch, kinds)
    images = [t for t, k in zip(batch, kinds) if k == "image"]
    if not images:
        return tuple(batch)
    b, _, h, w = images[0].shape
    ho, wo = parse_size(size) if size is not None else (h, w)
    if any(t.shape[-2:] != (h, w) for t in images):
        raise ValueError("all images of a batch must share one size to be warped together")
    device = images[0].device
    same_size = (ho, wo) == (h, w)
    if mats is not None:
        mats = mats.to(device=device, dtype=torch.float32)
        # fast path: nothing drawn for any sample (checked on CPU only: no host sync on GPUs)
        if same_size and device.type == "cpu" and torch.equal(mats, torch.eye(3).expand_as(mats)):
            mats = None
    if mats is None and same_size:
        return tuple(batch)  # nothing to do: no resample, points untouched

    identity = mats is None
    resize_only = identity and mode == "bilinear"
    if identity:
        mats = torch.eye(3, device=device).expand(b, 3, 3)
    if affine is None:
        affine = not bool((mats[:, 2, :2] != 0).any())
    # a pure bilinear resize samples exactly where the identity grid would: use the cheaper op
    grid = None if resize_only else _grid(mats, ho, wo, align_corners, affine)

    out = []
    for t, k in zip(batch, kinds):
        if k == "image":
            if grid is None:
                t = F.interpolate(t, (ho, wo), mode="bilinear", align_corners=align_corners)
            else:
                g = grid if grid.dtype == t.dtype else grid.to(t.dtype)
                t = F.grid_sample(t, g, mode, pad_mode, align_corners=align_corners)
        elif k == "points" and not (identity and not align_corners):
            t = warp_points(t, mats, (h, w), (ho, wo), align_corners, flip_pairs)
        out.append(t)
    return tuple(out)


def warp_points(
    points: Tensor,
    mats: Tensor,
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    align_corners: bool = False,
    flip_pairs: FlipPairs | None = None,
    inverse: bool = False,
) -> Tensor:
    """Points (B, n, 2) of images that ``warp_batch`` warps by ``mats`` (from ``in_hw`` to
    ``out_hw`` pixels), where they land in the warped images; in the samples a matrix mirrors
    (negative determinant), the ``flip_pairs`` swap identities. ``inverse``: points found in the
    warped images, mapped back onto the images before the warp (and swapped back)."""
    mats = mats.to(device=points.device, dtype=torch.float32)
    if not inverse:
        move = _point_map(mats, in_hw, out_hw, align_corners)
    elif align_corners:
        move = _corner_scale(*in_hw, mats.device, inverse=True) @ mats
        move = move @ _corner_scale(*out_hw, mats.device)
    else:
        move = mats  # output -> input is what the matrices are
    out = _map_points(points, move)
    return swap_reflected(out, torch.linalg.det(mats) < 0, flip_pairs) if flip_pairs else out


def _point_map(mats: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int], ac: bool) -> Tensor:
    """(B, 3, 3) map of points from input to output align_corners=False coordinates."""
    inv = torch.linalg.inv_ex(mats)[0]  # batched, no error check so no host sync on CUDA
    if ac:
        inv = _corner_scale(*out_hw, mats.device, inverse=True) @ inv
        inv = inv @ _corner_scale(*in_hw, mats.device)
    return inv


def _map_points(pts: Tensor, inv: Tensor) -> Tensor:
    """Apply per-sample homographies (B, 3, 3) to points (B, ..., 2), homogeneous divide."""
    flat = pts.reshape(pts.shape[0], -1, 2).float()
    xyz = torch.matmul(flat, inv[:, :2, :2].transpose(1, 2)) + inv[:, None, :2, 2]
    z = torch.matmul(flat, inv[:, 2:, :2].transpose(1, 2)) + inv[:, None, 2:, 2]
    return (xyz / z).reshape(pts.shape).to(pts.dtype)


class AffineWarp(BatchTransform):
    """Random flip/dihedral, rotation, zoom, perspective warp and resized crop per sample, fused
    into one homography and one ``grid_sample`` per batch (plus the resize to ``size``); on
    validation only the resize. Points follow."""

    order = 30
    _params = (
        "size",
        "do_flip",
        "flip_vert",
        "p_flip",
        "max_rotate",
        "min_zoom",
        "max_zoom",
        "max_warp",
        "p_affine",
        "min_scale",
        "mode",
        "pad_mode",
        "align_corners",
        "batch",
    )

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        do_flip: bool = False,
        flip_vert: bool = False,
        p_flip: float = 0.5,
        max_rotate: float = 0.0,
        min_zoom: float = 1.0,
        max_zoom: float = 1.0,
        max_warp: float = 0.0,
        p_affine: float = 0.75,
        min_scale: float = 1.0,
        mode: str = "bilinear",
        pad_mode: str = "reflection",
        align_corners: bool = False,
        batch: bool = False,
        generator: torch.Generator | None = None,
        flip_pairs: FlipPairs | None = None,
    ) -> None:
        self.size = parse_size(size) if size is not None else None
        self.do_flip, self.flip_vert, self.p_flip = bool(do_flip), bool(flip_vert), float(p_flip)
        self.max_rotate, self.max_warp = float(max_rotate), float(max_warp)
        self.min_zoom, self.max_zoom = float(min_zoom), float(max_zoom)
        self.p_affine, self.min_scale = float(p_affine), float(min_scale)
        self.mode, self.pad_mode, self.align_corners = mode, pad_mode, bool(align_corners)
        self.batch, self.generator = bool(batch), generator
        self.flip_pairs = check_flip_pairs(flip_pairs)  # the DataBlock sets its PointBlock's
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        if self.min_zoom <= 0 or self.max_zoom < self.min_zoom:
            raise ValueError(f"need 0 < min_zoom <= max_zoom, got {min_zoom}, {max_zoom}")

    @property
    def is_random(self) -> bool:
        """Whether any random geometric part is enabled."""
        zoom = self.min_zoom != 1 or self.max_zoom != 1
        return (
            (self.do_flip and self.p_flip > 0)
            or (self.p_affine > 0 and (self.max_rotate != 0 or zoom or self.max_warp != 0))
            or self.min_scale < 1
        )

    def get_matrices(
        self, n: int, in_hw: tuple[int, int], device: torch.device | str = "cpu"
    ) -> tuple[Tensor, bool]:
        """Draw (n, 3, 3) training homographies and whether they are all affine.

        Output coords go through zoom, then rotation, then flip, then warp, then crop to reach the
        input: ``crop @ warp @ flip @ rotate @ zoom``, each part drawn per sample."""
        device = torch.device(device)
        u = draw_uniform(n, 14, device, self.generator, self.batch)
        p = self.p_affine
        mat = None

        def then(m: Tensor) -> None:  # right-multiply: the first part is the nearest the input
            nonlocal mat
            mat = m if mat is None else mat @ m

        if self.min_scale < 1:  # random crop of area fraction in [min_scale, 1], same aspect
            side = (self.min_scale + (1 - self.min_scale) * u[:, 11]).sqrt()
            cx, cy = (1 - side) * (2 * u[:, 12] - 1), (1 - side) * (2 * u[:, 13] - 1)
            then(zoom_mat(1 / side, cx, cy))
        perspective = self.max_warp != 0 and p > 0
        if perspective:
            on = (u[:, 8] < p).float() * self.max_warp
            then(warp_mat((2 * u[:, 9] - 1) * on, (2 * u[:, 10] - 1) * on))
        if self.do_flip and self.p_flip > 0:
            on = u[:, 0] < self.p_flip
            if self.flip_vert:
                then(dihedral_mat(torch.where(on, (u[:, 1] * 8).long().clamp_(0, 7), 0)))
            else:
                then(flip_mat(on))
        if self.max_rotate != 0 and p > 0:
            deg = (2 * u[:, 3] - 1) * self.max_rotate * (u[:, 2] < p).float()
            then(rotate_mat(deg, in_hw[1] / in_hw[0]))
        if (self.min_zoom != 1 or self.max_zoom != 1) and p > 0:
            on = u[:, 4] < p
            zoom = torch.where(on, self.min_zoom + (self.max_zoom - self.min_zoom) * u[:, 5], 1.0)
            free = 1 - 1 / zoom  # the window centre keeps the zoomed window inside the image
            then(zoom_mat(zoom, free * (2 * u[:, 6] - 1), free * (2 * u[:, 7] - 1)))
        if mat is None:
            mat = torch.eye(3, device=device).expand(n, 3, 3)
        return mat, not perspective

    def warp(
        self, batch: Sequence[Tensor], kinds: Kinds, train: bool = True
    ) -> tuple[Batch, Tensor | None]:
        """The batch warped (randomly when ``train``) and the matrices drawn for it (None: none
        drawn), which ``warp_points(..., inverse=True)`` takes to map points found in the result back."""
        check_batch(batch, kinds)
        image = next((t for t, k in zip(batch, kinds) if k == "image"), None)
        if image is None:
            return tuple(batch), None
        mats, affine = None, True
        if train and self.is_random:
            mats, affine = self.get_matrices(image.shape[0], image.shape[-2:], image.device)
        out = warp_batch(
            batch,
            kinds,
            mats,
            self.size,
            self.mode,
            self.pad_mode,
            self.align_corners,
            affine,
            self.flip_pairs,
        )
        return out, mats

    def __call__(self, batch: Sequence[Tensor], kinds: Kinds, train: bool = True) -> Batch:
        """Warp a training batch randomly, or only resize a validation batch."""
        return self.warp(batch, kinds, train)[0]


# --- fastai-style constructors ---------------------------------------------------------------

SizeArg = int | Sequence[int] | None  # one side or (height, width); None: the input's size


def Flip(p: float = 0.5, size: SizeArg = None, **kwargs: Any) -> AffineWarp:
    """Random horizontal flip with probability ``p``."""
    return AffineWarp(size, do_flip=True, p_flip=p, **kwargs)


def Dihedral(p: float = 0.5, size: SizeArg = None, **kwargs: Any) -> AffineWarp:
    """Random flip/transpose (one of the 8 symmetries of the square) with probability ``p``."""
    return AffineWarp(size, do_flip=True, flip_vert=True, p_flip=p, **kwargs)


def Rotate(
    max_deg: float = 10.0, p: float = 0.5, size: SizeArg = None, **kwargs: Any
) -> AffineWarp:
    """Random rotation in [-max_deg, max_deg] degrees with probability ``p``."""
    return AffineWarp(size, max_rotate=max_deg, p_affine=p, **kwargs)


def Zoom(
    min_zoom: float = 1.0,
    max_zoom: float = 1.1,
    p: float = 0.5,
    size: SizeArg = None,
    **kwargs: Any,
) -> AffineWarp:
    """Random zoom in [min_zoom, max_zoom] on a random window with probability ``p``."""
    return AffineWarp(size, min_zoom=min_zoom, max_zoom=max_zoom, p_affine=p, **kwargs)


def Warp(magnitude: float = 0.2, p: float = 0.5, size: SizeArg = None, **kwargs: Any) -> AffineWarp:
    """Random perspective warp moving the corners by up to ``magnitude`` with probability ``p``."""
    return AffineWarp(size, max_warp=magnitude, p_affine=p, **kwargs)


def RandomResizedCropGPU(
    size: int | Sequence[int], min_scale: float = 0.08, **kwargs: Any
) -> AffineWarp:
    """Random crop of area fraction in [min_scale, 1] of each image, resized to ``size``."""
    return AffineWarp(size, min_scale=min_scale, **kwargs)
