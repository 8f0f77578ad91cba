"""Normalize: per-channel mean/std normalisation of batch images, undone by ``decode``.

Why this is hand-written: torchvision's ``Normalize`` has no inverse and knows no ``kinds``; here
the statistics are cached per device and dtype and applied as one ``addcmul`` (x * 1/std - mean/std)
to the images of a batch only, and ``decode`` undoes it for display.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from imageblocks.transforms.base import Batch, BatchTransform, Kinds, check_batch

__all__ = ["Normalize", "imagenet_stats"]

imagenet_stats = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class Normalize(BatchTransform):
    """Subtract ``mean`` and divide by ``std`` per channel on training and validation images;
    ``decode`` undoes it."""

    order = 99
    _params = ("mean", "std")

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        self.mean = tuple(float(v) for v in torch.as_tensor(mean).flatten().tolist())
        self.std = tuple(float(v) for v in torch.as_tensor(std).flatten().tolist())
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std must have one value per channel: {mean}, {std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive: {std}")
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, ...]] = {}

    @classmethod
    def from_stats(cls, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Normalize:
        """Build from per-channel statistics, e.g. ``Normalize.from_stats(*imagenet_stats)``."""
        return cls(mean, std)

    def _stats(self, x: Tensor) -> tuple[Tensor, ...]:
        """(mean, std, 1/std, -mean/std) shaped for ``x``, cached per device and dtype."""
        if x.dim() < 2 or x.shape[1] != len(self.mean):
            raise ValueError(
                f"Normalize has {len(self.mean)} channel stats but images of shape "
                f"{tuple(x.shape)} (expected (B, {len(self.mean)}, H, W))"
            )
        key = (x.device, x.dtype)
        if key not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float64).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1)
            stats = (mean, std, 1 / std, -mean / std)
            self._cache[key] = tuple(s.to(device=x.device, dtype=x.dtype) for s in stats)
        return self._cache[key]

    def __call__(self, batch: Sequence[Tensor], kinds: Kinds, train: bool = True) -> Batch:
        """Normalise the images: (x - mean) / std, as x * (1 / std) + (-mean / std)."""
        return self._affine(batch, kinds, inverse=False)

    def decode(self, batch: Sequence[Tensor], kinds: Kinds) -> Batch:
        """Undo the normalisation of the images: x * std + mean."""
        return self._affine(batch, kinds, inverse=True)

    def _affine(self, batch: Sequence[Tensor], kinds: Kinds, inverse: bool) -> Batch:
        """Every image `t` as `t * inv_std + shift`, or back (`inverse`) as `t * std + mean`."""
        check_batch(batch, kinds)
        out = []
        for t, k in zip(batch, kinds):
            if k == "image":
                mean, std, inv_std, shift = self._stats(t)
                t = torch.addcmul(mean, t, std) if inverse else torch.addcmul(shift, t, inv_std)
            out.append(t)
        return tuple(out)
