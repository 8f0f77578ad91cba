"""Reading a model folder safely: each file checked against the digest config.json records,
and an export's swap in progress recognised (a reader looks again shortly).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from imageblocks_runtime.config import CONFIG_NAME, ExportError

__all__ = ["TEMP_TAG", "check_file", "digest", "swap_in_progress", "temp_folders"]

TEMP_TAG = ".export-tmp"  # suffix of an export's hidden folders: `.{name}.{pid}-{random}{TAG}`


def digest(data: bytes) -> dict[str, object]:
    """The sha256 and size of `data`, as `config.json`'s `files` section records them."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def temp_folders(path: Path) -> list[Path]:
    """The hidden folders an export of `path` builds or sets aside beside it."""
    prefix = f".{path.name}."
    try:
        return [
            p
            for p in path.parent.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(TEMP_TAG)
        ]
    except OSError:
        return []


def swap_in_progress(path: str | os.PathLike) -> bool:
    """Whether an export is being swapped into `path` (a reader should look again shortly)."""
    return bool(temp_folders(Path(path)))


def check_file(data: bytes, where: Path, recorded: dict[str, Any] | None) -> None:
    """Refuse `data` (the bytes of the model folder's file `where`) when config.json recorded
    another sha256 or size for it: the files come from different exports."""
    if recorded is None:
        return
    found = digest(data)
    if found != recorded:
        raise ExportError(
            f"{where} ({found['bytes']} bytes) is not the file {CONFIG_NAME} describes "
            f"({recorded['bytes']} bytes, sha256 {str(recorded['sha256'])[:12]}...): the files "
            "come from different exports; copy the model folder as a whole, or export it again"
        )
