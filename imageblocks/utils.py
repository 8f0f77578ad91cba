"""Small helpers every layer shares: callables' names here; atomic file writes and size and
duration parsing come from the runtime (`imageblocks_runtime.utils`).

This module imports nothing from the rest of imageblocks, so any module may use it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from imageblocks_runtime.utils import atomic_write, fsync_dir, parse_duration, parse_size

__all__ = [
    "atomic_write",
    "callable_name",
    "env_turned_off",
    "fsync_dir",
    "parse_duration",
    "parse_size",
    "unwrap_partial",
]


def env_turned_off(name: str) -> bool:
    """True when the environment variable `name` turns a default setting off (0, false, no)."""
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no")


def unwrap_partial(f: Any) -> Any:
    """The function inside (nested) `functools.partial`s; `f` itself when it is none."""
    while isinstance(f, functools.partial):
        f = f.func
    return f


def callable_name(f: Any) -> str:
    """A short readable name: a function's or method's `__name__` (through partials), else the
    object's class name."""
    f = unwrap_partial(f)
    name = getattr(f, "__name__", None)
    return name if isinstance(name, str) else type(f).__name__
