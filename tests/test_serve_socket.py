"""The service on a real socket: uvicorn on loopback, clients that are idle, slow, too many,
too large, or gone; and the server process's memory after a burst."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from imageblocks.serve.app import create_app
from imageblocks.serve.server import allowed_hosts_for, uvicorn_config
from tests.serve_models import export_multilabel, write_images

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "b0undary"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Test images and an exported multi-label model (built once)."""
    root = tmp_path_factory.mktemp("socket")
    images = write_images(root / "images")
    return {"images": images, "ml": export_multilabel(images, root / "ml")}


@contextlib.contextmanager
def running(app, header_timeout: float = 10.0) -> Iterator[int]:
    """Serve `app` as `serve` does (uvicorn, h11, header deadline) in a thread; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn_config(app, header_timeout=header_timeout, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def multipart(data: bytes, name: str = "a.jpg") -> bytes:
    """A multipart/form-data body with `data` in the field `file`."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
    return (
        (head + "Content-Type: image/jpeg\r\n\r\n").encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def post(port: int, body: bytes, timeout: float = 30) -> tuple[int, Message, dict]:
    """POST `body` to /predict with urllib (sends it all, then reads): (status, headers, JSON)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def get(port: int, path: str = "/health", host: str | None = None) -> tuple[int, float, bytes]:
    """GET `path`: (status, seconds taken, body)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if host is not None:
        req.add_unredirected_header("Host", host)
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, time.perf_counter() - t0, r.read()
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - t0, e.read()


def raw(port: int, data: bytes) -> socket.socket:
    """A connection that has sent `data` (maybe an unfinished request)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        s.sendall(data)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (10 s at most)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def read_response(s: socket.socket) -> bytes:
    """One whole response (headers and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(
            v
            for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    while len(rest) < length:
        rest += s.recv(65536)
    return head + b"\r\n\r\n" + rest


def predict_head(length: int, extra: str = "") -> bytes:
    """The headers of a /predict upload of `length` bytes."""
    return (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def test_idle_sockets_and_slow_bodies_do_not_deny_service(models):
    app = create_app(models["ml"], body_timeout=1.5)
    jpeg = models["images"][0].read_bytes()
    with running(app, header_timeout=1.0) as port:
        idle = [raw(port, b"") for _ in range(50)]
        slowloris = [raw(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(10)]
        slow = [raw(port, predict_head(10_000) + b"--") for _ in range(40)]
        time.sleep(0.3)  # the slow bodies' requests are in progress now
        assert app.state.requests.active == 40
        for _ in range(3):
            status, seconds, _ = get(port)
            assert status == 200 and seconds < 1
        status, _, res = post(port, multipart(jpeg))
        assert status == 200 and res["task"] == "multilabel"
        # Past the deadlines: idle and unfinished headers closed, slow bodies answered 408.
        for s in idle + slowloris:
            assert read_all(s) == b""
        for s in slow:
            answer = read_all(s)
            assert answer.startswith(b"HTTP/1.1 408") and b"within the server's limit" in answer
        for s in idle + slowloris + slow:
            s.close()
        assert app.state.requests.active == 0 and get(port)[0] == 200


def test_headers_of_the_next_request_on_a_kept_connection_have_a_deadline(models):
    with running(create_app(models["ml"]), header_timeout=0.5) as port:
        s = raw(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200")
        t0 = time.perf_counter()
        for _ in range(5):  # a header line now and then does not keep it open
            s.sendall(b"X-Slow: 1\r\n" if _ else b"GET /health HTTP/1.1\r\n")
            time.sleep(0.15)
        assert read_all(s) == b"" and time.perf_counter() - t0 < 2
        s.close()


def test_over_the_limit_requests_get_a_readable_503_with_retry_after(models):
    app = create_app(models["ml"], max_requests=2, max_concurrency=1)
    predict = app.state.model.predict

    def slow(item):
        time.sleep(0.3)
        return predict(item)

    app.state.model.predict = slow
    body = multipart(models["images"][0].read_bytes() + bytes(200_000))  # sent before reading
    with running(app) as port, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: post(port, body), range(16)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
    for status, headers, res in results:
        if status == 503:
            assert headers["Retry-After"] == "1" and "busy" in res["detail"]


def test_an_upload_over_the_limit_gets_a_readable_413(models):
    with running(create_app(models["ml"], max_upload_mb=1)) as port:
        status, _, res = post(port, multipart(bytes(50 * 2**20)))  # urllib: sends all first
        assert status == 413 and "larger than the limit of 1 MB" in res["detail"]
        # Expect: 100-continue: answered at once, the body is never asked for.
        s = raw(port, predict_head(50 * 2**20, "Expect: 100-continue\r\n"))
        answer = read_all(s)
        s.close()
        assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer
        assert get(port)[0] == 200


def test_a_client_gone_mid_upload_is_one_log_line(models, caplog):
    app = create_app(models["ml"])
    with caplog.at_level(logging.INFO), running(app) as port:
        s = raw(port, predict_head(100_000) + multipart(bytes(5000))[:-20])
        time.sleep(0.3)
        s.close()
        deadline = time.monotonic() + 5
        while app.state.requests.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(port)[0] == 200
    gone = [r for r in caplog.records if "went away during its upload" in r.getMessage()]
    assert len(gone) == 1 and gone[0].name == "imageblocks.serve"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_requests_for_other_host_names_are_refused(models):
    app = create_app(models["ml"], allowed_hosts=allowed_hosts_for("127.0.0.1"))
    with running(app) as port:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LocalHost"):
            assert get(port, host=host)[0] == 200, host
        for host in (f"evil.example:{port}", "attacker.test", f"127.0.0.1.nip.io:{port}"):
            status, _, text = get(port, "/info", host=host)
            assert status == 400 and b"Invalid host" in text, host


@pytest.mark.parametrize(
    "host, extra, allowed",
    [
        ("127.0.0.1", (), ["127.0.0.1", "localhost", "[::1]"]),
        ("::1", (), ["127.0.0.1", "localhost", "[::1]"]),
        ("localhost", ("box.lan",), ["127.0.0.1", "localhost", "[::1]", "box.lan"]),
        ("0.0.0.0", (), None),
        ("::", (), None),
        ("0.0.0.0", ("API.example.com", "fe80::1"), ["api.example.com", "[fe80::1]"]),
        ("192.168.1.5", (), ["192.168.1.5"]),
        ("192.168.1.5", ("*",), None),
    ],
)
def test_allowed_host_names_follow_the_bound_address(host, extra, allowed):
    assert allowed_hosts_for(host, extra) == allowed


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (or its peak, VmHWM) in kB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_the_server_process_returns_its_memory_after_a_burst(models, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    code = (
        "from imageblocks.serve.app import serve; "
        f"serve({str(models['ml'])!r}, port={port}, max_concurrency=2, log_level='warning')"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if get(port)[0] == 200:
                    break
            time.sleep(0.2)
        jpeg = models["images"][0].read_bytes()
        assert post(port, multipart(jpeg))[0] == 200
        time.sleep(1.5)
        idle = rss_kb(server.pid)
        buf = io.BytesIO()  # 12 MP RGBA: about 180 MB to decode and flatten, 50 KB to send
        gradient = np.linspace(0, 255, 4000, dtype=np.uint8)
        Image.fromarray(np.dstack([np.tile(gradient, (3000, 1))] * 4), "RGBA").save(buf, "PNG")
        body = multipart(buf.getvalue(), "big.png")
        with ThreadPoolExecutor(4) as pool:
            assert [s for s, _, _ in pool.map(lambda _: post(port, body), range(8))] == [200] * 8
        peak = rss_kb(server.pid, "VmHWM")
        deadline = time.monotonic() + 10
        while rss_kb(server.pid) > idle + 50_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = rss_kb(server.pid)
        print(
            f"RSS idle {idle / 1024:.0f} MB, peak {peak / 1024:.0f} MB, after {after / 1024:.0f} MB"
        )
        assert peak - idle > 150_000, "the burst did not use memory: the test proves nothing"
        assert after < idle + 50_000
    finally:
        server.terminate()
        server.wait(10)
