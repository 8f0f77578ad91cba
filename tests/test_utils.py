"""The shared helpers (`imageblocks.utils`) and the one error base class (`ImageblocksError`)."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil

import matplotlib.pyplot as plt
import numpy as np
import pytest

import imageblocks
from imageblocks.errors import ArgumentError, ImageblocksError, ItemError
from imageblocks.recipes.fit import save_figure
from imageblocks.utils import atomic_write, callable_name, parse_size


def _package_modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(imageblocks.__path__, "imageblocks.")
        if m.name not in ("imageblocks.__main__",)
    )


def test_every_exception_class_of_the_package_derives_from_imageblocks_error():
    classes = {}
    for name in _package_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("imageblocks"):
                classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    assert len(classes) >= 10  # the walk found the package's errors, not nothing
    loose = sorted(n for n, c in classes.items() if not issubclass(c, ImageblocksError))
    assert not loose, f"errors that do not derive from ImageblocksError: {loose}"


def test_the_base_class_is_on_the_notebook_surface():
    import imageblocks.all

    assert imageblocks.all.ImageblocksError is ImageblocksError
    assert "ImageblocksError" in imageblocks.all.__all__


def test_errors_keep_the_builtin_base_callers_catch():
    from imageblocks.download import DownloadError
    from imageblocks.learn.checkpoint import CheckpointError

    assert issubclass(ItemError, ValueError)
    assert issubclass(ArgumentError, ValueError)
    assert issubclass(DownloadError, RuntimeError)
    assert issubclass(CheckpointError, RuntimeError)


@pytest.mark.parametrize(
    "size, expected",
    [
        (128, (128, 128)),
        ("128", (128, 128)),
        ("240x320", (240, 320)),
        ("240X320", (240, 320)),
        (" 240 , 320 ", (240, 320)),
        ((240, 320), (240, 320)),
        ([240, 320], (240, 320)),
        ((240.0, 320.0), (240, 320)),
        (np.array([240, 320]), (240, 320)),
        (np.int64(64), (64, 64)),
    ],
)
def test_parse_size(size, expected):
    got = parse_size(size)
    assert got == expected
    assert all(type(side) is int for side in got)


@pytest.mark.parametrize(
    "size", ["", "x", "12x", "ax3", "1x2x3", (1, 2, 3), 0, -3, 1.5, True, None]
)
def test_parse_size_refuses_what_is_not_a_size(size):
    with pytest.raises(ArgumentError, match=r"--size must be N or HEIGHTxWIDTH .*not "):
        parse_size(size, name="--size")


def test_parse_size_names_the_smallest_side():
    assert parse_size("8", min_side=8) == (8, 8)
    with pytest.raises(ArgumentError, match=r"sides of 8 pixels or more, not '4x120'"):
        parse_size("4x120", min_side=8)


def test_atomic_write_writes_bytes_text_and_a_callback(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    atomic_write(tmp_path / "sub" / "b.txt", "héllo")
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"from a callback"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "c.bin").read_bytes() == b"from a callback"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.bin", "sub"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_keeps_the_old_file_on_error_and_leaves_no_temp_file(tmp_path, error):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _shout(x):
    return x


class _Metric:
    def __call__(self, x):
        return x


def test_callable_name():
    assert callable_name(_shout) == "_shout"
    assert callable_name(functools.partial(functools.partial(_shout), x=1)) == "_shout"
    assert callable_name(_Metric()) == "_Metric"
    assert callable_name(_Metric().__call__) == "__call__"
    assert callable_name(len) == "len"


def test_save_figure_writes_a_whole_png_and_no_temporary_file(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "loss.png")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
