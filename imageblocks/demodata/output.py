"""Writing a demo dataset: a folder that appears whole or not at all, JPEG files, and the work
spread over processes behind a progress bar.

Hand-written (a few lines over `tempfile`, `multiprocessing` and rich) because generation must
never overwrite a user's folder and must give the same bytes however the work is split.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from PIL import Image

JPEG_QUALITY = 90
PARALLEL_MIN = 200  # below this many images, one process is faster than starting a pool


@contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[str]:
    """A temporary folder next to `dest` that is renamed to `dest` when the block succeeds."""
    dest = os.fspath(dest)
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    _check_free(dest)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if os.path.isdir(dest) and not os.listdir(dest):
            os.rmdir(dest)
        os.rename(tmp, dest)  # fails if something appeared at `dest` meanwhile: never overwrite
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_free(dest: str) -> None:
    if os.path.exists(dest) and not (os.path.isdir(dest) and not os.listdir(dest)):
        raise FileExistsError(f"{dest} already exists; delete it or choose another destination")


def save_jpeg(img: Image.Image, path: str) -> None:
    """Write `img` as a JPEG of the demo's fixed quality."""
    img.save(path, "JPEG", quality=JPEG_QUALITY)


def run_tasks(
    fn: Callable, tasks: Sequence, n_items: int, workers: int | None, show: bool, label: str
) -> None:
    """Run `fn(task)` for all tasks (2 processes for big jobs); each returns its item count."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n_items >= PARALLEL_MIN else 1
    with _progress(label, n_items, show) as advance:
        if workers <= 1:
            for task in tasks:
                advance(fn(task))
            return
        import multiprocessing

        # fork where it exists: spawn and forkserver re-run an unguarded user script in each worker
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for n in pool.imap_unordered(fn, tasks):
                advance(n)


@contextmanager
def _progress(label: str, total: int, show: bool) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as p:
        task = p.add_task(label, total=total)
        yield lambda n: p.advance(task, n)
