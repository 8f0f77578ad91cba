"""Where data comes from: dataset URLs, `untar_data` (download, safe extract, cache), file lists."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import PurePosixPath

from imageblocks.download import ChecksumError, DownloadError, download_url, file_sha256
from imageblocks.lists import L
from imageblocks.paths import Path, as_path

__all__ = [
    "URLs",
    "UnsafeArchiveError",
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
image_extensions = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


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


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the extraction folder, or is not a plain file."""


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
) -> Path:
    """Download and extract `url` once into `<home>/data/<name>` (or `data/<name>`); return it."""
    name = dataset_name(url)
    data_root = as_path(data) if data is not None else imageblocks_home() / "data"
    target = data_root / name
    if target.is_dir() and not force_download:
        return target
    data_root.mkdir(parents=True, exist_ok=True)
    if url.startswith(DEMO_SCHEME):
        return _make_demo(name, target, show_progress, force_download)
    archive = imageblocks_home() / "archive" / url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    if force_download or not archive.is_file():
        if os.environ.get("IMAGEBLOCKS_OFFLINE", "") not in ("", "0"):
            raise DownloadError(
                _offline_message(url, archive, target, "IMAGEBLOCKS_OFFLINE is set")
            )
        try:
            download_url(url, archive, sha256=sha256, show_progress=show_progress)
        except ChecksumError:
            raise
        except DownloadError as e:
            raise DownloadError(_offline_message(url, archive, target, e.reason), e.reason) from e
    elif sha256 is not None and file_sha256(archive).lower() != sha256.lower():
        raise ChecksumError(
            f"Checksum mismatch for {archive} (from {url}): expected sha256 {sha256.lower()}, "
            f"got {file_sha256(archive)}. Delete it, or pass force_download=True."
        )
    return extract_archive(archive, target, force=force_download)


def extract_archive(
    archive: str | os.PathLike, target: str | os.PathLike, force: bool = False
) -> Path:
    """Extract a tar or zip archive safely into the folder `target`, atomically; return `target`."""
    archive, target = as_path(archive), as_path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; it may become the dataset folder itself
    try:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
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


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
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


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            _check_member_name(name, archive)
        zf.extractall(dest)


def _offline_message(url: str, archive: Path, target: Path, reason: str) -> str:
    return (
        f"Could not download {url} ({reason}).\n"
        f"To install it by hand, download that file elsewhere and put it at:\n"
        f"    {archive}\n"
        f"then call untar_data again: it will be extracted to\n"
        f"    {target}"
    )


def _make_demo(name: str, target: Path, show_progress: bool, force: bool) -> Path:
    from imageblocks.data import demo  # imported here: the generators are only needed on first use

    makers = {"demo_multilabel": demo.make_demo_multilabel, "demo_points": demo.make_demo_points}
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
    """Files under `path` (only some `extensions` or top-level `folders` if given), sorted."""
    path = as_path(path)
    exts = None if extensions is None else {_dotted(e).lower() for e in extensions}
    wanted = None if folders is None else set(folders)
    found: list[str] = []
    if recurse:
        for i, (root, dirs, files) in enumerate(os.walk(path)):
            keep = (lambda d: d in wanted) if i == 0 and wanted is not None else _visible
            dirs[:] = [d for d in dirs if keep(d)]
            if i == 0 and wanted is not None and "." not in wanted:
                continue  # with `folders`, files at the top level count only if "." is named
            found.extend(os.path.join(root, f) for f in files if _wanted(f, exts))
    else:
        with os.scandir(path) as it:
            found = [e.path for e in it if e.is_file() and _wanted(e.name, exts)]
    return L(Path(f) for f in sorted(found))


def get_image_files(
    path: str | os.PathLike, recurse: bool = True, folders: Iterable[str] | None = None
) -> L:
    """Image files under `path` (by extension, any case), sorted by their full path."""
    return get_files(path, extensions=image_extensions, recurse=recurse, folders=folders)


def _dotted(ext: str) -> str:
    return ext if ext.startswith(".") else f".{ext}"


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _wanted(fname: str, exts: set[str] | None) -> bool:
    if exts is None:
        return True
    return os.path.splitext(fname)[1].lower() in exts
