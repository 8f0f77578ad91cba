"""Downloading one file: streamed, resumable, checked (size, md5, sha256), atomically renamed.

A `Checksum` holds whatever is known about a file: its size and its sha256 and/or md5 digest.
sha256 is the one to trust; md5 is checked where it is all that is published (it catches a cut-off
or swapped file, not a deliberately forged one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterator

from imageblocks.errors import ImageblocksError
from imageblocks.paths import Path, as_path

CHUNK_SIZE = 1 << 20
USER_AGENT = "imageblocks (https://github.com/imageblocks)"


class DownloadError(ImageblocksError, RuntimeError):
    """A file could not be downloaded (`reason` says why) or failed its checksum."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason if reason is not None else message


class ChecksumError(DownloadError):
    """A file's size or digest differs from the expected one."""


@dataclasses.dataclass(frozen=True)
class Checksum:
    """What a file must be: its size in bytes and hex digests; a field left None is not checked."""

    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    def problems(self, path: str | os.PathLike) -> list[str]:
        """How the file at `path` differs from this checksum (empty when it matches)."""
        size = os.path.getsize(path)
        if self.size is not None and size != self.size:
            return [f"size {size} bytes, expected {self.size}"]  # no need to hash it
        wanted = {name: value.lower() for name, value in self._digests().items()}
        got = file_digests(path, tuple(wanted))
        return [
            f"expected {name} {value}, got {got[name]}"
            for name, value in wanted.items()
            if got[name] != value
        ]

    def _digests(self) -> dict[str, str]:
        return {n: v for n, v in (("sha256", self.sha256), ("md5", self.md5)) if v is not None}


def download_url(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    show_progress: bool = True,
    timeout: float = 30.0,
    checksum: Checksum | None = None,
) -> Path:
    """Download `url` to `dest` (resuming a `.part` file), check it, and return `dest`.

    `checksum` gives the expected size and digests; `sha256`, when given, replaces it.
    """
    dest = as_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch(url, part, show_progress, timeout)
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}"
        raise DownloadError(_failure_message(url, dest, reason), reason) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = str(getattr(e, "reason", None) or e)
        raise DownloadError(_failure_message(url, dest, reason), reason) from e
    expected = Checksum(sha256=sha256) if sha256 is not None else checksum
    problems = expected.problems(part) if expected is not None else []
    if problems:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"Checksum mismatch for {url}: {'; '.join(problems)}. "
            "The downloaded file was deleted; try again, or check the URL and the checksum."
        )
    os.replace(part, dest)
    return dest


def file_digests(path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, str]:
    """The hex digests (`hashlib` names, e.g. "sha256", "md5") of a file, read once in chunks."""
    hashes = {name: hashlib.new(name, usedforsecurity=False) for name in names}
    if hashes:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                for h in hashes.values():
                    h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 digest of a file, read in chunks."""
    return file_digests(path, ("sha256",))["sha256"]


def _failure_message(url: str, dest: Path, reason: str) -> str:
    return (
        f"Could not download {url} ({reason}).\n"
        f"If this machine has no network access, download the file elsewhere and put it at:\n"
        f"    {dest}"
    )


def _fetch(url: str, part: Path, show_progress: bool, timeout: float) -> None:
    """Stream `url` into `part`, resuming from its current size when the server allows it."""
    have = part.stat().st_size if part.exists() else 0
    response = _open(url, have, timeout)
    if have and not _usable(response, have):  # 416 or an unexpected range: start again
        if response is not None:
            response.close()
        part.unlink(missing_ok=True)
        have = 0
        response = _open(url, 0, timeout)
    with response:
        resumed = have > 0 and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if resumed else "wb") as f,
            _progress(url, total, have, show_progress) as advance,
        ):
            for chunk in _chunks(response):
                f.write(chunk)
                advance(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:  # http.client does not raise on a short body
        raise http.client.IncompleteRead(b"", total - size)


def _usable(response: http.client.HTTPResponse | None, have: int) -> bool:
    """Whether a response to a request for bytes `have`- is the whole file or exactly that range."""
    if response is None:
        return False
    if response.status != 206:
        return True
    return response.headers.get("Content-Range", "").startswith(f"bytes {have}-")


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse | None:
    """Open `url`, asking for bytes from `start` on; None when the server answers 416."""
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start > 0:
            e.close()
            return None
        raise
    if not hasattr(response, "status"):  # file:// and ftp:// responses
        response.status = 200
    return response


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while chunk := response.read(CHUNK_SIZE):
        yield chunk


@contextlib.contextmanager
def _progress(url: str, total: int | None, done: int, show: bool) -> Iterator:
    """A context giving `advance(n_bytes)`; draws a rich progress bar when `show`."""
    if not show:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    name = url.rsplit("/", 1)[-1] or url
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(name, total=total, completed=done)
        yield lambda n: progress.advance(task, n)
