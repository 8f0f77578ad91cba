"""untar_data against a local HTTP server, safe extraction, and file listing."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import socket
import tarfile
import threading
import zipfile

import pytest

from imageblocks.data import sources
from imageblocks.data.sources import (
    UnsafeArchiveError,
    URLs,
    get_files,
    get_image_files,
    imageblocks_home,
    untar_data,
)
from imageblocks.download import ChecksumError, DownloadError, download_url
from imageblocks.lists import L
from imageblocks.paths import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; honours `Range: bytes=N-` when the server's `ranges` flag is set."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        if not (self.server.ranges and rng and rng.startswith("bytes=")):
            return super().do_GET()
        path = self.translate_path(self.path)
        data = open(path, "rb").read()
        start = int(rng[len("bytes=") :].split("-")[0])
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


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
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests, server.ranges = [], True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def _make_tgz(dest, top: str | None, files: dict[str, bytes]) -> bytes:
    """A .tgz of `files`, under the folder `top` when given; returns its bytes."""
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return open(dest, "rb").read()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FILES = {"train.csv": b"fname,labels\na.jpg,cat\n", "train/a.jpg": b"\xff\xd8 not really"}


def test_untar_data_downloads_extracts_and_caches(home, served):
    root, base, server = served
    _make_tgz(root / "tiny_ds.tgz", "tiny_ds", FILES)
    path = untar_data(f"{base}/tiny_ds.tgz", show_progress=False)
    assert isinstance(path, Path)
    assert path == home / "data" / "tiny_ds"
    assert (path / "train.csv").read_bytes() == FILES["train.csv"]
    assert (path / "train" / "a.jpg").is_file()
    assert (home / "archive" / "tiny_ds.tgz").is_file()
    assert not list((home / "data").glob(".*"))  # no temporary folder left behind
    server.shutdown()  # a second call must not touch the network
    n_requests = len(server.requests)
    assert untar_data(f"{base}/tiny_ds.tgz") == path
    assert len(server.requests) == n_requests


def test_untar_data_archive_without_top_folder(home, served):
    root, base, _ = served
    _make_tgz(root / "flat.tar.gz", None, FILES)
    path = untar_data(f"{base}/flat.tar.gz", show_progress=False)
    assert path.name == "flat"
    assert sorted(p.name for p in path.ls()) == ["train", "train.csv"]


def test_untar_data_data_argument_and_zip(home, served, tmp_path):
    root, base, _ = served
    with zipfile.ZipFile(root / "zipped.zip", "w") as zf:
        zf.writestr("zipped/labels.csv", "a,b\n")
    path = untar_data(f"{base}/zipped.zip", data=tmp_path / "elsewhere", show_progress=False)
    assert path == tmp_path / "elsewhere" / "zipped"
    assert (path / "labels.csv").read_text() == "a,b\n"


def test_checksum_mismatch_names_url_expected_and_got(home, served):
    root, base, _ = served
    data = _make_tgz(root / "ds.tgz", "ds", FILES)
    url = f"{base}/ds.tgz"
    with pytest.raises(ChecksumError) as err:
        untar_data(url, sha256="0" * 64, show_progress=False)
    message = str(err.value)
    assert url in message and "0" * 64 in message and hashlib.sha256(data).hexdigest() in message
    assert not (home / "archive" / "ds.tgz").exists()
    assert not (home / "archive" / "ds.tgz.part").exists()
    assert not (home / "data" / "ds").exists()
    good = hashlib.sha256(data).hexdigest()
    assert (untar_data(url, sha256=good, show_progress=False) / "train.csv").is_file()


def test_offline_error_names_url_archive_and_target(home):
    url = f"http://127.0.0.1:{_unused_port()}/pascal_2007.tgz"
    with pytest.raises(DownloadError) as err:
        untar_data(url, show_progress=False)
    message = str(err.value)
    assert url in message
    assert str(home / "archive" / "pascal_2007.tgz") in message
    assert str(home / "data" / "pascal_2007") in message
    assert isinstance(err.value, RuntimeError)


def test_offline_env_fails_without_network(home, served, monkeypatch):
    root, base, server = served
    _make_tgz(root / "ds.tgz", "ds", FILES)
    monkeypatch.setenv("IMAGEBLOCKS_OFFLINE", "1")
    with pytest.raises(DownloadError, match="IMAGEBLOCKS_OFFLINE") as err:
        untar_data(f"{base}/ds.tgz")
    assert str(home / "archive" / "ds.tgz") in str(err.value)
    assert server.requests == []
    # an archive put in place by hand is extracted with no network
    (home / "archive").mkdir(parents=True)
    (home / "archive" / "ds.tgz").write_bytes((root / "ds.tgz").read_bytes())
    assert (untar_data(f"{base}/ds.tgz") / "train.csv").is_file()
    assert server.requests == []


@pytest.mark.parametrize("case", ["resume", "no_range_support", "part_too_long"])
def test_download_resumes_a_partial_file(tmp_path, served, case):
    root, base, server = served
    server.ranges = case != "no_range_support"
    data = os.urandom(300_000)
    (root / "blob.bin").write_bytes(data)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    part = tmp_path / "out" / "blob.bin.part"
    stale = {"resume": data[:100_000], "no_range_support": b"junk", "part_too_long": data + b"x"}
    part.write_bytes(stale[case])
    got = download_url(f"{base}/blob.bin", dest, show_progress=False)
    assert got == dest and dest.read_bytes() == data and not part.exists()
    if case == "resume":
        assert server.requests == [("/blob.bin", "bytes=100000-")]
    elif case == "part_too_long":  # 416, then the whole file
        assert server.requests == [("/blob.bin", "bytes=300001-"), ("/blob.bin", None)]


def test_download_error_says_where_to_put_the_file(tmp_path, served):
    _, base, _ = served
    with pytest.raises(DownloadError) as err:
        download_url(f"{base}/missing.bin", tmp_path / "missing.bin", show_progress=False)
    assert "404" in str(err.value) and str(tmp_path / "missing.bin") in str(err.value)


def _evil_tar(path, kind: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("evil/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if kind == "symlink":
            link = tarfile.TarInfo("evil/passwd")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        else:
            bad = tarfile.TarInfo("../escaped.txt" if kind == "dotdot" else "/tmp/abs_escape.txt")
            bad.size = 3
            tar.addfile(bad, io.BytesIO(b"bad"))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_tar_member_is_rejected(home, served, kind):
    root, base, _ = served
    _evil_tar(root / "evil.tgz", kind)
    with pytest.raises(UnsafeArchiveError):
        untar_data(f"{base}/evil.tgz", show_progress=False)
    assert not (home / "data" / "evil").exists()
    assert not (home / "escaped.txt").exists() and not (home / "data" / "escaped.txt").exists()
    assert not list((home / "data").glob(".*"))


def test_unsafe_zip_member_is_rejected(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../up.txt", "x")
    with pytest.raises(UnsafeArchiveError):
        sources.extract_archive(archive, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not (tmp_path.parent / "up.txt").exists()


def test_dataset_names_and_home(home):
    assert sources.dataset_name(URLs.PASCAL_2007) == "pascal_2007"
    assert sources.dataset_name(URLs.BIWI_HEAD_POSE) == "biwi_head_pose"
    assert sources.dataset_name(URLs.PETS) == "oxford-iiit-pet"
    assert sources.dataset_name("https://x.org/a/b.tar.gz") == "b"
    assert sources.dataset_name(URLs.DEMO_POINTS) == "demo_points"
    assert URLs.PASCAL_2007 == "https://s3.amazonaws.com/fast-ai-imagelocal/pascal_2007.tgz"
    assert imageblocks_home() == home


def test_untar_data_demo_url_generates_once(home, monkeypatch):
    from imageblocks import demodata

    calls, real = [], demodata.make_demo_points

    def fake(dest, show_progress=False):
        calls.append(dest)
        return real(dest, n_persons=1, frames_per_person=1)

    monkeypatch.setattr(demodata, "make_demo_points", fake)
    path = untar_data(URLs.DEMO_POINTS)
    assert path == home / "data" / "demo_points" and (path / "01" / "rgb.cal").is_file()
    assert untar_data(URLs.DEMO_POINTS) == path and len(calls) == 1


@pytest.fixture
def tree(tmp_path):
    names = ["b.png", "a.JPG", "sub/c.jpeg", "sub/deep/d.webp", "sub/e.txt", "other/f.TIFF",
             ".hidden/g.jpg", "notes.md"]  # fmt: skip
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_get_image_files_recurses_sorts_and_filters(tree):
    files = get_image_files(tree)
    assert isinstance(files, L) and all(isinstance(f, Path) for f in files)
    rel = [str(f.relative_to(tree)) for f in files]
    assert rel == ["a.JPG", "b.png", "other/f.TIFF", "sub/c.jpeg", "sub/deep/d.webp"]
    assert [f.name for f in get_image_files(tree, recurse=False)] == ["a.JPG", "b.png"]
    rel = [str(f.relative_to(tree)) for f in get_image_files(tree, folders=["sub"])]
    assert rel == ["sub/c.jpeg", "sub/deep/d.webp"]
    assert [f.name for f in get_image_files(tree, folders=[".", "other"])] == [
        "a.JPG",
        "b.png",
        "f.TIFF",
    ]


def test_get_files_extensions(tree):
    assert [f.name for f in get_files(tree, extensions=["txt", ".MD"])] == ["notes.md", "e.txt"]
    assert len(get_files(tree)) == 7  # everything but the hidden folder


def test_path_ls(tree):
    listing = Path(tree).ls()
    assert isinstance(listing, L)
    assert [p.name for p in listing] == [".hidden", "a.JPG", "b.png", "notes.md", "other", "sub"]
    assert all(isinstance(p, Path) for p in listing)
    try:
        Path.BASE_PATH = tree
        assert repr(Path(tree) / "sub") == "Path('sub')"
    finally:
        Path.BASE_PATH = None


def _write(path, data: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def biwi_like(tmp_path):
    """Person folders `01`, `02` on "shared storage", outside the dataset folder."""
    storage = tmp_path / "storage" / "biwi"
    for person in ("01", "02"):
        for frame in (3, 4):
            _write(storage / person / f"frame_{frame:05d}_rgb.jpg")
            _write(storage / person / f"frame_{frame:05d}_pose.txt")
        _write(storage / person / "rgb.cal")
    return storage


def _rel(files, root) -> list[str]:
    return [str(f.relative_to(root)) for f in files]


def test_symlinked_person_folders_list_like_a_copy(tmp_path, biwi_like):
    linked, copy = tmp_path / "linked", tmp_path / "copy"
    linked.mkdir()
    for person in ("01", "02"):
        (linked / person).symlink_to(biwi_like / person, target_is_directory=True)
    shutil.copytree(biwi_like, copy)
    files = get_image_files(linked)
    assert len(files) == 4 and files[0] == linked / "01" / "frame_00003_rgb.jpg"  # not resolved
    assert _rel(files, linked) == _rel(get_image_files(copy), copy)
    assert _rel(get_files(linked), linked) == _rel(get_files(copy), copy)
    assert _rel(get_image_files(linked, folders=["02"]), linked) == [
        "02/frame_00003_rgb.jpg",
        "02/frame_00004_rgb.jpg",
    ]


def test_symlinked_files_are_listed_through_the_link(tmp_path, biwi_like):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "a.jpg").symlink_to(biwi_like / "01" / "frame_00003_rgb.jpg")
    (root / "sub").mkdir()
    (root / "sub" / "b.png").symlink_to(biwi_like / "02" / "frame_00004_rgb.jpg")
    assert get_image_files(root) == [root / "a.jpg", root / "sub" / "b.png"]
    assert get_image_files(root, recurse=False) == [root / "a.jpg"]


def test_link_loops_are_walked_once(tmp_path):
    root = tmp_path / "ds"
    _write(root / "01" / "x.jpg")
    (root / "01" / "a").symlink_to("..", target_is_directory=True)  # back to the root
    (root / "01" / "b").symlink_to("a", target_is_directory=True)  # a link to that link
    (root / "self").symlink_to(root, target_is_directory=True)
    (root / "tight").symlink_to("tight")  # a link to itself: ELOOP
    assert get_image_files(root) == [root / "01" / "x.jpg"]
    assert len(get_files(root)) == 1


def test_two_links_to_one_folder_list_it_once_by_the_first_path(tmp_path, biwi_like):
    root = tmp_path / "ds"
    root.mkdir()
    for name in ("y", "x"):
        (root / name).symlink_to(biwi_like / "01", target_is_directory=True)
    assert _rel(get_image_files(root), root) == ["x/frame_00003_rgb.jpg", "x/frame_00004_rgb.jpg"]
    # a link to a folder that is also in the tree: the real path lists it
    _write(root / "z_real" / "c.jpg")
    (root / "a_link").symlink_to(root / "z_real", target_is_directory=True)
    assert "z_real/c.jpg" in _rel(get_image_files(root), root)
    assert "a_link/c.jpg" not in _rel(get_image_files(root), root)


def test_broken_links_are_skipped(tmp_path):
    root = tmp_path / "ds"
    _write(root / "ok.jpg")
    (root / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert get_image_files(root) == [root / "ok.jpg"]
    assert get_image_files(root, recurse=False) == [root / "ok.jpg"]
    assert get_files(root) == [root / "ok.jpg"]


def test_listing_a_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere is not a folder"):
        get_image_files(tmp_path / "nowhere")
    _write(tmp_path / "a.jpg")
    with pytest.raises(NotADirectoryError, match="a.jpg is not a folder"):
        get_files(tmp_path / "a.jpg", recurse=False)
