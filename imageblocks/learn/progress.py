"""The epoch table shown while training: one row per epoch under a live progress bar."""

from __future__ import annotations

import sys
import time
from typing import Any

from imageblocks.learn.callbacks import Callback


def format_time(seconds: float) -> str:
    """mm:ss (or h:mm:ss)."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressTable(Callback):
    """Prints `epoch train_loss valid_loss <metrics> time`, one row per epoch, under a live
    progress bar (shown only on a terminal)."""

    order = 10

    def __init__(self, file: Any = None, live: bool | None = None) -> None:
        self.file = file
        self.live = live

    def _out(self):
        return self.file or sys.stdout

    def before_fit(self, learn: Any) -> None:
        self.names = learn.recorder.metric_names
        self.widths = [max(len(n), 9) + 2 for n in self.names]
        print(
            "".join(n.ljust(w) for n, w in zip(self.names, self.widths)),
            file=self._out(),
            flush=True,
        )
        live = self._out().isatty() if self.live is None else self.live
        self.bar = _Bar(self._out()) if live else None
        self.start = time.perf_counter()

    def after_batch(self, learn: Any) -> None:
        if self.bar is not None:
            self.bar.update(learn.iter + 1, learn.n_iter, learn.recorder.smooth_loss)

    def after_epoch(self, learn: Any) -> None:
        if self.bar is not None:
            self.bar.clear()
        values = learn.recorder.values[-1]
        cells = [str(learn.epoch)] + [_fmt(v) for v in values] + [format_time(learn.epoch_time)]
        print("".join(c.ljust(w) for c, w in zip(cells, self.widths)), file=self._out(), flush=True)


def _fmt(v: float) -> str:
    return "None" if v is None else f"{v:.6f}"


class _Bar:
    """A one-line terminal progress bar (no dependency, redrawn in place)."""

    def __init__(self, out: Any, width: int = 30) -> None:
        self.out, self.width, self.t0 = out, width, time.perf_counter()

    def update(self, i: int, n: int, loss: float) -> None:
        if i == 1:
            self.t0 = time.perf_counter()
        done = int(self.width * i / max(n, 1))
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(i, 1) * (n - i)
        bar = "█" * done + "░" * (self.width - done)
        self.out.write(
            f"\r{bar} {i}/{n} [{format_time(elapsed)}<{format_time(eta)}] loss {loss:.4f}"
        )
        self.out.flush()

    def clear(self) -> None:
        self.out.write("\r" + " " * (self.width + 60) + "\r")
        self.out.flush()
