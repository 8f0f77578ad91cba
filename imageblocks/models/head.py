"""The head put on a pretrained body: pooling, two linear layers, and an optional output range."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def sigmoid_range(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Squash `x` into `(lo, hi)` with a sigmoid: `torch.sigmoid(x) * (hi - lo) + lo`."""
    return torch.sigmoid(x) * (hi - lo) + lo


class SigmoidRange(nn.Module):
    """`sigmoid_range` as a layer, so a model's outputs always lie in `(lo, hi)`."""

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.lo, self.hi = float(lo), float(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sigmoid_range(x, self.lo, self.hi)

    def extra_repr(self) -> str:
        return f"lo={self.lo}, hi={self.hi}"


class AdaptiveConcatPool2d(nn.Module):
    """Adaptive average and max pooling side by side: `2 * C` channels out for `C` in."""

    def __init__(self, output_size: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(output_size)
        self.max = nn.AdaptiveMaxPool2d(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.avg(x), self.max(x)], dim=1)


def create_head(
    n_features: int,
    n_out: int,
    lin_ftrs: Sequence[int] | None = None,
    ps: float | Sequence[float] = 0.5,
    concat_pool: bool = True,
    first_bn: bool = True,
    bn_final: bool = False,
    y_range: tuple[float, float] | None = None,
) -> nn.Sequential:
    """Pool the body's `n_features` maps, then BN/dropout/linear blocks down to `n_out` outputs."""
    pool = AdaptiveConcatPool2d() if concat_pool else nn.AdaptiveAvgPool2d(1)
    sizes = [n_features * (2 if concat_pool else 1), *(lin_ftrs if lin_ftrs is not None else [512])]
    sizes.append(n_out)
    n_linear = len(sizes) - 1
    if isinstance(ps, (int, float)):
        # hidden blocks drop half as much as the last one
        ps = [ps / 2] * (n_linear - 1) + [ps]
    ps = list(ps)
    if len(ps) != n_linear:
        raise ValueError(f"ps has {len(ps)} values but the head has {n_linear} linear layers.")

    layers: list[nn.Module] = [pool, nn.Flatten()]
    for i, (n_in, n_next, p) in enumerate(zip(sizes[:-1], sizes[1:], ps)):
        if i > 0 or first_bn:
            layers.append(nn.BatchNorm1d(n_in))
        layers.append(nn.Dropout(p))
        linear = nn.Linear(n_in, n_next)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < n_linear - 1:
            layers.append(nn.ReLU(inplace=True))
    if bn_final:
        layers.append(nn.BatchNorm1d(n_out))
    if y_range is not None:
        layers.append(SigmoidRange(*y_range))
    return nn.Sequential(*layers)
