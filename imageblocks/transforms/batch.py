"""aug_transforms: fastai's standard batch augmentation set, composed from the batch transforms.

The transforms themselves live in ``base`` (the contract), ``geometry`` (one fused resample per
batch, points follow), ``lighting`` and ``normalize``.
"""

from __future__ import annotations

from collections.abc import Sequence

from imageblocks.transforms.base import BatchTransform
from imageblocks.transforms.geometry import AffineWarp
from imageblocks.transforms.lighting import Lighting

__all__ = ["aug_transforms"]


def aug_transforms(
    mult: float = 1.0, do_flip: bool = True, flip_vert: bool = False,
    max_rotate: float = 10.0, min_zoom: float = 1.0, max_zoom: float = 1.1,
    max_lighting: float = 0.2, max_warp: float = 0.2, p_affine: float = 0.75,
    p_lighting: float = 0.75, xtra_tfms: BatchTransform | Sequence[BatchTransform] | None = None,
    size: int | Sequence[int] | None = None, mode: str = "bilinear", pad_mode: str = "reflection",
    align_corners: bool = False, batch: bool = False, min_scale: float = 1.0,
) -> list[BatchTransform]:  # fmt: skip
    """The standard augmentation set: one fused geometric transform and one lighting transform."""
    max_rotate, max_lighting, max_warp = max_rotate * mult, max_lighting * mult, max_warp * mult
    tfms: list[BatchTransform] = []
    geo = AffineWarp(
        size=size,
        do_flip=do_flip,
        flip_vert=flip_vert,
        max_rotate=max_rotate,
        min_zoom=min_zoom,
        max_zoom=max_zoom,
        max_warp=max_warp,
        p_affine=p_affine,
        min_scale=min_scale,
        mode=mode,
        pad_mode=pad_mode,
        align_corners=align_corners,
        batch=batch,
    )
    if geo.is_random or geo.size is not None:
        tfms.append(geo)
    if max_lighting:
        tfms.append(Lighting(max_lighting, max_lighting, p=p_lighting, batch=batch))
    if xtra_tfms is not None:
        tfms.extend([xtra_tfms] if callable(xtra_tfms) else xtra_tfms)
    return tfms
