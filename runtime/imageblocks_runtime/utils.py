"""Small helpers every layer shares: atomic file writes, size and duration parsing.

This module imports nothing but the runtime's errors, so any module may use it.
"""

from __future__ import annotations

import contextlib
import numbers
import operator
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from imageblocks_runtime.errors import ArgumentError

__all__ = [
    "atomic_write",
    "fsync_dir",
    "parse_duration",
    "parse_size",
]


def atomic_write(
    path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], object]
) -> Path:
    """Write `data` (bytes, UTF-8 text, or a function writing to a binary file) to `path`
    atomically: into a hidden file beside it, flushed to disk, then renamed onto it. A reader
    sees the old file or the new one; on any error or Ctrl-C the old file stays and the
    temporary one is removed. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _side(v: Any) -> int | None:
    """`v` as a whole number of pixels, or None when it is not one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        return int(v) if v.isdigit() else None
    with contextlib.suppress(TypeError):
        return operator.index(v)  # int, numpy and 0-d tensor integers
    if isinstance(v, numbers.Real) and float(v).is_integer():
        return int(v)
    return None


def parse_size(
    size: int | str | Sequence[int], name: str = "size", min_side: int = 1
) -> tuple[int, int]:
    """(height, width) from `N`, `"N"`, `"HxW"`, `"H,W"` or an `(h, w)` pair, each side an
    integer of `min_side` pixels or more; anything else is an `ArgumentError` naming `name`."""
    if isinstance(size, str):
        parts: list[Any] = size.lower().replace(",", "x").split("x")
    else:
        try:
            parts = list(size)
        except TypeError:  # a single number
            parts = [size]
    sides = [_side(p) for p in parts]
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or any(s is None or s < min_side for s in sides):
        raise ArgumentError(
            f"{name} must be N or HEIGHTxWIDTH (e.g. 128 or 120x160) with sides of "
            f"{min_side} pixel{'s' if min_side != 1 else ''} or more, not {size!r}"
        )
    h, w = sides
    return h, w  # type: ignore[return-value]


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)")


def parse_duration(value: float | str, name: str = "budget") -> float:
    """Seconds from a number of seconds or a text like `"90"`, `"90s"`, `"10m"`, `"1.5h"` or
    `"1h30m"`; anything else, or no time at all, is an `ArgumentError` naming `name`."""
    seconds: float | None = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION.findall(text)
        if (
            parts
            and "".join(n + u for n, u in parts) == text
            and (len(parts) == 1 or all(u for _, u in parts))
        ):
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds is None or not seconds > 0 or seconds == float("inf"):
        raise ArgumentError(
            f"{name} must be a positive duration in seconds or with a unit (e.g. 90, 90s, 10m, "
            f"1h, 1h30m), not {value!r}"
        )
    return seconds
