"""Swapping a model's submodules in place: `replace_modules`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(model: nn.Module, build: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Put `build(child)` in place of every submodule of `model` for which it returns a module."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = build(child)
            if replacement is not None:
                setattr(parent, name, replacement)
    return model
