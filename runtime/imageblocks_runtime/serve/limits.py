"""Requests in progress: a bounded number at once, and memory handed back when a burst ends.

Decoding an image allocates a lot for a short time; glibc's malloc keeps the freed memory for
reuse, so after a burst the process stays at its peak size. When no request has been in
progress for `idle_delay` seconds, `release_memory` runs a garbage collection and glibc's
`malloc_trim(0)`, which returns the free heap pages to the system.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import os
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None on another C library."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, ValueError):  # macOS, Windows, musl
        return None


def release_memory() -> bool:
    """Collect garbage and return free heap memory to the system; True if glibc trimmed."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


class RequestLimit:
    """At most `limit` requests in progress; `on_idle` runs (in a thread) once they all end."""

    def __init__(
        self,
        limit: int,
        on_idle: Callable[[], object] | None = release_memory,
        idle_delay: float = 0.5,
    ) -> None:
        if limit < 1:
            raise ValueError(f"the request limit must be at least 1, got {limit}")
        self.limit, self.on_idle, self.idle_delay = limit, on_idle, idle_delay
        self.active = 0
        self._idle_task: asyncio.Task | None = None

    def enter(self) -> bool:
        """Take a place; False when all `limit` are taken (the caller answers 503)."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give the place back; the last one out schedules `on_idle`."""
        self.active -= 1
        if self.active == 0 and self.on_idle is not None:
            if self._idle_task is None or self._idle_task.done():
                self._idle_task = asyncio.get_running_loop().create_task(self._when_idle())

    async def _when_idle(self) -> None:
        await asyncio.sleep(self.idle_delay)
        if self.active == 0 and self.on_idle is not None:
            await run_in_threadpool(self.on_idle)
