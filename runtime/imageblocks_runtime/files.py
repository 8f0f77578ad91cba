"""Finding image files: the folder walk `imageblocks.get_image_files` and the runtime's batch
prediction share (links followed, each folder walked once, hidden folders skipped).
"""

from __future__ import annotations

import heapq
import os

__all__ = ["IMAGE_EXTENSIONS", "has_extension", "image_files", "is_file", "scan", "walk_files"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def image_files(path: str | os.PathLike) -> list[str]:
    """The image files (by extension, any case) under the folder `path`, sorted by full path."""
    return sorted(walk_files(str(path), set(IMAGE_EXTENSIONS), None))


def walk_files(root: str, exts: set[str] | None, wanted: set[str] | None) -> list[str]:
    """The wanted files under `root`, each folder walked once however many links reach it.

    The real tree is walked first, then each linked folder's tree in path order, so which path
    lists a folder reached twice does not depend on the order the file system lists entries in.
    """
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    links: list[str] = []  # a heap of links to folders, walked after the real folders
    pending = [root]
    while pending or links:
        top = pending.pop() if pending else heapq.heappop(links)
        try:
            st = os.stat(top)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        at_root = top == root
        keep = (lambda name: name in wanted) if at_root and wanted is not None else _visible
        top_files = not at_root or wanted is None or "." in wanted  # with `folders`: "." names them
        for entry in scan(top):
            if _is_dir(entry):
                if not keep(entry.name):
                    continue
                if entry.is_symlink():
                    heapq.heappush(links, entry.path)
                else:
                    pending.append(entry.path)
            elif top_files and is_file(entry) and has_extension(entry.name, exts):
                found.append(entry.path)
    return found


def scan(folder: str) -> list[os.DirEntry]:
    """A folder's entries; none if it cannot be read (as `os.walk` does)."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; False for a broken one
    except OSError:  # a link loop (ELOOP) or an unreadable target
        return False


def is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _visible(name: str) -> bool:
    return not name.startswith(".")


def has_extension(fname: str, exts: set[str] | None) -> bool:
    if exts is None:
        return True
    return os.path.splitext(fname)[1].lower() in exts
