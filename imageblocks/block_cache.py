"""The block cache: PyTorch's CPU allocator with a cache of large blocks that splits and merges them.

Why it is hand-written: with glibc's heap kept (no trim, no mmap, `imageblocks.runtime`) a training
step's backward fragments it (a 64x240x320 BIWI step: 5.3 GB in use after the forward, a 8.2-8.6 GB
heap), and letting glibc unmap large blocks instead faults every page in again each step (+63% to
+135% step time, `benchmarks/step_memory.py`). A cache keyed by exact size fixed the fragmentation
but not the faults: a recipe's step (the batch augmentation's tensors between the model's) needs
more distinct sizes at once than a bound near its peak holds, so it mapped 7.7 GB afresh every
step (`benchmarks/recipe_steps.py`). So free blocks merge with their free neighbours and a request
is carved from the smallest free block that holds it, as PyTorch's CUDA caching allocator does on
the GPU. No maintained library swaps PyTorch's CPU allocator inside a running process (jemalloc
or tcmalloc need `LD_PRELOAD` before it starts, which a notebook kernel cannot do), so the
allocator is `csrc/block_cache.cpp` (c10 headers only), compiled once per PyTorch version through
`torch.utils.cpp_extension` (about 2 s, cached under `TORCH_EXTENSIONS_DIR`). Where it cannot be
built (no C++ compiler), training keeps glibc's heap as before and `unavailable_reason` says why;
`IMAGEBLOCKS_BLOCK_CACHE=0` does the same by choice.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

from imageblocks.utils import env_turned_off

_SOURCE = Path(__file__).with_name("csrc") / "block_cache.cpp"
_FIELDS = ("in_use", "cached", "peak", "hits", "misses", "evictions")

_library: ctypes.CDLL | None = None
unavailable_reason: str | None = None  # why `install` could not build or load the cache


class _Stats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in _FIELDS]


@dataclass(frozen=True)
class BlockCacheStats:
    """The cache's counters: bytes of large blocks in use, free but mapped, and at most in use at
    once; requests served from a free block and requests that mapped a segment; segments unmapped
    to stay bounded."""

    in_use: int
    cached: int
    peak: int
    hits: int
    misses: int
    evictions: int


def _build() -> ctypes.CDLL:
    # cpp_extension warns at import when torch is a CUDA build on a machine without CUDA
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        path = cpp_extension.load(
            "imageblocks_block_cache", [str(_SOURCE)], is_python_module=False, verbose=False
        )
    finally:
        logger.setLevel(level)
    return ctypes.CDLL(str(path))


def install() -> bool:
    """Make the block cache PyTorch's CPU allocator for every tensor allocated from now on, once
    per process; True when it is in force (False, with `unavailable_reason`, when it cannot be
    built here)."""
    global _library, unavailable_reason
    if _library is not None:
        return True
    if unavailable_reason is not None:
        return False
    if env_turned_off("IMAGEBLOCKS_BLOCK_CACHE"):
        unavailable_reason = "turned off (IMAGEBLOCKS_BLOCK_CACHE=0)"
        return False
    try:
        library = _build()
    except Exception as exc:  # no compiler, no ninja, a read-only cache: train without it
        unavailable_reason = f"the block cache could not be built ({type(exc).__name__}: {exc})"
        return False
    if not library.imageblocks_block_cache_install():
        unavailable_reason = "PyTorch kept another CPU allocator"
        return False
    _library = library
    return True


def installed() -> bool:
    """True when the block cache is this process's CPU allocator."""
    return _library is not None


def release() -> None:
    """Unmap every wholly free segment and drop the other free blocks' pages, so the process's
    memory falls to what tensors hold (after a fit)."""
    if _library is not None:
        _library.imageblocks_block_cache_release()


def stats() -> BlockCacheStats | None:
    """The cache's counters now; None when it is not installed."""
    if _library is None:
        return None
    raw = _Stats()
    _library.imageblocks_block_cache_stats(ctypes.byref(raw))
    return BlockCacheStats(*(getattr(raw, name) for name in _FIELDS))
