"""Writing a model folder atomically: every file of an export, or none, is ever seen together.

`write_folder` builds the new content in a hidden sibling folder (same parent, so the same file
system), hard-links the entries of the old folder that the export does not replace (a training
run's `metrics.json`, plots), then swaps the two folders with one `renameat2(RENAME_EXCHANGE)`
on Linux; elsewhere, or where the file system lacks it, the old folder is renamed aside and the
new one renamed in (a reader that finds neither retries, see `swap_in_progress`). The old
content is then removed. A Ctrl-C removes the half-built folder; one left by a killed process
is removed by the next export beside it. Files are flushed to disk before the swap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

from imageblocks_runtime.config import ExportError
from imageblocks_runtime.folder import TEMP_TAG as _TAG
from imageblocks_runtime.folder import digest, swap_in_progress
from imageblocks_runtime.folder import temp_folders as _temp_names
from imageblocks_runtime.utils import atomic_write, fsync_dir

__all__ = [
    "clean_stale",
    "digest",
    "replace_file",
    "swap_in_progress",
    "write_bytes",
    "write_folder",
]

_STALE_S = 24 * 3600  # a temporary folder this old is removed even if its pid is alive
_RENAME_EXCHANGE = 2


def write_bytes(file: Path, data: bytes) -> dict[str, object]:
    """Write `data` to `file`, flushed to disk; returns its `digest`."""
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return digest(data)


def replace_file(file: Path, data: bytes) -> dict[str, object]:
    """Write `data` onto `file` with `atomic_write` (a reader sees the old file or the new
    one); returns its `digest`."""
    atomic_write(file, data)
    return digest(data)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux `renameat2`); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc before 2.28, musl
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # the file system cannot exchange: use the two renames
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _is_stale(tmp: Path) -> bool:
    """A temporary folder whose writer was killed (its pid is gone) or that is a day old."""
    stem = tmp.name.removesuffix(_TAG).removesuffix(".old")
    try:
        pid = int(stem.rsplit(".", 1)[-1].split("-")[0])
    except ValueError:
        return True
    try:
        old = time.time() - tmp.lstat().st_mtime > _STALE_S
    except OSError:
        return False
    return pid == os.getpid() or not _alive(pid) or old


def clean_stale(path: Path) -> None:
    """Remove the temporary folders that killed exports left beside `path`; if a kill left the
    old content renamed aside and nothing at `path`, put it back first."""
    for tmp in _temp_names(path):
        if not _is_stale(tmp):
            continue
        if tmp.name.endswith(".old" + _TAG) and not os.path.lexists(path):
            try:
                os.rename(tmp, path)
                continue
            except OSError:
                pass
        _remove(tmp)


def _remove(folder: Path) -> None:
    """Remove `folder`; a Ctrl-C meanwhile is held until the removal ends, then raised."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            shutil.rmtree(folder, ignore_errors=True)
            break
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        raise interrupted


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # no hard links here (FAT, some network file systems)
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path, replaced: Collection[str]) -> None:
    """Hard-link every entry of `old` that the new content neither holds nor replaces (nor is
    a temporary file an earlier writer of a replaced file left)."""
    leftovers = {f"{n}.tmp" for n in replaced}
    for entry in old.iterdir():
        name = entry.name
        if name in replaced or name in leftovers or (new / name).exists():
            continue
        if name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in replaced):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), new / name)
        elif entry.is_dir():
            shutil.copytree(entry, new / name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(new / name))


def _new_temp(path: Path, kind: str = "") -> Path:
    name = f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{kind}{_TAG}"
    return path.parent / name


def write_folder(
    path: str | os.PathLike, write: Callable[[Path], None], replaced: Collection[str] = ()
) -> Path:
    """Make the folder `path` hold what `write(folder)` puts in an empty folder, plus the old
    entries of `path` not named in `replaced`, in one atomic step; returns `path`."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # swap the folder the link points to, keep the link
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path} is a file: export into a folder (a new or a model folder)")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _new_temp(path)
    aside: Path | None = None
    try:
        os.mkdir(tmp)
        write(tmp)
        if path.is_dir():
            _carry_over(path, tmp, replaced)
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        fsync_dir(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif not _exchange(tmp, path):
            aside = _new_temp(path, ".old")
            os.rename(path, aside)
            os.rename(tmp, path)
            tmp, aside = aside, None
        fsync_dir(path.parent)
    except BaseException:  # Ctrl-C or a full disk: the old folder stays as it was
        if aside is not None and not os.path.lexists(path):
            os.rename(aside, path)
        raise
    finally:
        _remove(tmp)  # the half-built folder, or the old content
    return path
