"""Load test of the HTTP service: concurrent POST /predict from a second process.

Starts the service (`imageblocks.serve.app.serve`) in a subprocess on 127.0.0.1, waits for
/health, then sends `--requests` uploads with `--concurrency` threads and records throughput,
p50/p99 latency and errors. Writes benchmarks/results/serve-<machine>.json and .md.

    .venv/bin/python benchmarks/serve_load.py MODEL_DIR IMAGE [--requests 200 --concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 120.0) -> None:
    """Poll /health until the service answers."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service at {url} did not become healthy in {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    code = f"from imageblocks.serve.app import serve; serve({args.model!r}, host='127.0.0.1', port={port})"
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(url)
        data = Path(args.image).read_bytes()
        name = Path(args.image).name

        def one(_: int) -> tuple[float, int]:
            with httpx.Client(timeout=60) as client:
                t0 = time.perf_counter()
                r = client.post(url + "/predict", files={"file": (name, data, "image/jpeg")})
                return time.perf_counter() - t0, r.status_code

        for i in range(3):  # warm-up
            one(i)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = sorted(t for t, _ in results)
    errors = sum(1 for _, status in results if status != 200)
    out = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "throughput_req_s": round(args.requests / wall, 2),
        "p50_ms": round(statistics.median(lat) * 1000, 1),
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1),
        "errors": errors,
        "image": name,
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "serve-load.json").write_text(json.dumps(out, indent=2))
    md = (
        f"| requests | concurrency | throughput (req/s) | p50 (ms) | p99 (ms) | errors |\n"
        f"| ---: | ---: | ---: | ---: | ---: | ---: |\n"
        f"| {out['requests']} | {out['concurrency']} | {out['throughput_req_s']} | {out['p50_ms']} "
        f"| {out['p99_ms']} | {out['errors']} |\n"
    )
    (ROOT / "results" / "serve-load.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
