"""The Learner's optimiser: AdamW over layer groups, no weight decay on norm layers and biases.

Each layer group becomes two param groups, one that decays and one that does not; every group
carries its `layer_group` index (discriminative learning rates) and a `decay` flag, so one fit
can run with its own weight decay (`weight_decay`) without rebuilding the optimiser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from imageblocks.learn.schedule import set_hypers
from imageblocks.models.freezing import norm_param_ids


def fused_adamw_on(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for `device` (CUDA; CPU from torch 2.4)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4)


def decay_groups(
    model: nn.Module, layer_groups: Sequence[Sequence[nn.Parameter]], wd: float
) -> list[dict[str, Any]]:
    """Param groups: per layer group, the weights that decay by `wd`, then those that do not
    (norm layers, biases and other 1-d parameters); empty groups are left out."""
    norm = norm_param_ids(model)
    groups = []
    for k, params in enumerate(layer_groups):
        decays = [p.ndim > 1 and id(p) not in norm for p in params]
        decay = [p for p, d in zip(params, decays) if d]
        no_decay = [p for p, d in zip(params, decays) if not d]
        groups.append({"params": decay, "weight_decay": wd, "layer_group": k, "decay": True})
        groups.append({"params": no_decay, "weight_decay": 0.0, "layer_group": k, "decay": False})
    return [g for g in groups if g["params"]]


def create_opt(
    opt_func: Callable[..., torch.optim.Optimizer],
    model: nn.Module,
    layer_groups: Sequence[Sequence[nn.Parameter]],
    lr: float,
    wd: float,
    mom: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    """`opt_func` (AdamW by default) over `decay_groups`, beta1 `mom`, fused where it can be."""
    kwargs: dict[str, Any] = {"lr": lr, "betas": (mom, 0.99), "eps": 1e-5}
    if opt_func is torch.optim.AdamW and fused_adamw_on(device):
        kwargs["fused"] = True  # one kernel per step for all tensors: 3 ms against 7 on CPU
    return opt_func(decay_groups(model, layer_groups, wd), **kwargs)


def set_group_hypers(opt: torch.optim.Optimizer, lrs: Sequence[float], mom: float | None) -> None:
    """Each param group's lr from `lrs[layer_group]`; beta1 (or momentum) `mom` when given."""
    set_hypers(opt, [float(lrs[g["layer_group"]]) for g in opt.param_groups], mom)


@contextlib.contextmanager
def weight_decay(opt: torch.optim.Optimizer, wd: float) -> Iterator[None]:
    """Decay the `decay` groups of `opt` by `wd` inside the block; their values come back after.

    The groups are looked up again on exit: loading an optimiser state replaces the group dicts.
    """
    before = [g["weight_decay"] for g in opt.param_groups]
    for g in opt.param_groups:
        if g.get("decay"):
            g["weight_decay"] = wd
    try:
        yield
    finally:
        for g, value in zip(opt.param_groups, before):
            g["weight_decay"] = value
