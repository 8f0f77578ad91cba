"""Layer groups and freezing: which parameters train, body first and head last.

A model built by `create_vision_model` is `nn.Sequential(body, head)`; its layer groups are the
body's two halves (when timm knows its stages) and the head. Freezing the first groups leaves the
normalisation layers training: their statistics and affine parameters must follow the new data.
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.models import group_parameters
from torch import nn

# Layers whose parameters keep training in a frozen body (and get no weight decay).
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)


def norm_param_ids(model: nn.Module) -> set[int]:
    """The `id`s of the parameters that belong directly to normalisation layers of `model`."""
    return {
        id(p)
        for m in model.modules()
        if isinstance(m, NORM_TYPES)
        for p in m.parameters(recurse=False)
    }


def _body_groups(body: nn.Module) -> list[list[nn.Parameter]]:
    """The body's parameters in two halves, stem side first, when timm knows its stages."""
    matcher = getattr(body, "group_matcher", None)
    if matcher is None:
        return [list(body.parameters())]
    named = dict(body.named_parameters())
    by_group = group_parameters(body, matcher(coarse=True))
    ids = sorted(by_group)
    cut = (len(ids) + 1) // 2  # ResNet: stem, layer1, layer2 | layer3, layer4
    return [
        [named[n] for g in ids[:cut] for n in by_group[g]],
        [named[n] for g in ids[cut:] for n in by_group[g]],
    ]


def param_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Layer groups for discriminative learning rates: the body's (usually two), then the head."""
    if not (isinstance(model, nn.Sequential) and len(model) >= 2):
        return [list(model.parameters())]
    head = [p for i in range(1, len(model)) for p in model[i].parameters()]
    return [g for g in [*_body_groups(model[0]), head] if g]


def freeze_to(
    model: nn.Module,
    n: int,
    groups: Sequence[Sequence[nn.Parameter]] | None = None,
    train_norm: bool = True,
) -> None:
    """Freeze the first `n` layer groups (negative: all but the last `-n`), train the rest.

    `groups` defaults to `param_groups(model)`. With `train_norm`, normalisation layers in frozen
    groups keep training: their statistics must follow the new data.
    """
    groups = param_groups(model) if groups is None else groups
    norm = norm_param_ids(model) if train_norm else set()
    n_frozen = n if n >= 0 else max(len(groups) + n, 0)
    for i, group in enumerate(groups):
        for p in group:
            p.requires_grad_(i >= n_frozen or id(p) in norm)


def freeze_body(model: nn.Module) -> None:
    """Train only the head (and the body's normalisation layers)."""
    freeze_to(model, -1)


def unfreeze(model: nn.Module) -> None:
    """Train every parameter."""
    freeze_to(model, 0)
