"""LossHistory: the losses of every fit of a learner, kept across fits, and their plot."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from imageblocks.learn.callbacks import Callback
from imageblocks.learn.learner import Learner

__all__ = ["LossHistory"]


class LossHistory(Callback):
    """A callback keeping the losses of every fit (the recorder keeps only the last one)."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.valid: list[tuple[int, float]] = []

    def after_batch(self, learn: Learner) -> None:
        """Keep the smoothed training loss of this batch."""
        self.train.append(learn.recorder.smooth_loss)

    def after_epoch(self, learn: Learner) -> None:
        """Keep the validation loss of this epoch, at the number of batches seen so far."""
        values = learn.recorder.values[-1]
        if len(values) > 1 and values[1] is not None:
            self.valid.append((len(self.train), values[1]))

    def plot(self) -> Any:
        """The training (smoothed) and validation losses against the batch; a Figure."""
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(range(1, len(self.train) + 1), self.train, label="train (smoothed)")
        if self.valid:
            ax.plot(*zip(*self.valid), marker="o", label="valid")
        ax.set_xlabel("batch")
        ax.set_ylabel("loss")
        ax.set_title("loss during fine_tune (frozen, then unfrozen)")
        ax.legend()
        return fig
