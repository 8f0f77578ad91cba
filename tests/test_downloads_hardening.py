"""Checksummed dataset URLs and bounded archive extraction, against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from importlib import resources

import pytest

from imageblocks.data import sources
from imageblocks.data.sources import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MEMBERS,
    ArchiveTooLargeError,
    UnsafeArchiveError,
    URLs,
    dataset_checksums,
    extract_archive,
    untar_data,
)
from imageblocks.download import Checksum, ChecksumError, DownloadError
from tests.test_sources import FILES, _Handler, _make_tgz, _unused_port


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEBLOCKS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IMAGEBLOCKS_OFFLINE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def served(tmp_path):
    """A folder served on 127.0.0.1; yields (folder, base URL, server)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
    )
    server.requests, server.ranges = [], True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def _table(monkeypatch, entries: dict[str, Checksum]) -> None:
    """Use `entries` as the shipped checksum table."""
    monkeypatch.setattr(sources, "dataset_checksums", lambda: entries)


def _nothing_extracted(home, name: str) -> bool:
    data = home / "data"
    return not (data / name).exists() and not (data.exists() and list(data.glob(".*")))


def _dataset_urls() -> dict[str, str]:
    return {
        k: v
        for k, v in vars(URLs).items()
        if k.isupper() and isinstance(v, str) and not v.startswith(sources.DEMO_SCHEME)
    }


def test_every_dataset_url_has_a_size_and_digest():
    table = dataset_checksums()
    urls = _dataset_urls()
    archives = {v for v in urls.values() if v.endswith(sources.ARCHIVE_SUFFIXES)}
    assert len(archives) > 20 and "PASCAL_2007" in urls and "BIWI_HEAD_POSE" in urls
    assert archives - set(table) == set(), "add these archives to data/checksums.json"
    assert set(table) - archives == set(), "stale entries in data/checksums.json"
    for url, entry in table.items():
        assert isinstance(entry.size, int) and entry.size > 0, url
        assert entry.sha256 is not None or entry.md5 is not None, url
        assert entry.md5 is None or re.fullmatch("[0-9a-f]{32}", entry.md5), url
        assert entry.sha256 is None or re.fullmatch("[0-9a-f]{64}", entry.sha256), url
    assert table[URLs.PASCAL_2007].size == 1637796771  # fastai's published size
    assert resources.files("imageblocks.data").joinpath("checksums.json").is_file()
    # the default limits leave room for the largest archive to inflate tenfold
    assert max(e.size for e in table.values()) * 10 < DEFAULT_MAX_BYTES
    assert DEFAULT_MAX_MEMBERS >= 500_000


@pytest.mark.parametrize("digest", ["md5", "sha256"])
def test_good_download_matches_the_table_and_extracts(home, served, monkeypatch, digest):
    root, base, _ = served
    data = _make_tgz(root / "ds.tgz", "ds", FILES)
    url = f"{base}/ds.tgz"
    _table(
        monkeypatch, {url: Checksum(len(data), **{digest: hashlib.new(digest, data).hexdigest()})}
    )
    path = untar_data(url, show_progress=False)
    assert (path / "train.csv").read_bytes() == FILES["train.csv"]


def test_download_that_fails_the_table_is_deleted(home, served, monkeypatch):
    root, base, _ = served
    data = _make_tgz(root / "ds.tgz", "ds", FILES)
    url = f"{base}/ds.tgz"
    _table(monkeypatch, {url: Checksum(size=len(data), md5="0" * 32)})
    with pytest.raises(ChecksumError, match=re.escape(f"expected md5 {'0' * 32}")) as err:
        untar_data(url, show_progress=False)
    assert url in str(err.value) and hashlib.md5(data).hexdigest() in str(err.value)
    assert not (home / "archive" / "ds.tgz").exists()
    assert not (home / "archive" / "ds.tgz.part").exists()
    assert _nothing_extracted(home, "ds")


def test_download_of_the_wrong_size_is_an_error(home, served, monkeypatch):
    root, base, _ = served
    data = _make_tgz(root / "ds.tgz", "ds", FILES)
    url = f"{base}/ds.tgz"
    good_md5 = hashlib.md5(data).hexdigest()
    _table(monkeypatch, {url: Checksum(size=len(data) + 1, md5=good_md5)})
    with pytest.raises(ChecksumError, match=f"size {len(data)} bytes, expected {len(data) + 1}"):
        untar_data(url, show_progress=False)
    assert not (home / "archive" / "ds.tgz").exists()
    assert _nothing_extracted(home, "ds")


@pytest.mark.parametrize("tamper", ["flip_a_byte", "truncate"])
def test_tampered_cached_archive_is_not_extracted(home, served, monkeypatch, tamper):
    root, base, server = served
    data = _make_tgz(root / "ds.tgz", "ds", FILES)
    url = f"{base}/ds.tgz"
    _table(monkeypatch, {url: Checksum(len(data), sha256=hashlib.sha256(data).hexdigest())})
    archive = home / "archive" / "ds.tgz"
    archive.parent.mkdir(parents=True)
    bad = data[:-1] + bytes([data[-1] ^ 1]) if tamper == "flip_a_byte" else data[:-10]
    archive.write_bytes(bad)
    with pytest.raises(ChecksumError) as err:
        untar_data(url, show_progress=False)
    message = str(err.value)
    assert f"rm {archive}" in message and "Nothing was extracted" in message
    assert ("size" in message) == (tamper == "truncate")
    assert _nothing_extracted(home, "ds")
    assert server.requests == []  # the cached archive was checked, not downloaded again
    archive.unlink()  # as the message says
    assert (untar_data(url, show_progress=False) / "train.csv").is_file()


def test_user_sha256_wins_over_the_table(home, served, monkeypatch):
    root, base, _ = served
    data = _make_tgz(root / "ds.tgz", "ds", FILES)
    url = f"{base}/ds.tgz"
    _table(monkeypatch, {url: Checksum(size=1, md5="0" * 32)})  # e.g. a re-uploaded file
    path = untar_data(url, sha256=hashlib.sha256(data).hexdigest(), show_progress=False)
    assert (path / "train.csv").is_file()


def test_offline_with_a_table_entry_keeps_the_clear_message(home, monkeypatch):
    url = f"http://127.0.0.1:{_unused_port()}/pascal_2007.tgz"
    _table(monkeypatch, {url: Checksum(size=10, md5="0" * 32)})
    with pytest.raises(DownloadError) as err:
        untar_data(url, show_progress=False)
    assert not isinstance(err.value, ChecksumError)
    message = str(err.value)
    assert url in message and "download that file elsewhere" in message
    assert str(home / "archive" / "pascal_2007.tgz") in message
    assert str(home / "data" / "pascal_2007") in message


def _big_tgz(path, n_files: int = 1, size: int = 1 << 20) -> None:
    """A .tgz of a few KB whose members inflate to `n_files * size` bytes of zeros."""
    with tarfile.open(path, "w:gz") as tar:
        for i in range(n_files):
            info = tarfile.TarInfo(f"big/f{i}.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))


def _big_zip(path, n_files: int = 1, size: int = 1 << 20) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n_files):
            zf.writestr(f"big/f{i}.bin", bytes(size))


def _assert_gone(target) -> None:
    assert not target.exists()
    assert not list(target.parent.glob(f".{target.name}.*")), "temporary folder left behind"


@pytest.mark.parametrize("make", [_big_tgz, _big_zip], ids=["tgz", "zip"])
def test_archive_that_inflates_past_max_bytes_stops(tmp_path, make):
    archive = tmp_path / "bomb.bin"
    make(archive)
    assert archive.stat().st_size < 10_000
    target = tmp_path / "out" / "big"
    target.parent.mkdir()
    with pytest.raises(ArchiveTooLargeError, match="max_bytes=") as err:
        extract_archive(archive, target, max_bytes=100_000)
    assert str(archive) in str(err.value) and isinstance(err.value, UnsafeArchiveError)
    _assert_gone(target)
    assert (
        extract_archive(archive, target, max_bytes=2 << 20) / "f0.bin"
    ).stat().st_size == 1 << 20


@pytest.mark.parametrize("make", [_big_tgz, _big_zip], ids=["tgz", "zip"])
def test_archive_with_too_many_members_stops(tmp_path, make):
    archive = tmp_path / "many.bin"
    make(archive, n_files=30, size=1)
    target = tmp_path / "out" / "big"
    target.parent.mkdir()
    with pytest.raises(ArchiveTooLargeError, match="max_members="):
        extract_archive(archive, target, max_members=10)
    _assert_gone(target)
    assert len(list(extract_archive(archive, target, max_members=40).iterdir())) == 30


def test_untar_data_passes_the_limits_on(home, served):
    root, base, _ = served
    _big_tgz(root / "big.tgz")
    with pytest.raises(ArchiveTooLargeError):
        untar_data(f"{base}/big.tgz", show_progress=False, max_bytes=1000)
    assert _nothing_extracted(home, "big")
    assert (home / "archive" / "big.tgz").is_file()  # kept: it is the limit, not the file


def test_bytes_are_counted_while_writing_not_only_from_headers(tmp_path):
    """A stream that yields more than its header said still stops at the limit."""
    limits = sources._Limits(
        tmp_path / "lying.zip", max_bytes=3 * sources.CHUNK_SIZE, max_members=9
    )
    out = io.BytesIO()
    with pytest.raises(ArchiveTooLargeError, match="max_bytes="):
        sources._copy_bounded(io.BytesIO(bytes(5 * sources.CHUNK_SIZE)), out, 0, limits)
    assert out.tell() <= 3 * sources.CHUNK_SIZE
    assert sources._copy_bounded(io.BytesIO(b"abc"), io.BytesIO(), 10, limits) == 13
