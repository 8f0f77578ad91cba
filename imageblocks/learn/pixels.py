"""Key points in the original image's pixels: the scale of each item's [-1, 1] coordinates."""

from __future__ import annotations

import torch

from imageblocks.data.loaders import DataLoader
from imageblocks.image import decode_image
from imageblocks.transforms.item import source_region

__all__ = ["point_distances", "source_half_sizes"]


def source_half_sizes(dl: DataLoader) -> torch.Tensor | None:
    """Half the width and height, in pixels of the original image, of the region each item of
    `dl` shows the model (the scale of [-1, 1] coordinates); None when unknown."""
    ds = getattr(dl, "dataset", None)
    dsets, idxs = getattr(ds, "dsets", None), getattr(ds, "idxs", None)
    if dsets is None or idxs is None:
        return None
    pipe = next((p for p in dsets.pipelines if p.kind == "image"), None)
    if pipe is None:
        return None
    tfms = list(getattr(ds, "item_tfms", []))
    halves = []
    for i in idxs:
        _, (w, h) = decode_image(pipe.get(dsets.items[i]), draft=(1, 1))
        x0, y0, x1, y1 = source_region(tfms, w, h)
        halves.append(((x1 - x0) / 2, (y1 - y0) / 2))
    return torch.tensor(halves, dtype=torch.float32)


def point_distances(preds: torch.Tensor, targs: torch.Tensor, halves: torch.Tensor) -> torch.Tensor:
    """Distance of each predicted point to its target, (items, points), in the pixels whose
    half-sizes per item are `halves` (items, 2); `preds`, `targs` in [-1, 1]."""
    diff = (preds - targs).reshape(len(targs), -1, 2) * halves[:, None, :].to(preds.dtype)
    return diff.norm(dim=-1)
