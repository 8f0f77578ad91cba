"""Load test of the HTTP service: concurrent POST /predict from a second process.

Starts the service (`imageblocks-runtime serve MODEL`, the implementation `imageblocks serve`
runs too) in a subprocess on 127.0.0.1, waits for /health, then sends `--requests` uploads
from `--concurrency` client threads and records throughput, p50/p99 latency, errors, and the CPU
time per request of the server and of the client (on a shared or small machine the client's
CPU counts against the server's: both are reported). Each client keeps its connection open
(HTTP keep-alive, as a real client does); `--new-connections` opens one per request with a
fresh `httpx.Client`, as this benchmark did before issue 16 (that costs the client ~20 ms of
CPU per request, more than the server spends). `--server-args` passes options to `serve`
(`--threads 2 --max-concurrency 2`, `--int8`). Writes benchmarks/results/serve-load.json / .md.

    .venv/bin/python benchmarks/serve_load.py MODEL_DIR IMAGE [--requests 400 --concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll /health until the service answers."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout and server.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service at {url} did not become healthy in {timeout:.0f} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_load(
    model: str | Path,
    image: str | Path,
    requests: int = 400,
    concurrency: int = 8,
    server_args: list[str] | None = None,
    new_connections: bool = False,
) -> dict[str, Any]:
    """Serve `model`, send it `requests` uploads of `image` from `concurrency` clients: the
    numbers as a dict."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "imageblocks_runtime.cli", "serve", str(model)]
    cmd += ["--port", str(port), *(server_args or [])]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data, name = Path(image).read_bytes(), Path(image).name
    local = threading.local()

    def client() -> httpx.Client:
        if new_connections:
            return httpx.Client(timeout=60)
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
        return local.client

    def one(_: int) -> tuple[float, int]:
        c = client()
        try:
            t0 = time.perf_counter()
            r = c.post(url + "/predict", files={"file": (name, data, "image/jpeg")})
            return time.perf_counter() - t0, r.status_code
        finally:
            if new_connections:
                c.close()

    try:
        wait_healthy(url, server)
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(2 * concurrency)))  # warm-up: connections, arenas
            server_cpu0, client_cpu0 = cpu_seconds(server.pid), time.process_time()
            t0 = time.perf_counter()
            results = list(pool.map(one, range(requests)))
            wall = time.perf_counter() - t0
            server_cpu1, client_cpu1 = cpu_seconds(server.pid), time.process_time()
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = sorted(t for t, _ in results)
    server_ms = (
        round((server_cpu1 - server_cpu0) * 1000 / requests, 2)
        if server_cpu0 is not None and server_cpu1 is not None
        else None
    )
    return {
        "requests": requests,
        "concurrency": concurrency,
        "connections": "new per request" if new_connections else "kept alive per client",
        "server_args": " ".join(server_args or []),
        "throughput_req_s": round(requests / wall, 2),
        "p50_ms": round(statistics.median(lat) * 1000, 1),
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1),
        "errors": sum(1 for _, status in results if status != 200),
        "server_cpu_ms_per_request": server_ms,
        "client_cpu_ms_per_request": round((client_cpu1 - client_cpu0) * 1000 / requests, 2),
        "image": name,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """`run_load` results as a Markdown table."""
    lines = [
        "| requests | clients | connections | serve options | req/s | p50 (ms) | p99 (ms) "
        "| errors | server CPU ms/req | client CPU ms/req |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['requests']} | {r['concurrency']} | {r['connections']} "
            f"| {r['server_args'] or 'defaults'} | {r['throughput_req_s']} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['errors']} | {r['server_cpu_ms_per_request']} "
            f"| {r['client_cpu_ms_per_request']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--new-connections", action="store_true", help="a new client per request")
    ap.add_argument("--server-args", default="", help="options for `serve`, one string")
    args = ap.parse_args()
    out = run_load(
        args.model,
        args.image,
        args.requests,
        args.concurrency,
        shlex.split(args.server_args),
        args.new_connections,
    )
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "serve-load.json").write_text(json.dumps(out, indent=2))
    md = markdown([out])
    (ROOT / "results" / "serve-load.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
