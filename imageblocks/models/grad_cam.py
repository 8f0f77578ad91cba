"""Grad-CAM: where in an image a class's score comes from, as one map per image and class.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a layer's activations by the mean
gradient of the class's score (the logit) with respect to it, sums the channels, keeps the
positive part and scales it to the input's size. It is written out here (one forward hook and
one `torch.autograd.grad` call) rather than taken from pytorch-grad-cam (`grad-cam` on PyPI):
that package requires opencv-python and ttach for the same few lines, and it hooks the layer's
backward pass, which a frozen body (no parameter needs a gradient) does not run. Here the hook
hands the head a leaf copy of the activations, so a frozen body works and no `.grad` is touched.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["cam_layer", "grad_cam"]


def cam_layer(model: nn.Module, layer: nn.Module | None = None) -> nn.Module:
    """The layer Grad-CAM looks at: `layer`, else the body (`model[0]`) of a body+head model."""
    if layer is not None:
        return layer
    if isinstance(model, nn.Sequential) and len(model) >= 2:
        return model[0]
    raise ValueError(
        f"cannot tell which layer of this {type(model).__name__} is its body: pass layer= "
        "(the last convolutional block, whose output is (batch, channels, height, width))"
    )


def grad_cam(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: nn.Module | None = None
) -> torch.Tensor:
    """Grad-CAM maps of `classes` (B, K) for the images `x` (B, 3, H, W): (B, K, H, W) in [0, 1].

    Each map is scaled by its own maximum (all zeros when no position raises the class's score).
    """
    classes = torch.as_tensor(classes, device=x.device).long().reshape(len(x), -1)
    kept: list[torch.Tensor] = []
    caller = threading.get_ident()  # a service may run the model in other threads meanwhile

    def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != caller:
            return None
        kept.append(output.detach().float().requires_grad_(True))
        return kept[-1]

    was_training = model.training
    model.eval()
    handle = cam_layer(model, layer).register_forward_hook(keep)
    try:
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            logits = model(x.float()).float().reshape(len(x), -1)
            if not kept or kept[-1].ndim != 4:
                raise ValueError(
                    "Grad-CAM needs a layer whose output is (batch, channels, height, width): "
                    "pass layer= (e.g. the body's last convolutional block)"
                )
            acts, maps = kept[-1], []
            for k in range(classes.shape[1]):
                score = logits.gather(1, classes[:, k : k + 1]).sum()
                (grads,) = torch.autograd.grad(score, acts, retain_graph=k < classes.shape[1] - 1)
                weights = grads.mean(dim=(2, 3), keepdim=True)
                maps.append(F.relu((weights * acts).sum(1)))
    finally:
        handle.remove()
        model.train(was_training)
    cams = torch.stack(maps, 1).detach()  # (B, K, h, w)
    cams = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(0)
    peak = cams.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, cams / peak.clamp_min(1e-12), torch.zeros_like(cams))
