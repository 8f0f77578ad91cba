"""The epoch table shown while training: one row per epoch, with a live bar for the current one.

Where it is shown decides how it is drawn (`progress_mode`):

- in Jupyter, one HTML table per fit with a progress bar under it, updated in place through an
  IPython display handle, as fastai's is. The bar and table are fastprogress's HTML (what fastai
  shows: a `<progress>` element in the output, so a saved notebook keeps its last state);
  rich's and tqdm's notebook bars are ipywidgets, which a kernel may not have and a saved or
  converted notebook does not show.
- on a terminal, the text table with a live bar under it, redrawn in place by rich (already the
  CLI's library: it draws to any stream, and erases the bar before each new row).
- anywhere else (a log file, CI, a pipe), the text table alone: one line per epoch, no bar.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any

from imageblocks.learn.callbacks import Callback

MODES = ("notebook", "terminal", "log")
UPDATE_EVERY_S = 0.2  # at most this often a bar is redrawn (and always on an epoch's first batch)


def format_time(seconds: float) -> str:
    """mm:ss (or h:mm:ss)."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def in_notebook() -> bool:
    """True in a Jupyter kernel (IPython over ZMQ), where outputs can be HTML updated in place."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_mode(file: Any = None) -> str:
    """ "notebook" when printing to a Jupyter kernel's output, "terminal" to a tty, else "log"."""
    if file is None and in_notebook():
        return "notebook"
    out = file if file is not None else sys.stdout
    isatty = getattr(out, "isatty", None)
    return "terminal" if callable(isatty) and isatty() else "log"


def _fmt(v: float | None) -> str:
    return "None" if v is None else f"{v:.6f}"


class ProgressTable(Callback):
    """`epoch train_loss valid_loss <metrics> time`, one row per epoch, with a live progress bar
    for the current epoch in a notebook or on a terminal (`mode`: "notebook", "terminal" or
    "log"; by default chosen from where `file`, or stdout, goes)."""

    order = 10

    def __init__(self, file: Any = None, mode: str | None = None) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"ProgressTable mode {mode!r} is not one of {MODES}")
        self.file, self.mode = file, mode

    def _out(self) -> Any:
        return self.file if self.file is not None else sys.stdout

    def before_fit(self, learn: Any) -> None:
        self.names = list(learn.recorder.metric_names)
        self.rows: list[list[str]] = []
        mode = self.mode or progress_mode(self.file)
        self.view = {"notebook": _NotebookView, "terminal": _TerminalView, "log": _LogView}[mode](
            self.names, self._out()
        )
        self.view.start()
        self._last = 0.0

    def after_batch(self, learn: Any) -> None:
        now, i, n = time.perf_counter(), learn.iter + 1, learn.n_iter
        if i == 1 or i == n or now - self._last >= UPDATE_EVERY_S:
            self._last = now
            self.view.bar(learn.epoch, i, n, learn.recorder.smooth_loss)

    def after_epoch(self, learn: Any) -> None:
        values = learn.recorder.values[-1]
        row = [str(learn.epoch)] + [_fmt(v) for v in values] + [format_time(learn.epoch_time)]
        self.rows.append(row)
        self.view.row(row)

    def after_fit(self, learn: Any) -> None:
        view = getattr(self, "view", None)
        if view is not None:
            view.close()


class _LogView:
    """The text table, one line per row, nothing redrawn."""

    def __init__(self, names: list[str], out: Any) -> None:
        self.names, self.out = names, out
        self.widths = [max(len(n), 9) + 2 for n in names]

    def line(self, cells: list[str]) -> str:
        return "".join(c.ljust(w) for c, w in zip(cells, self.widths)).rstrip()

    def start(self) -> None:
        print(self.line(self.names), file=self.out, flush=True)

    def bar(self, epoch: int, i: int, n: int, loss: float) -> None:
        """No bar in a log."""

    def row(self, cells: list[str]) -> None:
        print(self.line(cells), file=self.out, flush=True)

    def close(self) -> None:
        """Nothing to finish."""


class _TerminalView(_LogView):
    """The text table with rich's live bar under it, erased before each new row."""

    def __init__(self, names: list[str], out: Any) -> None:
        super().__init__(names, out)
        self.progress: Any = None

    def bar(self, epoch: int, i: int, n: int, loss: float) -> None:
        if self.progress is not None and self.epoch != epoch:  # an epoch a callback cut short
            self._stop()
        if self.progress is None:
            self.epoch, self.progress = epoch, _rich_progress(self.out)
            self.progress.start()
            self.task = self.progress.add_task(f"epoch {epoch}", total=n, loss=loss)
        self.progress.update(self.task, completed=i, loss=loss)
        self.progress.refresh()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def row(self, cells: list[str]) -> None:
        self._stop()
        super().row(cells)

    def close(self) -> None:
        self._stop()


def _rich_progress(out: Any) -> Any:
    """A rich progress display on `out` that is erased when stopped and redrawn only when asked."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        console=Console(file=out, force_terminal=True),
        auto_refresh=False,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )


class _NotebookView:
    """One HTML output per fit (the table, and a bar while an epoch runs), updated in place."""

    def __init__(self, names: list[str], out: Any) -> None:
        self.names, self.rows, self.progress = names, [], ""
        self.text = _LogView(names, out)  # the text/plain form of the same table

    def bundle(self) -> dict[str, str]:
        from fastprogress.core import html_progress_bar_styles, text2html_table

        cells = [[html.escape(c) for c in r] for r in [self.names, *self.rows]]
        table = text2html_table(cells).removesuffix("<p>")
        plain = "\n".join(self.text.line(r) for r in [self.names, *self.rows])
        return {"text/html": html_progress_bar_styles + table + self.progress, "text/plain": plain}

    def start(self) -> None:
        from IPython.display import display

        self.handle = display(self.bundle(), raw=True, display_id=True)

    def bar(self, epoch: int, i: int, n: int, loss: float) -> None:
        from fastprogress.core import html_progress_bar

        if i == 1:
            self.t0 = time.perf_counter()
        elapsed = time.perf_counter() - getattr(self, "t0", time.perf_counter())
        eta = elapsed / max(i - 1, 1) * (n - i) if i > 1 else 0.0
        label = (
            f"epoch {epoch}: {100 * i / n:.0f}% [{i}/{n} "
            f"{format_time(elapsed)}&lt;{format_time(eta)}] loss {loss:.4f}"
        )
        self.progress = html_progress_bar(i, n, label)
        self.handle.update(self.bundle(), raw=True)

    def row(self, cells: list[str]) -> None:
        self.rows.append(cells)
        self.progress = ""
        self.handle.update(self.bundle(), raw=True)

    def close(self) -> None:
        if self.progress:
            self.progress = ""
            self.handle.update(self.bundle(), raw=True)
