"""What autograd keeps for the backward, counted by saved-tensor hooks (shared by the layer tests)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def saved_bytes(
    model: nn.Module, x: torch.Tensor, inner: contextlib.AbstractContextManager | None = None
) -> tuple[torch.Tensor, int]:
    """The output of `model(x)`, and the bytes autograd keeps that are not parameters (each
    storage once), seen by hooks entered around `inner` (e.g. `lean_saved_activations()`)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        inner or contextlib.nullcontext(),
    ):
        out = model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return out, sum(n for ptr, n in storages.items() if ptr not in params)
