"""The epoch table in its three places: a notebook (live HTML), a terminal (live bar), a log."""

from __future__ import annotations

import io
import re
import sys
import types

import IPython.display
import pytest

from imageblocks.learn.progress import ProgressTable, format_time, progress_mode
from imageblocks.show import InlineFigure, subplots

NAMES = ["epoch", "train_loss", "valid_loss", "accuracy_multi", "time"]
BAR_CHARS = ("\r", "\x1b", "━", "█", "░", "<progress")


class FakeLearner:
    """What the table reads of a learner, driven through `fit` as the loop would."""

    def __init__(self, n_iter: int = 4):
        self.recorder = types.SimpleNamespace(metric_names=NAMES, values=[], smooth_loss=0.0)
        self.n_iter, self.epoch_time = n_iter, 1.0

    def fit(self, cb: ProgressTable, n_epoch: int, on_batch=lambda: None) -> None:
        cb.before_fit(self)
        try:
            for epoch in range(n_epoch):
                self.epoch = epoch
                for i in range(self.n_iter):
                    self.iter, self.recorder.smooth_loss = i, 1.0 / (1 + i)
                    cb.after_batch(self)
                    on_batch()
                self.recorder.values.append([0.5 - epoch / 10, 0.25, 0.75])
                cb.after_epoch(self)
        finally:
            cb.after_fit(self)


def screen(written: str) -> list[str]:
    """The lines a terminal shows after `written`: enough of one for rich's redraws (carriage
    return, line feed, cursor up, erase line, colours ignored)."""
    lines, row = [""], 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", written):
        if token == "\n":
            row += 1
            lines += [""] * (row + 1 - len(lines))
        elif token in ("\r", "\x1b[2K"):
            lines[row] = ""  # rich redraws a whole line after either
        elif token.startswith("\x1b["):
            row -= int(token[2:-1] or 1) if token.endswith("A") else 0
        else:
            lines[row] += token
    return lines


class TtyStream(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_log_has_one_line_per_epoch_and_no_bar():
    out = io.StringIO()
    FakeLearner().fit(ProgressTable(file=out), n_epoch=3)
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 5  # the header, three epochs
    assert lines[0].split() == NAMES
    assert lines[1].split() == ["0", "0.500000", "0.250000", "0.750000", "00:01"]
    assert lines[3].split()[:2] == ["2", "0.300000"]
    assert not any(c in out.getvalue() for c in BAR_CHARS)


def test_terminal_draws_a_live_bar_and_keeps_the_rows():
    out = TtyStream()
    drawn = []
    FakeLearner(n_iter=4).fit(
        ProgressTable(file=out), n_epoch=2, on_batch=lambda: drawn.append(out.getvalue())
    )
    # during the first epoch's first batch, the bar is on screen: 1 of 4 steps, with the loss
    assert "1/4" in drawn[0] and "━" in drawn[0] and "loss 1.0000" in drawn[0]
    assert "\x1b[" in drawn[0]  # drawn with terminal control codes, redrawn in place
    # what stays on screen: each line as its last redraw left it, the bar erased before a row
    assert [line.split() for line in screen(out.getvalue()) if line.strip()] == [
        NAMES,
        ["0", "0.500000", "0.250000", "0.750000", "00:01"],
        ["1", "0.400000", "0.250000", "0.750000", "00:01"],
    ]


def test_mode_follows_the_stream(monkeypatch):
    assert progress_mode(io.StringIO()) == "log"
    assert progress_mode(TtyStream()) == "terminal"
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert progress_mode() == "notebook"
    assert progress_mode(io.StringIO()) == "log"  # an explicit file is written to as text
    with pytest.raises(ValueError, match="'html' is not one of"):
        ProgressTable(mode="html")


class FakeHandle:
    """Records what a notebook's display handle was shown and updated with."""

    def __init__(self, shown: list):
        self.shown = shown

    def update(self, obj, raw=False):
        assert raw
        self.shown.append(obj)


def test_notebook_updates_one_html_table_in_place(monkeypatch):
    shown: list[dict] = []
    handles = []

    def display(obj, raw=False, display_id=False):
        assert raw and display_id
        shown.append(obj)
        handles.append(FakeHandle(shown))
        return handles[-1]

    monkeypatch.setattr(IPython.display, "display", display)
    FakeLearner(n_iter=3).fit(ProgressTable(mode="notebook"), n_epoch=2)
    assert len(handles) == 1  # one output for the whole fit, updated in place
    pages = [s["text/html"] for s in shown]
    assert "<th>train_loss</th>" in pages[0] and "<tbody>\n  </tbody>" in pages[0]
    first_batch = pages[1]
    assert "<progress value='1' class='' max='3'" in first_batch and "epoch 0: 33%" in first_batch
    after_epoch = next(p for p in pages if "<td>0.500000</td>" in p)
    assert "<progress" not in after_epoch
    final = shown[-1]
    assert "<progress" not in final["text/html"] and final["text/html"].count("<tr>") == 2
    assert final["text/plain"].split("\n")[2].split()[:2] == ["1", "0.400000"]


def test_notebook_marks_a_stopped_epoch_by_removing_its_bar(monkeypatch):
    shown: list[dict] = []
    monkeypatch.setattr(
        IPython.display, "display", lambda obj, **kw: shown.append(obj) or FakeHandle(shown)
    )

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FakeLearner().fit(ProgressTable(mode="notebook"), n_epoch=2, on_batch=interrupt)
    assert "<progress" in shown[-2]["text/html"] and "<progress" not in shown[-1]["text/html"]


def test_format_time():
    assert (format_time(59.6), format_time(61), format_time(3725)) == ("01:00", "01:01", "1:02:05")


def test_a_figure_shows_itself_once_in_a_notebook(monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt

    fig, ax = subplots()
    assert isinstance(fig, InlineFigure) and plt.fignum_exists(fig.number)
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    monkeypatch.setattr(
        matplotlib, "get_backend", lambda: "module://matplotlib_inline.backend_inline"
    )
    fig._ipython_display_()  # the cell's value, or the inline backend's show: the first one
    assert len(shown) == 1 and shown[0].data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)  # so the inline backend has nothing left to show


def test_terminal_starts_a_new_bar_after_an_epoch_cut_short():
    out, learn = TtyStream(), FakeLearner(n_iter=4)
    table = ProgressTable(file=out, mode="terminal")
    table.before_fit(learn)
    learn.epoch, learn.iter = 0, 0
    table.after_batch(learn)  # epoch 0 stops here (a callback's CancelEpochException)
    learn.epoch, learn.iter = 1, 0
    table.after_batch(learn)
    table.after_fit(learn)
    last_bar = [line for line in screen(out.getvalue()) if "━" in line]
    assert not last_bar  # erased at the end of the fit
    assert out.getvalue().rsplit("epoch 0", 1)[-1].count("epoch 1") >= 1
    assert "epoch 0" not in out.getvalue().rsplit("epoch 1", 1)[-1]
