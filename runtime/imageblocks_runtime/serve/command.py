"""The `serve` command, one implementation for `imageblocks-runtime serve` and `imageblocks serve`:
check the folder and the extras, load the model, say where it listens, serve until stopped.

Importing this module imports neither FastAPI nor uvicorn (they are the `serve` extra): a missing
extra is a one-line error naming the package to install.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from imageblocks_runtime.errors import ArgumentError

__all__ = ["LIMITS", "add_serve_arguments", "run_serve", "serve_from_args"]

RUNTIME_EXTRA = "pip install 'imageblocks-runtime[serve]'"
LIMITS: dict[str, str] = {
    "max_upload_mb": "Largest upload in MB (default 10).",
    "max_pixels": "Most pixels decoded per image; JPEGs count at their reduced decode scale "
    "(default 16000000). Larger: 413 from the header.",
    "max_concurrency": "Predictions running at once, each on one thread (default 4).",
    "max_requests": "Predictions in progress (uploading, waiting, running) (default 64); "
    "503 beyond.",
    "body_timeout": "Seconds for a whole upload to arrive (default 60); 408 after.",
    "header_timeout": "Seconds for a request's headers to arrive (default 10); closed after.",
}
"""The service's limits: option name (`--max-upload-mb` ...) -> help; None keeps the default."""
LIMIT_TYPES: dict[str, type] = {
    "max_upload_mb": float,
    "max_pixels": int,
    "max_concurrency": int,
    "max_requests": int,
    "body_timeout": float,
    "header_timeout": float,
}
HOST_HELP = "Address to listen on (0.0.0.0: every interface)."
ALLOWED_HOST_HELP = (
    "Also answer requests for this Host name (repeatable; '*': any). Loopback allows "
    "127.0.0.1, localhost, [::1]; 0.0.0.0 allows any name unless some are given."
)
INT8_HELP = "Serve the int8 graph (model.int8.onnx, from `imageblocks export-onnx MODEL --int8`)."
THREADS_HELP = "ONNX Runtime threads per prediction (default 1: concurrent requests use the cores)."


def run_serve(
    folder: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    allowed_hosts: Sequence[str] = (),
    limits: Mapping[str, float | int | None] | None = None,
    *,
    int8: bool = False,
    threads: int | None = 1,
    model: Any = None,
    cam: Callable[[bytes], Mapping[str, bytes]] | None = None,
    echo: Callable[[str], object] = print,
    extra_hint: str = RUNTIME_EXTRA,
) -> None:
    """Serve the model folder `folder` (blocks until Ctrl+C); `limits`: `LIMITS` values, None
    for a default; `model`: an already loaded model to serve instead of the folder's
    `RuntimeModel`; `cam`: the class activation maps of `?cam=1`."""
    folder = Path(folder)
    if not folder.exists():
        raise ArgumentError(f"model folder not found: {folder}")
    unknown = set(limits or {}) - set(LIMITS)
    if unknown:
        raise ArgumentError(f"unknown service limits: {', '.join(sorted(unknown))}")
    try:
        from imageblocks_runtime.serve import app
    except ImportError as e:
        raise ArgumentError(
            f"the web service needs its extras ({e.name or e}): {extra_hint}"
        ) from None
    if model is None:
        from imageblocks_runtime.model import RuntimeModel

        model = RuntimeModel.load(folder, int8=int8, threads=threads)
    echo(f"serving {folder} on http://{host}:{port}  (Ctrl+C stops)")
    app.serve(
        model,
        host,
        port,
        allowed_hosts=list(allowed_hosts),
        cam=cam,
        **{k: v for k, v in (limits or {}).items() if v is not None},
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` command's arguments (the same names as `imageblocks serve`'s options)."""
    parser.add_argument("model", type=Path, help="Model folder.")
    parser.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    parser.add_argument("--port", type=int, default=8000, help="Port.")
    parser.add_argument(
        "--allowed-host", action="append", default=[], dest="allowed_host", help=ALLOWED_HOST_HELP
    )
    for name, text in LIMITS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=LIMIT_TYPES[name], help=text)
    parser.add_argument("--int8", action="store_true", help=INT8_HELP)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)


def serve_from_args(args: argparse.Namespace) -> None:
    """Run `serve` with the arguments `add_serve_arguments` parsed."""
    if args.threads < 1:
        raise ArgumentError(f"--threads must be at least 1, not {args.threads}")
    run_serve(
        args.model,
        args.host,
        args.port,
        args.allowed_host,
        {name: getattr(args, name) for name in LIMITS},
        int8=args.int8,
        threads=args.threads,
    )
