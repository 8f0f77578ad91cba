"""The batch-transform contract: the base class every batch transform extends and its helpers.

A transform is called as ``tfm(batch, kinds, train)`` where ``batch`` is a tuple of plain tensors
and ``kinds`` names each of them: ``"image"`` (float ``(B, C, H, W)`` in [0, 1]), ``"points"``
(float ``(B, n, 2)``, x then y, in [-1, 1] of the image with grid_sample's ``align_corners=False``
convention) or anything else (left untouched). Transforms run in increasing ``order``; ``decode``
undoes what can be undone (for display). Random parameters are drawn per sample as tensors on the
batch's device, from torch's global RNG unless a generator is given, so ``torch.manual_seed``
makes batches reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batch", "BatchTransform", "Kinds", "check_batch", "draw_uniform"]

Batch = tuple[Tensor, ...]
Kinds = Sequence[str]


def check_batch(batch: Sequence[Tensor], kinds: Kinds) -> None:
    """Fail clearly when the batch and its kinds do not line up."""
    if len(batch) != len(kinds):
        raise ValueError(f"batch has {len(batch)} tensors but kinds names {len(kinds)}: {kinds}")


class BatchTransform:
    """Base of the transforms applied to a collated batch on its device."""

    order: int = 50
    _params: tuple[str, ...] = ()

    def __call__(self, batch: Sequence[Tensor], kinds: Kinds, train: bool = True) -> Batch:
        """Transform the batch; ``train`` is False for validation batches."""
        raise NotImplementedError

    def decode(self, batch: Sequence[Tensor], kinds: Kinds) -> Batch:
        """Undo the transform where it can be undone (identity by default)."""
        return tuple(batch)

    def params(self) -> dict[str, Any]:
        """The parameters shown by ``repr`` and summaries."""
        return {k: getattr(self, k) for k in self._params}

    def __repr__(self) -> str:
        params = self.params()
        return f"{type(self).__name__} -- {params}" if params else type(self).__name__


def draw_uniform(
    n: int, k: int, device: torch.device, generator: torch.Generator | None, same: bool
) -> Tensor:
    """(n, k) uniforms in [0, 1) on ``device``; one row shared by all samples when ``same``."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(1 if same else n, k, generator=generator, device=gen_device).to(device)
    return u.expand(n, k) if same else u
