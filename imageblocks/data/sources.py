"""Where data comes from: dataset URLs, `untar_data` (download, safe extract, cache), file lists.

Every archive `URLs` names has its size and digest in `checksums.json`, checked on download and
again before a cached archive is extracted. No sha256 is published for these files, so that table
holds fastai's published md5 digests: they catch a cut-off, swapped or altered file, but md5 is no
proof against a deliberately forged one. Pass `sha256=` to `untar_data` to check a digest you trust
instead. Extraction refuses members outside the target folder and stops at `max_bytes` inflated
bytes or `max_members` members, leaving nothing behind.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from importlib import resources
from pathlib import PurePosixPath
from typing import BinaryIO

from imageblocks import demodata
from imageblocks.download import CHUNK_SIZE, Checksum, ChecksumError, DownloadError, download_url
from imageblocks.errors import ImageblocksError
from imageblocks.lists import L
from imageblocks.paths import Path, as_path
from imageblocks_runtime.files import (
    IMAGE_EXTENSIONS,
    has_extension,
    is_file,
    scan,
    walk_files,
)

__all__ = [
    "URLs",
    "ArchiveTooLargeError",
    "UnsafeArchiveError",
    "dataset_checksums",
    "dataset_name",
    "extract_archive",
    "get_files",
    "get_image_files",
    "image_extensions",
    "imageblocks_home",
    "untar_data",
]

DEMO_SCHEME = "imageblocks-demo://"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
image_extensions = IMAGE_EXTENSIONS
# Extraction limits: well above the largest archive `URLs` names (FOOD: 5.7 GB packed, about 101k
# files; PASCAL_2007: 1.6 GB; BIWI_HEAD_POSE: 0.45 GB, about 31k files), far below a zip bomb.
DEFAULT_MAX_BYTES = 64 * 2**30
DEFAULT_MAX_MEMBERS = 1_000_000


class URLs:
    """Names of the datasets a reader of the book may ask for, as download URLs."""

    S3 = "https://s3.amazonaws.com/fast-ai-"
    S3_SAMPLE = f"{S3}sample/"
    S3_IMAGE = f"{S3}imageclas/"
    S3_IMAGELOC = f"{S3}imagelocal/"
    S3_COCO = f"{S3}coco/"

    # chapter 6
    PASCAL_2007 = f"{S3_IMAGELOC}pascal_2007.tgz"
    PASCAL_2012 = f"{S3_IMAGELOC}pascal_2012.tgz"
    BIWI_HEAD_POSE = f"{S3_IMAGELOC}biwi_head_pose.tgz"
    BIWI_SAMPLE = f"{S3_SAMPLE}biwi_sample.tgz"
    # other image datasets of the book
    PETS = f"{S3_IMAGE}oxford-iiit-pet.tgz"
    MNIST = f"{S3_IMAGE}mnist_png.tgz"
    MNIST_SAMPLE = f"{S3_SAMPLE}mnist_sample.tgz"
    MNIST_TINY = f"{S3_SAMPLE}mnist_tiny.tgz"
    MNIST_VAR_SIZE_TINY = f"{S3_IMAGE}mnist_var_size_tiny.tgz"
    CAMVID = f"{S3_IMAGELOC}camvid.tgz"
    CAMVID_TINY = f"{S3_SAMPLE}camvid_tiny.tgz"
    CIFAR = f"{S3_SAMPLE}cifar10.tgz"
    CIFAR_100 = f"{S3_IMAGE}cifar100.tgz"
    IMAGENETTE = f"{S3_IMAGE}imagenette2.tgz"
    IMAGENETTE_160 = f"{S3_IMAGE}imagenette2-160.tgz"
    IMAGENETTE_320 = f"{S3_IMAGE}imagenette2-320.tgz"
    IMAGEWOOF = f"{S3_IMAGE}imagewoof2.tgz"
    IMAGEWOOF_160 = f"{S3_IMAGE}imagewoof2-160.tgz"
    IMAGEWOOF_320 = f"{S3_IMAGE}imagewoof2-320.tgz"
    PLANET_SAMPLE = f"{S3_SAMPLE}planet_sample.tgz"
    PLANET_TINY = f"{S3_SAMPLE}planet_tiny.tgz"
    CALTECH_101 = f"{S3_IMAGE}caltech_101.tgz"
    CARS = f"{S3_IMAGE}stanford-cars.tgz"
    CUB_200_2011 = f"{S3_IMAGE}CUB_200_2011.tgz"
    FLOWERS = f"{S3_IMAGE}oxford-102-flowers.tgz"
    FOOD = f"{S3_IMAGE}food-101.tgz"
    COCO_SAMPLE = f"{S3_COCO}coco_sample.tgz"
    COCO_TINY = f"{S3_COCO}coco_tiny.tgz"
    # generated on this machine in the formats of PASCAL_2007 and BIWI_HEAD_POSE; never downloaded
    DEMO_MULTILABEL = f"{DEMO_SCHEME}demo_multilabel"
    DEMO_POINTS = f"{DEMO_SCHEME}demo_points"


class UnsafeArchiveError(ImageblocksError, RuntimeError):
    """An archive member would land outside the extraction folder, or is not a plain file."""


class ArchiveTooLargeError(UnsafeArchiveError):
    """An archive has more members, or inflates to more bytes, than the extraction limits allow."""


@functools.cache
def dataset_checksums() -> dict[str, Checksum]:
    """The expected size and digests of each archive `URLs` names, from `checksums.json`."""
    table = json.loads(resources.files(__package__).joinpath("checksums.json").read_text())
    return {url: Checksum(**entry) for url, entry in table["archives"].items()}


def imageblocks_home() -> Path:
    """The cache root: `$IMAGEBLOCKS_HOME`, or `~/.imageblocks`."""
    home = os.environ.get("IMAGEBLOCKS_HOME")
    return as_path(os.path.expanduser(home)) if home else Path.home() / ".imageblocks"


def dataset_name(url: str) -> str:
    """The folder name a URL's data gets: its archive's base name without the archive suffix."""
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def untar_data(
    url: str,
    data: str | os.PathLike | None = None,
    force_download: bool = False,
    sha256: str | None = None,
    show_progress: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Path:
    """Download and extract `url` once into `<home>/data/<name>` (or `data/<name>`); return it.

    The archive is checked against `sha256` if given, else against `dataset_checksums()`.
    """
    name = dataset_name(url)
    data_root = as_path(data) if data is not None else imageblocks_home() / "data"
    target = data_root / name
    if target.is_dir() and not force_download:
        return target
    data_root.mkdir(parents=True, exist_ok=True)
    if url.startswith(DEMO_SCHEME):
        return _make_demo(name, target, show_progress, force_download)
    archive = imageblocks_home() / "archive" / url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    expected = Checksum(sha256=sha256) if sha256 is not None else dataset_checksums().get(url)
    if force_download or not archive.is_file():
        if os.environ.get("IMAGEBLOCKS_OFFLINE", "") not in ("", "0"):
            raise DownloadError(
                _offline_message(url, archive, target, "IMAGEBLOCKS_OFFLINE is set")
            )
        try:
            download_url(url, archive, show_progress=show_progress, checksum=expected)
        except ChecksumError:
            raise
        except DownloadError as e:
            raise DownloadError(_offline_message(url, archive, target, e.reason), e.reason) from e
    elif expected is not None and (problems := expected.problems(archive)):
        raise ChecksumError(
            f"The cached archive {archive} (from {url}) failed its checksum: "
            f"{'; '.join(problems)}. Nothing was extracted.\n"
            f"Delete it and call untar_data again to download it afresh:\n    rm {archive}\n"
            "If you trust this file as it is (e.g. a newer upload), pass its sha256= instead."
        )
    return extract_archive(
        archive, target, force=force_download, max_bytes=max_bytes, max_members=max_members
    )


def extract_archive(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    force: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Path:
    """Extract a tar or zip archive safely into the folder `target`, atomically; return `target`.

    Stops with `ArchiveTooLargeError` (and removes what it wrote) past `max_members` members or
    `max_bytes` inflated bytes, checked from the member headers first and again while writing.
    """
    archive, target = as_path(archive), as_path(target)
    limits = _Limits(archive, max_bytes, max_members)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; it may become the dataset folder itself
    try:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp, limits)
            else:
                _extract_tar(archive, tmp, limits)
        except (tarfile.ReadError, tarfile.CompressionError, zipfile.BadZipFile, EOFError) as e:
            raise DownloadError(
                f"{archive} is not a readable archive ({e}). Delete it and call untar_data again."
            ) from e
        entries = [e for e in os.listdir(tmp) if not e.startswith("._")]
        only = tmp / entries[0] if len(entries) == 1 else None
        source = only if only is not None and only.name == target.name and only.is_dir() else tmp
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(source, target)
        except OSError:
            if not target.is_dir():  # not a concurrent extraction that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_member_name(name: str, archive: Path) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    drive = bool(parts) and len(parts[0]) == 2 and parts[0][1] == ":"
    if name.startswith(("/", "\\")) or drive or ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: refusing to extract {name!r} (outside the target folder)"
        )


class _Limits:
    """The extraction limits of one archive, and the error that names them."""

    def __init__(self, archive: Path, max_bytes: int, max_members: int):
        self.archive, self.max_bytes, self.max_members = archive, max_bytes, max_members

    def check(self, n_members: int, n_bytes: int) -> None:
        """Raise `ArchiveTooLargeError` if `n_members` or `n_bytes` is over its limit."""
        if n_members > self.max_members:
            self._fail(f"has more than {self.max_members} members", "max_members")
        if n_bytes > self.max_bytes:
            self._fail(f"inflates to more than {self.max_bytes} bytes", "max_bytes")

    def _fail(self, what: str, arg: str) -> None:
        raise ArchiveTooLargeError(
            f"{self.archive} {what}; extraction stopped and nothing was kept. If you trust this "
            f"archive, pass a larger {arg}= to untar_data or extract_archive."
        )


def _extract_tar(archive: Path, dest: Path, limits: _Limits) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        # tarfile writes exactly the size a header declares, so the headers bound what is written
        limits.check(len(members), _tar_bytes(members))
        for m in members:
            _check_member_name(m.name, archive)
            if m.issym() or m.islnk():
                link = m.linkname if m.islnk() else str(PurePosixPath(m.name).parent / m.linkname)
                _check_member_name(link, archive)
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{archive}: refusing to extract special file {m.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python without extraction filters; members were checked above
            tar.extractall(dest, members=members)


def _tar_bytes(members: list[tarfile.TarInfo]) -> int:
    """The bytes tar `members` write; a hard link counts as its target (it may become a copy)."""
    sizes = {m.name: m.size for m in members if m.isfile()}
    links = sum(sizes.get(m.linkname, 0) for m in members if m.islnk())
    return sum(sizes.values()) + links


def _extract_zip(archive: Path, dest: Path, limits: _Limits) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member_name(info.filename, archive)
        limits.check(len(infos), sum(info.file_size for info in infos))
        written = 0
        for info in infos:  # a zip header's size need not be what its data inflates to: count
            path = os.path.join(dest, *PurePosixPath(info.filename.replace("\\", "/")).parts)
            if info.is_dir():
                os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                written = _copy_bounded(src, dst, written, limits)


def _copy_bounded(src: BinaryIO, dst: BinaryIO, written: int, limits: _Limits) -> int:
    """Copy `src` to `dst` in chunks, stopping once `written` plus the copy passes the byte limit."""
    while chunk := src.read(CHUNK_SIZE):
        written += len(chunk)
        limits.check(0, written)
        dst.write(chunk)
    return written


def _offline_message(url: str, archive: Path, target: Path, reason: str) -> str:
    return (
        f"Could not download {url} ({reason}).\n"
        f"To install it by hand, download that file elsewhere and put it at:\n"
        f"    {archive}\n"
        f"then call untar_data again: it will be extracted to\n"
        f"    {target}"
    )


def _make_demo(name: str, target: Path, show_progress: bool, force: bool) -> Path:
    makers = {
        "demo_multilabel": demodata.make_demo_multilabel,
        "demo_points": demodata.make_demo_points,
    }
    if name not in makers:
        raise ValueError(f"Unknown demo dataset {name!r}; known: {', '.join(makers)}")
    if force and target.exists():
        shutil.rmtree(target)
    try:
        return as_path(makers[name](target, show_progress=show_progress))
    except FileExistsError:
        if target.is_dir():  # another process finished generating it first
            return target
        raise


def get_files(
    path: str | os.PathLike,
    extensions: Iterable[str] | None = None,
    recurse: bool = True,
    folders: Iterable[str] | None = None,
) -> L:
    """Files under `path` (only some `extensions` or top-level `folders` if given), sorted.

    Links to folders and files are followed and listed under `path` (through the link); a folder
    reached twice (two links, or a link loop) is listed once, and broken links are skipped.
    """
    path = as_path(path)
    if not path.is_dir():
        error = NotADirectoryError if path.exists() else FileNotFoundError
        raise error(
            f"{path} is not a folder: get_files and get_image_files list the files in a folder. "
            "Check the path (for example with `.ls()` on its parent)."
        )
    exts = None if extensions is None else {_dotted(e).lower() for e in extensions}
    wanted = None if folders is None else set(folders)
    if recurse:
        found = walk_files(str(path), exts, wanted)
    else:
        found = [e.path for e in scan(str(path)) if is_file(e) and has_extension(e.name, exts)]
    return L(Path(f) for f in sorted(found))


def _dotted(ext: str) -> str:
    return ext if ext.startswith(".") else f".{ext}"


def get_image_files(
    path: str | os.PathLike, recurse: bool = True, folders: Iterable[str] | None = None
) -> L:
    """Image files under `path` (by extension, any case), sorted by their full path."""
    return get_files(path, extensions=image_extensions, recurse=recurse, folders=folders)
