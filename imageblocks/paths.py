"""`Path`: a `pathlib.Path` subclass with the book's `.ls()` and `BASE_PATH` display.

We subclass rather than patch `pathlib.Path`, so other libraries see the standard class.
"""

from __future__ import annotations

import os
import pathlib
from typing import ClassVar

from imageblocks.lists import L


class Path(type(pathlib.Path())):  # the concrete flavour, so this works on Python 3.10-3.13
    """A path with `.ls()`; shown relative to `Path.BASE_PATH` when that is set."""

    BASE_PATH: ClassVar[pathlib.Path | None] = None

    def ls(self, n_max: int | None = None, file_exts: tuple[str, ...] | None = None) -> L:
        """The folder's entries as an `L` of `Path` (sorted: the book then calls `.sorted()`)."""
        entries = sorted(os.scandir(self), key=lambda e: e.name)
        if file_exts is not None:
            exts = {e.lower() for e in file_exts}
            entries = [e for e in entries if os.path.splitext(e.name)[1].lower() in exts]
        if n_max is not None:
            entries = entries[:n_max]
        return L(type(self)(e.path) for e in entries)

    def __repr__(self) -> str:
        base = Path.BASE_PATH
        if base is not None:
            try:
                return f"Path({str(self.relative_to(base))!r})"
            except ValueError:
                pass
        return f"Path({str(self)!r})"


def as_path(p: str | os.PathLike) -> Path:
    """`p` as an imageblocks `Path`."""
    return p if isinstance(p, Path) else Path(p)
