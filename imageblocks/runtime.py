"""Process-wide settings that make training fast, applied only by the code that trains.

Importing imageblocks changes nothing in its host process (a notebook kernel, a service): no
environment variable, no allocator option, no global hook. Two settings are applied explicitly:

- `keep_freed_memory()`: glibc's malloc keeps freed memory for reuse instead of returning it to
  the system. By default every block over 32 MB (a batch of images, an activation) is a fresh
  `mmap`, so each of its pages is faulted in again on first touch: about 14 ms for a 59 MB
  batch, several times the arithmetic done on it. Keeping the memory made a frozen training step
  0.35 -> 0.21 s and the key-point batch augmentation about twice as fast; the cost is that the
  process's resident memory stays at its peak. Applied on the first `Learner.fit` (every
  training schedule and `lr_find` go through it), so by the CLI's training commands too, never
  by `predict` or the HTTP service, which give memory back after a burst. Set
  `IMAGEBLOCKS_KEEP_MEMORY=0` to keep glibc's defaults; nothing is changed when `MALLOC_*` /
  `GLIBC_TUNABLES` variables or a preloaded allocator are set. Loader workers forked after it
  inherit it, and with it the parent's kept heap: `release_inherited_memory()`, in each worker,
  hands the worker's view of the heap's free pages back, because copy-on-write is symmetric: every
  page the parent writes after the fork (the next steps' activations, in that same kept memory)
  is otherwise copied while a worker still maps it. A 240x320 BIWI phase was OOM-killed that way
  with the trainer at 12 GB on a 24 GB machine; a 2 GB kept heap reused after forking two workers
  took the process tree from 4.2 to 2.7 GB (PSS). Blocks of 1 MB and more (activations, their
  gradients) come from the block cache (`imageblocks.block_cache`, installed here too), which
  splits and merges its free blocks instead of fragmenting the heap: a 64x240x320 BIWI step's peak 8.4 ->
  7.3 GB, and 4.6 GB with the lean batch-norm layer it lets keep its saving (both defaults now). `release_kept_memory()`
  gives the cache and the heap's free pages back at the end of every fit, so a notebook's memory
  falls between cells.
- `sleep_idle_threads()`: idle OpenMP threads sleep instead of spinning
  (`OMP_WAIT_POLICY=PASSIVE` unless already set). Loader workers share the cores with the
  training process; spinning threads steal the cores the others need: 0.13 s per training step
  instead of 0.25-9 s on 2 cores. OpenMP reads the variable once, when torch is imported, so
  only an entry point that runs before that can set it: the `imageblocks` command does, in
  `main()`. In a notebook, set `OMP_WAIT_POLICY=PASSIVE` in the environment (or with
  `os.environ` before the first `import torch`) to get the same.
"""

from __future__ import annotations

import ctypes
import os
import sys

from imageblocks import block_cache
from imageblocks.utils import env_turned_off

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

kept_freed_memory = False  # True once `keep_freed_memory` has changed glibc's settings


def sleep_idle_threads() -> bool:
    """Make idle OpenMP threads sleep unless the user chose a policy; True when it can still take
    effect (torch not yet imported)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules


def _user_chose_allocator() -> bool:
    env = os.environ
    return (
        any(k.startswith("MALLOC_") for k in env)
        or "GLIBC_TUNABLES" in env
        or "malloc" in env.get("LD_PRELOAD", "")
    )


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory rather than unmap it, once per process; True when
    it is in force."""
    global kept_freed_memory
    if kept_freed_memory:
        return True
    if env_turned_off("IMAGEBLOCKS_KEEP_MEMORY") or _user_chose_allocator():
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):  # not glibc (macOS, Windows, musl)
        return False
    # -1 disables trimming; 0 mmaps means large blocks come from the heap and are reused
    kept_freed_memory = bool(mallopt(_M_TRIM_THRESHOLD, -1)) and bool(mallopt(_M_MMAP_MAX, 0))
    if kept_freed_memory:
        block_cache.install()  # where it cannot be built, large blocks stay in the kept heap
    return kept_freed_memory


def _trim_heap() -> bool:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        ctypes.CDLL(None).malloc_trim(0)  # 1 when it gave memory back, 0 when there was none
        return True
    except (AttributeError, OSError, ValueError):  # not glibc (macOS, Windows, musl)
        return False


def release_kept_memory() -> None:
    """At the end of a fit: unmap the block cache's free blocks and return the heap's free pages,
    so the process keeps only what its tensors hold."""
    block_cache.release()
    if kept_freed_memory:
        _trim_heap()


def release_inherited_memory() -> bool:
    """In a forked child (a loader worker): return the free heap pages inherited from the parent
    (glibc `malloc_trim`), so they stay the parent's alone; True when done. (The block cache gives
    its inherited free blocks back by itself, in its fork handler.)"""
    return _trim_heap()
