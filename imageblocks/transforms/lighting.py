"""Lighting batch augmentation: random brightness and contrast per sample, in logit space.

Why this is hand-written: torchvision's colour ops take one factor per call, not a tensor of
per-sample factors; here each sample's brightness and contrast are drawn on the batch's device and
applied to the whole batch in one fused ``addcmul`` in logit space (fastai's formula), so values
stay in [0, 1] with no clamp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from imageblocks.transforms.base import Batch, BatchTransform, Kinds, check_batch, draw_uniform

__all__ = ["Brightness", "Contrast", "Lighting"]


class Lighting(BatchTransform):
    """Random brightness and contrast per sample, in logit space so values stay in [0, 1]:
    ``sigmoid((logit(x) + logit(b)) * c)`` with b around 0.5 and c around 1 (training only)."""

    order = 40
    _params = ("max_brightness", "max_contrast", "p", "batch")

    def __init__(
        self,
        max_brightness: float = 0.2,
        max_contrast: float = 0.2,
        p: float = 0.75,
        batch: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if not (0 <= max_brightness < 1 and 0 <= max_contrast < 1):
            raise ValueError("max_brightness and max_contrast must be in [0, 1)")
        self.max_brightness, self.max_contrast = float(max_brightness), float(max_contrast)
        self.p, self.batch, self.generator = float(p), bool(batch), generator

    def get_params(self, n: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """Draw per-sample (logit brightness shift, contrast factor), each (n,)."""
        u = draw_uniform(n, 4, torch.device(device), self.generator, self.batch)
        change = 0.5 + self.max_brightness * (u[:, 1] - 0.5)  # in 0.5 * (1 -+ max_brightness)
        shift = torch.logit(change) * (u[:, 0] < self.p)
        log_c = -math.log1p(-self.max_contrast) * (2 * u[:, 3] - 1)  # log-uniform around 1
        contrast = torch.exp(log_c * (u[:, 2] < self.p))
        return shift, contrast

    def __call__(self, batch: Sequence[Tensor], kinds: Kinds, train: bool = True) -> Batch:
        """Change brightness and contrast of the images of a training batch."""
        check_batch(batch, kinds)
        if not train or self.p <= 0 or (self.max_brightness == 0 and self.max_contrast == 0):
            return tuple(batch)
        out, params = [], None
        for t, k in zip(batch, kinds):
            if k == "image":
                if params is None:
                    shift, contrast = self.get_params(t.shape[0], t.device)
                    view = (-1,) + (1,) * (t.dim() - 1)
                    params = (
                        (shift * contrast).to(t.dtype).view(view),
                        contrast.to(t.dtype).view(view),
                    )
                logit = torch.logit(t, eps=1e-7)  # new tensor: the input is never modified
                t = torch.addcmul(params[0], logit, params[1], out=logit).sigmoid_()
            out.append(t)
        return tuple(out)


def Brightness(max_lighting: float = 0.2, p: float = 0.75, **kwargs: Any) -> Lighting:
    """Random brightness change of up to ``max_lighting`` with probability ``p``."""
    return Lighting(max_brightness=max_lighting, max_contrast=0.0, p=p, **kwargs)


def Contrast(max_lighting: float = 0.2, p: float = 0.75, **kwargs: Any) -> Lighting:
    """Random contrast scale in [1 - max_lighting, 1 / (1 - max_lighting)], probability ``p``."""
    return Lighting(max_brightness=0.0, max_contrast=max_lighting, p=p, **kwargs)
