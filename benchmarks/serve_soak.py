"""Soak test of the HTTP service: normal clients beside idle, slow, bursting and oversize ones.

Starts the service (`imageblocks.serve.app.serve`, default limits) in a subprocess on 127.0.0.1
and, for `--seconds` (60), runs at once:
- normal clients: `--clients` threads posting IMAGE to /predict one after the other;
- a /health probe every 0.2 s;
- 100 idle sockets (reopened when the server closes them at its header deadline);
- 40 slow bodies: a /predict upload sending one byte every 5 s (reopened after their 408);
- a burst every 10 s of `--burst` concurrent uploads, over the 64 requests in progress;
- an oversize upload (30 MB, sent whole before reading, as urllib does) every 3 s, and a
  49-megapixel RGBA PNG of a few hundred KB every 5 s.
It reports /health and /predict p50/p99, every answer and error by kind, and the server's RSS
before, at its peak and after. Writes benchmarks/results/serve-soak.json and .md.

    .venv/bin/python benchmarks/serve_soak.py [MODEL_DIR IMAGE] [--seconds 60]

Without MODEL_DIR an untrained 32 px resnet18 is exported first (tests/serve_models.py).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
BOUNDARY = "soakb0undary"
IDLE_SOCKETS, SLOW_BODIES = 100, 40


class Soak:
    """Shared counters and latencies of one run."""

    def __init__(self, port: int, seconds: float) -> None:
        self.port, self.end = port, time.monotonic() + seconds
        self.lock = threading.Lock()
        self.answers: collections.Counter[str] = collections.Counter()
        self.health: list[float] = []
        self.predict: list[float] = []
        self.rss: list[int] = []

    def count(self, kind: str) -> None:
        with self.lock:
            self.answers[kind] += 1

    def running(self) -> bool:
        return time.monotonic() < self.end

    def post(self, kind: str, body: bytes, timeout: float = 60) -> tuple[int | None, float]:
        """POST `body` to /predict with urllib; counts `kind status` or `kind ExceptionName`."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/predict",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            e.read()
            status = e.code
            if status == 503 and e.headers.get("Retry-After") is None:
                self.count(f"{kind} 503 without Retry-After")
        except (OSError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            self.count(f"{kind} {type(reason).__name__}")
            return None, time.perf_counter() - t0
        self.count(f"{kind} {status}")
        return status, time.perf_counter() - t0


def multipart(data: bytes, name: str = "image.jpg") -> bytes:
    """A multipart/form-data body with `data` in the field `file`."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (VmHWM: its peak) in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def normal_client(soak: Soak, body: bytes) -> None:
    while soak.running():
        status, seconds = soak.post("predict", body)
        if status == 200:
            with soak.lock:
                soak.predict.append(seconds)


def health_probe(soak: Soak) -> None:
    while soak.running():
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{soak.port}/health", timeout=10) as r:
                r.read()
                soak.count(f"health {r.status}")
        except urllib.error.HTTPError as e:
            soak.count(f"health {e.code}")
        except OSError as e:
            soak.count(f"health {type(getattr(e, 'reason', e)).__name__}")
        with soak.lock:
            soak.health.append(time.perf_counter() - t0)
        time.sleep(0.2)


def _closed(s: socket.socket) -> bytes | None:
    """What the server sent before closing `s`, or None while it is open and silent."""
    if not select.select([s], [], [], 0)[0]:
        return None
    try:
        data = s.recv(65536)
        while data and select.select([s], [], [], 0.5)[0] and (more := s.recv(65536)):
            data += more
        return data or b""
    except OSError:
        return b""


def idle_sockets(soak: Soak) -> None:
    socks = [socket.create_connection(("127.0.0.1", soak.port)) for _ in range(IDLE_SOCKETS)]
    while soak.running():
        for i, s in enumerate(socks):
            if _closed(s) is not None:
                soak.count("idle socket closed by the server")
                s.close()
                socks[i] = socket.create_connection(("127.0.0.1", soak.port))
        time.sleep(0.5)
    for s in socks:
        s.close()


def slow_bodies(soak: Soak) -> None:
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()

    def start() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", soak.port))
        s.sendall(head + b"-")
        return s

    socks = [start() for _ in range(SLOW_BODIES)]
    while soak.running():
        for i, s in enumerate(socks):
            answer = _closed(s)
            if answer is not None:
                soak.count(f"slow body {answer[:12].decode(errors='replace') or 'closed'}")
                s.close()
                socks[i] = start()
            else:
                try:
                    s.sendall(b"-")
                except OSError:
                    soak.count("slow body send error")
        time.sleep(5)
    for s in socks:
        s.close()


def bursts(soak: Soak, body: bytes, size: int) -> None:
    while soak.running():
        time.sleep(10)
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(lambda _: soak.post("burst", body), range(size)))


def oversize(soak: Soak, bomb: bytes) -> None:
    big, n = multipart(bytes(30 * 2**20)), 0
    while soak.running():
        time.sleep(1)
        n += 1
        if n % 3 == 0:
            soak.post("oversize 30 MB", big)
        if n % 5 == 0:
            soak.post("49 MP PNG", bomb)


def memory_sampler(soak: Soak, pid: int) -> None:
    while soak.running():
        with soak.lock:
            soak.rss.append(rss_kb(pid))
        time.sleep(0.2)


def png_bomb() -> bytes:
    """A 7000x7000 RGBA PNG (49 megapixels) of a few hundred KB."""
    arr = np.zeros((7000, 7000, 4), np.uint8)
    arr[::50, :, :] = 255
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, "PNG", optimize=False)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else -1.0


def tiny_model(folder: Path) -> tuple[Path, Path]:
    """An untrained 32 px resnet18 export and a test JPEG (the service tests' helpers)."""
    sys.path.insert(0, str(ROOT.parent))
    from tests.serve_models import export_multilabel, write_images

    images = write_images(folder / "images")
    return export_multilabel(images, folder / "model"), images[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("image", nargs="?")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--burst", type=int, default=48)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.model is None:
        model, image = tiny_model(Path(tmp.name))
    else:
        model, image = Path(args.model), Path(args.image)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        f"from imageblocks.serve.app import serve; serve({str(model)!r}, port={port}, "
        "log_level='warning')"
    )
    log = open(Path(tmp.name) / "server.log", "w+")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)
    soak = Soak(port, 0)
    body = multipart(image.read_bytes(), image.name)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and soak.post("warm-up", body, 5)[0] != 200:
            time.sleep(0.5)
        time.sleep(2)
        before = rss_kb(server.pid)
        bomb = multipart(png_bomb(), "bomb.png")
        soak = Soak(port, args.seconds)
        jobs = [lambda: normal_client(soak, body) for _ in range(args.clients)]
        jobs += [lambda: health_probe(soak), lambda: idle_sockets(soak)]
        jobs += [lambda: slow_bodies(soak), lambda: bursts(soak, body, args.burst)]
        jobs += [lambda: oversize(soak, bomb), lambda: memory_sampler(soak, server.pid)]
        threads = [threading.Thread(target=job, daemon=True) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 120)
        time.sleep(3)  # the server returns memory once no request has been in progress a while
        after = rss_kb(server.pid)
        peak = max(soak.rss + [after])
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.seek(0)
        server_log = log.read()
        log.close()
        tmp.cleanup()
    five_xx = {k: n for k, n in soak.answers.items() if k.split()[-1].startswith("5")}
    unintended = {k: n for k, n in five_xx.items() if not k.endswith(" 503")}
    out = {
        "seconds": args.seconds,
        "model": "untrained resnet18, 32 px" if args.model is None else str(model),
        "normal_clients": args.clients,
        "idle_sockets": IDLE_SOCKETS,
        "slow_bodies": SLOW_BODIES,
        "burst_size": args.burst,
        "health_ms": {
            "n": len(soak.health),
            "p50": pct(soak.health, 0.5),
            "p99": pct(soak.health, 0.99),
            "max": pct(soak.health, 1.0),
        },
        "predict_ms": {
            "n": len(soak.predict),
            "p50": pct(soak.predict, 0.5),
            "p99": pct(soak.predict, 0.99),
        },
        "answers": dict(sorted(soak.answers.items())),
        "unintended_5xx": unintended,
        "health_always_under_1s": bool(soak.health) and max(soak.health) < 1.0,
        "server_rss_mb": {
            "before": round(before / 1024),
            "peak": round(peak / 1024),
            "after": round(after / 1024),
        },
        "server_log_tracebacks": server_log.count("Traceback"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, shared with other work",
        "python": platform.python_version(),
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "serve-soak.json").write_text(json.dumps(out, indent=2) + "\n")
    h, p, m = out["health_ms"], out["predict_ms"], out["server_rss_mb"]
    rows = "\n".join(f"| {k} | {n} |" for k, n in out["answers"].items())
    md = (
        f"Soak of {args.seconds:g} s: {args.clients} normal clients beside {IDLE_SOCKETS} idle "
        f"sockets, {SLOW_BODIES} slow bodies, bursts of {args.burst} every 10 s, oversize "
        f"uploads; {out['machine']}.\n\n"
        "| /health p50 / p99 / max (ms) | /predict p50 / p99 (ms) | RSS before / peak / after (MB) |\n"
        "| ---: | ---: | ---: |\n"
        f"| {h['p50']} / {h['p99']} / {h['max']} | {p['p50']} / {p['p99']} | "
        f"{m['before']} / {m['peak']} / {m['after']} |\n\n"
        f"| answer | count |\n| --- | ---: |\n{rows}\n\n"
        f"Unintended 5xx: {unintended or 'none'}; server tracebacks: "
        f"{out['server_log_tracebacks']}.\n"
    )
    (ROOT / "results" / "serve-soak.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
