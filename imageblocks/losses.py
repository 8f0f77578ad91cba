"""Loss objects that flatten their inputs and know their activation and decoding.

Each wraps a torch loss; a target block's `loss()` picks one (`imageblocks.data.blocks`). The
Learner calls `loss(preds, targs)` in training, `loss.activation` on raw model outputs in
`get_preds`, and `loss.decodes` on activated outputs in `predict`. Depends on torch only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FlattenedLoss",
    "BCEWithLogitsLossFlat",
    "CrossEntropyLossFlat",
    "MSELossFlat",
    "L1LossFlat",
    "binary_cross_entropy",
    "loss_from_config",
]


class FlattenedLoss(nn.Module):
    """A torch loss applied to flattened predictions and targets; prints as the book shows."""

    def __init__(self, func: nn.Module, axis: int = -1, floatify: bool = False):
        super().__init__()
        self.func = func
        self.axis = axis
        self.floatify = floatify

    @property
    def reduction(self) -> str:
        """The wrapped loss's reduction ('mean', 'sum' or 'none')."""
        return self.func.reduction

    @reduction.setter
    def reduction(self, value: str) -> None:
        self.func.reduction = value

    def flatten(self, inp: Tensor, targ: Tensor) -> tuple[Tensor, Tensor]:
        """Reshape `inp` and `targ` to the shapes the wrapped loss expects."""
        return inp.reshape(len(inp), -1), targ.reshape(len(targ), -1)

    def forward(self, inp: Tensor, targ: Tensor) -> Tensor:
        """The loss of `inp` (raw model outputs) against `targ`."""
        inp, targ = self.flatten(inp, targ)
        if self.floatify:
            targ = targ.to(inp.dtype if inp.is_floating_point() else torch.float32)
        return self.func(inp, targ)

    def per_item(self, inp: Tensor, targ: Tensor) -> Tensor:
        """One loss value per sample, shape (B,), e.g. for showing the top losses."""
        old, self.reduction = self.reduction, "none"
        try:
            loss = self(inp, targ)
        finally:
            self.reduction = old
        return loss.reshape(len(inp), -1).float().mean(1)

    def activation(self, x: Tensor) -> Tensor:
        """Raw model outputs to predictions (probabilities, values)."""
        return x

    def decodes(self, x: Tensor) -> Tensor:
        """Activated outputs to decoded predictions (labels, one-hot, coordinates)."""
        return x

    def config(self) -> dict[str, Any]:
        """A JSON-able description of this loss, read back by `loss_from_config`."""
        return {"name": type(self).__name__, "axis": self.axis}

    def __repr__(self) -> str:
        return f"FlattenedLoss of {self.func!r}"


class BCEWithLogitsLossFlat(FlattenedLoss):
    """Binary cross-entropy on logits for multi-label targets; decodes by thresholding."""

    def __init__(self, thresh: float = 0.5, axis: int = -1, **kwargs: Any):
        super().__init__(nn.BCEWithLogitsLoss(**kwargs), axis=axis, floatify=True)
        self.thresh = thresh

    def flatten(self, inp: Tensor, targ: Tensor) -> tuple[Tensor, Tensor]:
        """Classes on the last axis, everything else flattened, so `pos_weight` broadcasts."""
        if inp.ndim <= 1:
            return inp.reshape(-1), targ.reshape(-1)
        inp = inp.movedim(self.axis, -1)
        n = inp.shape[-1]
        targ = targ.reshape(inp.shape) if targ.ndim != inp.ndim else targ.movedim(self.axis, -1)
        return inp.reshape(-1, n), targ.reshape(-1, n)

    def activation(self, x: Tensor) -> Tensor:
        """Sigmoid: one independent probability per class."""
        return torch.sigmoid(x)

    def decodes(self, x: Tensor) -> Tensor:
        """Probabilities to a boolean multi-hot mask."""
        return x > self.thresh

    def config(self) -> dict[str, Any]:
        """A JSON-able description of this loss, with its threshold."""
        return {**super().config(), "thresh": self.thresh}


class CrossEntropyLossFlat(FlattenedLoss):
    """Cross-entropy for single-label targets with the classes on `axis`; decodes by argmax."""

    def __init__(self, axis: int = -1, **kwargs: Any):
        super().__init__(nn.CrossEntropyLoss(**kwargs), axis=axis)

    def flatten(self, inp: Tensor, targ: Tensor) -> tuple[Tensor, Tensor]:
        """Logits to (N, C) and targets to (N,) longs."""
        inp = inp.movedim(self.axis, -1)
        return inp.reshape(-1, inp.shape[-1]), targ.reshape(-1).long()

    def activation(self, x: Tensor) -> Tensor:
        """Softmax over the class axis."""
        return F.softmax(x, dim=self.axis)

    def decodes(self, x: Tensor) -> Tensor:
        """The index of the most likely class."""
        return x.argmax(dim=self.axis)


class MSELossFlat(FlattenedLoss):
    """Mean squared error; (B, n, 2) points and (B, 2n) outputs are both viewed as (B, -1)."""

    def __init__(self, axis: int = -1, **kwargs: Any):
        super().__init__(nn.MSELoss(**kwargs), axis=axis, floatify=True)


class L1LossFlat(FlattenedLoss):
    """Mean absolute error; (B, n, 2) points and (B, 2n) outputs are both viewed as (B, -1)."""

    def __init__(self, axis: int = -1, **kwargs: Any):
        super().__init__(nn.L1Loss(**kwargs), axis=axis, floatify=True)


_LOSSES: dict[str, type[FlattenedLoss]] = {
    c.__name__: c for c in (BCEWithLogitsLossFlat, CrossEntropyLossFlat, MSELossFlat, L1LossFlat)
}


def loss_from_config(config: dict[str, Any]) -> FlattenedLoss:
    """Rebuild a loss from `FlattenedLoss.config()` (used by export, no pickle)."""
    config = dict(config)
    name = config.pop("name")
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(_LOSSES)}")
    return _LOSSES[name](**config)


def binary_cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    """The book's hand-written binary cross-entropy on logits (for teaching, not training)."""
    inputs = inputs.sigmoid()
    return -torch.where(targets == 1, inputs, 1 - inputs).log().mean()
