"""Pictures: `show_batch`, `show_results`, `plot_function`, with matplotlib as the book does;
each shown once in a notebook (`InlineFigure`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from imageblocks.data.blocks import Task, task_of
from imageblocks.models.grad_cam import grad_cam


class InlineFigure(Figure):
    """A matplotlib figure that a notebook shows once, whether a cell returns it or only draws it.

    Jupyter's inline backend shows every figure a cell drew, and shows the cell's value too: a
    function that draws a figure and returns it (`show_batch`) would appear twice. Displayed in
    a notebook, this figure shows itself and leaves pyplot, so the second display finds nothing.
    """

    def _ipython_display_(self) -> None:
        import matplotlib
        import matplotlib.pyplot as plt
        from IPython.core.pylabtools import print_figure
        from IPython.display import Image, display

        if "inline" not in matplotlib.get_backend():  # a window or a terminal: as pyplot does
            display({"text/plain": repr(self)}, raw=True)
            return
        display(Image(print_figure(self, "png")))
        plt.close(self)


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`plt.subplots` making an `InlineFigure` (shown once in a notebook)."""
    import matplotlib.pyplot as plt

    return plt.subplots(*args, FigureClass=InlineFigure, **kwargs)


def _grid(n: int, nrows: int | None, ncols: int | None, figsize: tuple | None, scale: float = 3.0):
    if nrows is None and ncols is None:
        ncols = math.ceil(math.sqrt(n))
    if nrows is None:
        nrows = math.ceil(n / ncols)
    if ncols is None:
        ncols = math.ceil(n / nrows)
    figsize = figsize or (ncols * scale, nrows * scale)
    fig, axs = subplots(nrows, ncols, figsize=figsize, squeeze=False)
    for ax in axs.flat:
        ax.set_axis_off()
    return fig, list(axs.flat)


def show_image(img: torch.Tensor, ax: Any, title: str | None = None) -> None:
    """Show a (3, H, W) float image in [0, 1] on `ax`."""
    arr = img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    ax.imshow(arr)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def show_points(
    pts: torch.Tensor, ax: Any, size: tuple[int, int], color: str = "red", marker: str = "x"
) -> None:
    """Draw [-1, 1] points on an image of `size` (h, w)."""
    h, w = size
    p = pts.detach().float().cpu().reshape(-1, 2).numpy()
    ax.scatter((p[:, 0] + 1) * w / 2, (p[:, 1] + 1) * h / 2, s=60, c=color, marker=marker)


def _label_text(block: Any, y: torch.Tensor) -> str:
    """A target's labels as a title: the class, or the classes joined by ';'."""
    task, vocab = task_of(block), getattr(block, "vocab", None)
    if vocab is None or task not in (Task.CATEGORY, Task.MULTILABEL):
        return ""
    if task is Task.CATEGORY:
        return str(vocab[int(y)])
    return ";".join(str(v) for v in vocab[y.cpu() > 0.5]) or "(none)"


def show_batch(
    dl: Any,
    b: tuple | None = None,
    max_n: int = 9,
    nrows: int | None = None,
    ncols: int | None = None,
    figsize: tuple | None = None,
    **kwargs: Any,
):
    """Show the first images of a batch with their labels or points; returns the figure."""
    b = dl.one_batch() if b is None else b
    b = dl.decode(b)
    kinds = dl.kinds or ("image",) + ("target",) * (len(b) - 1)
    x = b[kinds.index("image")]
    n = min(max_n, len(x)) if nrows is None or ncols is None else min(nrows * ncols, len(x))
    fig, axs = _grid(n, nrows, ncols, figsize)
    blocks = [p.block for p in dl.dataset.dsets.pipelines] if hasattr(dl.dataset, "dsets") else []
    for i in range(n):
        title = None
        for k, (o, kind) in enumerate(zip(b, kinds)):
            if kind == "points":
                show_points(o[i], axs[i], x.shape[-2:])
            elif kind == "target" and k < len(blocks):
                title = _label_text(blocks[k], o[i])
        show_image(x[i], axs[i], title)
    fig.tight_layout()
    return fig


def plot_function(
    f: Callable,
    tx: str | None = None,
    ty: str | None = None,
    title: str | None = None,
    min: float = -2,
    max: float = 2,
    figsize: tuple = (6, 4),
):
    """Plot `f` between `min` and `max`, as the book does for sigmoid_range."""
    x = torch.linspace(min, max, 100)
    fig, ax = subplots(figsize=figsize)
    ax.plot(x.numpy(), np.asarray(f(x)))
    if tx is not None:
        ax.set_xlabel(tx)
    if ty is not None:
        ax.set_ylabel(ty)
    if title is not None:
        ax.set_title(title)
    return fig


def show_results(
    learn: Any,
    dl: Any,
    max_n: int = 9,
    nrows: int | None = None,
    ncols: int | None = None,
    figsize: tuple | None = None,
    cam: bool = False,
):
    """Targets beside predictions for the first batch of `dl`; returns the figure.

    Points: the target in green and the prediction in red on each image. Labels: the title
    shows the true labels over the predicted ones; `cam=True` lays each image's Grad-CAM of its
    most likely class over it (`learn.cam` for one image and any class)."""
    if cam and task_of(learn.dls.target_block) not in (Task.MULTILABEL, Task.CATEGORY):
        raise ValueError("show_results(cam=True) needs a classification model, not key points")
    b = dl.one_batch()
    n_inp = learn.dls.n_inp
    xs, ys = b[:n_inp], b[n_inp:]
    learn.model.eval()
    with torch.no_grad():
        raw = learn.model(*xs).float()
    preds = getattr(learn.loss_func, "activation", lambda x: x)(raw)
    x = dl.decode(b)[0]
    n = min(max_n, len(x)) if nrows is None else min(nrows * (ncols or 1), len(x))
    target = learn.dls.target_block
    if task_of(target) is Task.POINTS:
        nrows = nrows or math.ceil(n / (ncols or 3))
        fig, axs = _grid(n, nrows, ncols or math.ceil(n / nrows), figsize)
        for i in range(n):
            show_image(x[i], axs[i])
            show_points(ys[0][i], axs[i], x.shape[-2:], color="lime", marker="o")
            show_points(preds[i], axs[i], x.shape[-2:], color="red", marker="x")
        fig.suptitle("target (green) / prediction (red)", fontsize=10)
        fig.tight_layout()
        return fig
    fig, axs = _grid(n, nrows, ncols, figsize)
    decoded = learn.decode_preds(preds)
    heat = grad_cam(learn.model, xs[0][:n], preds[:n].argmax(-1)).cpu() if cam else None
    for i in range(n):
        truth = _label_text(target, ys[0][i]) if ys else ""
        guess = _label_text(
            target, decoded[i].float() if decoded.dtype == torch.bool else decoded[i]
        )
        color = "green" if truth == guess else "red"
        show_image(x[i], axs[i])
        if heat is not None:
            axs[i].imshow(heat[i, 0].numpy(), cmap="jet", alpha=0.5)
        axs[i].set_title(f"{truth}\n{guess}", fontsize=9, color=color)
    fig.tight_layout()
    return fig
