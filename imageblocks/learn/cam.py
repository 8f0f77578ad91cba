"""Class activation maps of a learner's predictions: `CAM` (image, heatmap, class) and
`learner_cam`, behind `Learner.cam`; the maps themselves come from `models/grad_cam.py`."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from imageblocks.data.blocks import Task, task_of
from imageblocks.data.loaders import collate
from imageblocks.learn.predict import activation, decode_preds
from imageblocks.models.grad_cam import grad_cam
from imageblocks.show import subplots

if TYPE_CHECKING:
    from imageblocks.learn.learner import Learner

__all__ = ["CAM", "learner_cam", "overlay", "predicted_classes"]


def overlay(image: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.5, cmap: str = "jet"):
    """A PIL image: `image` (3, H, W) in [0, 1] under `heatmap` (H, W) coloured by `cmap`."""
    from matplotlib import colormaps

    rgb = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    heat = colormaps[cmap](heatmap.detach().float().cpu().numpy())[..., :3]
    mixed = (1 - alpha) * rgb + alpha * heat
    return Image.fromarray((mixed * 255).round().astype(np.uint8))


@dataclass
class CAM:
    """A class activation map: the image the model saw, the (H, W) heatmap in [0, 1] in that
    image's frame, the class and its predicted probability."""

    image: torch.Tensor
    heatmap: torch.Tensor
    label: str
    prob: float

    def overlay(self, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
        """The image with the heatmap laid over it."""
        return overlay(self.image, self.heatmap, alpha, cmap)

    def png(self, alpha: float = 0.5) -> bytes:
        """The overlay as PNG bytes."""
        buf = io.BytesIO()
        self.overlay(alpha).save(buf, format="PNG")
        return buf.getvalue()

    def show(self, ax: Any = None, alpha: float = 0.5, cmap: str = "jet") -> Any:
        """Draw the overlay on `ax` (a new figure if None), titled with the class; the axes."""
        if ax is None:
            _, ax = subplots(figsize=(4, 4))
        ax.imshow(self.overlay(alpha, cmap))
        ax.set_title(f"{self.label} {self.prob:.2f}", fontsize=9)
        ax.set_axis_off()
        return ax

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:
        h, w = self.heatmap.shape
        return f"CAM(label={self.label!r}, prob={self.prob:.4f}, size={w}x{h})"


def _class_index(vocab: Sequence[str], label: str | int) -> int:
    """The index of `label` (a class name or an index) in `vocab`."""
    names = [str(v) for v in vocab]
    if isinstance(label, (int, np.integer)) and 0 <= int(label) < len(names):
        return int(label)
    if str(label) in names:
        return names.index(str(label))
    raise ValueError(f"{label!r} is not one of the model's classes: {names}")


def predicted_classes(learn: Learner, probs: torch.Tensor) -> list[int]:
    """The classes `predict` would give for one image's probabilities (multi-label: those over
    their thresholds, or the most likely one when none is), as indices."""
    decided = decode_preds(learn, probs[None])[0].cpu()
    if decided.dtype == torch.bool:
        hits = torch.nonzero(decided).flatten().tolist()
        return hits or [int(probs.argmax())]
    return [int(decided)]


def learner_cam(
    learn: Learner, item: Any, label: str | int | None = None, layer: nn.Module | None = None
) -> CAM | list[CAM]:
    """Grad-CAM of `item` (path, bytes, PIL image, array) for `label` (a class name or index):
    a `CAM`; for the predicted labels when `label` is None: a list of them, most likely first."""
    target = learn.dls.target_block
    if task_of(target) not in (Task.MULTILABEL, Task.CATEGORY) or learn.dls.vocab is None:
        raise ValueError(
            "class activation maps need a classification model (multi-label or single label); "
            f"this learner's target is {type(target).__name__}"
        )
    dl = learn.dls.test_dl([item])
    x = dl.process(collate([dl.dataset[0]]))[0]
    vocab = learn.dls.vocab
    with torch.no_grad():
        learn.model.eval()
        probs = activation(learn.loss_func)(learn.model(x).float())[0].cpu()
    if label is None:
        classes = sorted(predicted_classes(learn, probs), key=lambda c: -float(probs[c]))
    else:
        classes = [_class_index(vocab, label)]
    maps = grad_cam(learn.model, x, torch.tensor([classes]), layer)[0].cpu()
    shown = dl.decode((x,))[0][0].detach().float().cpu()
    cams = [CAM(shown, m, str(vocab[c]), float(probs[c])) for c, m in zip(classes, maps)]
    return cams[0] if label is not None else cams
