"""The FastAPI app: load a model folder once (ONNX Runtime), answer `/predict` with bounded,
checked uploads.

Every upload is checked before the model sees it, cheapest check first: the size (Content-Length,
then counted while streaming, never reading past the limit), the magic bytes (an image type we
accept), the header's dimensions against the pixel budget (counted at the size that will really
be decoded: a JPEG at its reduced DCT scale), and only then a full decode.
Clients get a status code and a short message; details and tracebacks go to the log only.

Load is bounded by requests, not connections: at most `max_requests` predictions in progress
(receiving, waiting or running; 503 with `Retry-After` beyond), `max_concurrency` of them in the
model at once, each on its own thread of a pool of that size (ONNX Runtime runs each with
`threads` intra-op threads, one by default: on a busy service the requests are the parallelism);
a waiting upload stays spooled (1 MB in memory, the rest in a temporary file).
`/health`, `/info` and the page are never limited. Bodies have a deadline (`body_timeout`, 408)
and early answers are readable (`guard.BodyGuard`); `serve` adds the header deadline and the
allowed `Host` names (`server`).

`POST /predict?cam=1` (classification models) adds `cams`: for each predicted label, its class
activation map over the image the model saw, as a PNG data URL; one more forward and backward
pass, inside the same request and model slots. The maps need PyTorch, so the runtime has none of
its own: the main package passes a `CamProvider` built from the PyTorch learner
(`imageblocks serve MODEL --cam`); without one `/info` says `"cam": false` and `?cam=1` is a 400.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from uvicorn import Server

from imageblocks_runtime import __version__
from imageblocks_runtime.errors import ImageblocksError, ItemError
from imageblocks_runtime.image import ImageTooLarge, _scaled_size, probe_image
from imageblocks_runtime.model import RuntimeModel
from imageblocks_runtime.serve.guard import BodyGuard, BodyTimeout
from imageblocks_runtime.serve.limits import RequestLimit
from imageblocks_runtime.serve.server import allowed_hosts_for, uvicorn_config

CamProvider = Callable[[bytes], Mapping[str, bytes]]
"""Class activation maps of one encoded image: predicted label -> PNG of its map (needs torch)."""

log = logging.getLogger("imageblocks.serve")

MB = 1024 * 1024
MULTIPART_OVERHEAD = 16 * 1024  # room for boundaries and part headers around the file
DEFAULT_MAX_PIXELS = 16_000_000  # decoded pixels: a 12 MP phone photo at full size passes
RETRY_AFTER_S = 1
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


class _TooLarge(ImageblocksError):
    """The request body grew past the limit while it was being read."""


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes of `data`, or None if it is not one we accept."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in MAGIC if data.startswith(magic)), None)


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass `stream` through, raising `_TooLarge` as soon as more than `limit` bytes came in."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        yield chunk


@contextlib.asynccontextmanager
async def receive_upload(request: Request, limit: int) -> AsyncIterator[UploadFile]:
    """The multipart field `file`, at most `limit` bytes, spooled (413, 415, 408 or 400 if not).

    The file stays in starlette's spool (memory up to 1 MB, then a temporary file) until the
    caller reads it; it is deleted on leaving the block.
    """
    too_large = HTTPException(413, f"The upload is larger than the limit of {limit / MB:g} MB.")
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(415, "Send the image as multipart/form-data, in a field named 'file'.")
    body_limit = limit + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "Invalid Content-Length header.")
        if int(declared) > body_limit:
            raise too_large
    parser = MultiPartParser(
        request.headers, _bounded(request.stream(), body_limit), max_files=1, max_fields=8
    )
    try:
        form = await parser.parse()
    except _TooLarge:
        raise too_large from None
    except MultiPartException as e:
        raise HTTPException(400, f"Malformed multipart body: {e.message}") from None
    except BodyTimeout as e:
        raise HTTPException(
            408, f"The upload did not arrive within the server's limit of {e.seconds:g} s."
        ) from None
    except ClientDisconnect:
        client = request.client
        log.info(
            "%s went away during its upload", f"{client[0]}:{client[1]}" if client else "a client"
        )
        raise HTTPException(400, "The client disconnected during the upload.") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "No file in the request: send it in a field named 'file'.")
        if upload.size is not None and upload.size > limit:
            raise too_large
        if not upload.size:
            raise HTTPException(400, "The uploaded file is empty.")
        yield upload
    finally:
        await form.close()


def check_header(data: bytes, max_pixels: int, draft: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) shown by the image, from its header alone; 413 over the pixel budget.

    The budget counts the pixels the model's decode allocates: a JPEG decoded at reduced DCT
    scale to at least `draft` (the model's resize) counts at that scale, any other format at
    full size. The size returned is the displayed one (EXIF orientation applied), the one
    `Learner.predict` maps points into.
    """
    try:
        probe = probe_image(data)
    except ImageTooLarge:  # over Pillow's own decompression-bomb limit
        raise HTTPException(
            413, f"The image is too large: more than {max_pixels / 1e6:g} million pixels."
        ) from None
    except ItemError as e:
        log.info("unreadable image header: %s", e)
        raise HTTPException(400, "The image header is unreadable: the file is corrupt.") from None
    w, h = probe.width, probe.height
    dw, dh = _scaled_size(w, h, draft) if probe.format == "JPEG" else (w, h)
    if dw * dh > max_pixels:
        raise HTTPException(
            413,
            f"The image is too large: {w}x{h} decodes to {dw * dh / 1e6:.1f} million pixels, "
            f"more than the limit of {max_pixels / 1e6:g} million pixels.",
        )
    return w, h


def _data_url(png: bytes) -> str:
    """PNG bytes as a `data:` URL (the page's Content-Security-Policy allows them as images)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _page() -> tuple[str, str]:
    """The web page and a Content-Security-Policy that allows only its own inline script."""
    html = (
        files("imageblocks_runtime.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    )
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
    )
    csp = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
        "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, csp


def _json(content: Any) -> Response:
    """`content` as a JSON response, serialised once (no FastAPI encoder or response model)."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(body.encode("utf-8"), media_type="application/json")


def _model_info(model: RuntimeModel, cam: bool, limits: dict[str, int]) -> dict[str, Any]:
    """What `/info` tells: the model, its thresholds and the uploads accepted."""
    vocab = [str(v) for v in model.vocab or []]
    thresholds = model.thresholds
    size = model.input_size
    return {
        "task": str(model.task),
        "arch": model.config["model"].get("arch"),
        "vocab": vocab,
        "thresholds": dict(zip(vocab, thresholds)) if thresholds is not None else None,
        "input_size": {"height": int(size[0]), "width": int(size[1])} if size else None,
        **limits,
        "cam": cam,
        "library_version": __version__,
    }


def create_app(
    model: RuntimeModel | str | Path,
    max_upload_mb: float = 10,
    max_concurrency: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_requests: int = 64,
    body_timeout: float = 60.0,
    allowed_hosts: Sequence[str] | None = None,
    cam: CamProvider | None = None,
    int8: bool = False,
    threads: int | None = 1,
) -> FastAPI:
    """A FastAPI app serving `model` (a `RuntimeModel`, or a model folder loaded once, here).

    `max_requests` predictions in progress at most (503 + Retry-After beyond), `max_concurrency`
    of them in the model; `max_pixels` decoded pixels per image (413 from the header beyond);
    `body_timeout` seconds for a whole upload (408); `allowed_hosts`: the `Host` names answered
    (400 "Invalid host header" for others; None: any); `cam`: class activation maps for
    `?cam=1` (classification models); `int8`, `threads`: how a folder is loaded
    (`RuntimeModel.load`).
    """
    if max_upload_mb <= 0 or max_concurrency < 1 or max_pixels < 1 or max_requests < 1:
        raise ValueError(
            "max_upload_mb, max_concurrency, max_pixels and max_requests must be positive"
        )
    if isinstance(model, (str, os.PathLike)):
        model = RuntimeModel.load(model, int8=int8, threads=threads)
    task = str(model.task)
    limit = int(max_upload_mb * MB)
    semaphore = asyncio.Semaphore(max_concurrency)
    in_progress = RequestLimit(max_requests)
    html, csp = _page()
    classifier = task in ("multilabel", "category")
    info = _model_info(
        model,
        cam is not None and classifier,
        {"max_upload_bytes": limit, "max_pixels": max_pixels, "max_requests": max_requests},
    )
    thresholds = info["thresholds"]
    health = {"status": "ok", "task": task, "arch": info["arch"], "classes": len(info["vocab"])}
    pools: list[ThreadPoolExecutor] = []  # the model's threads, started by the first request

    def pool() -> ThreadPoolExecutor:
        if not pools:
            pools.append(ThreadPoolExecutor(max_concurrency, thread_name_prefix="imageblocks"))
        return pools[0]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        while pools:  # the threads end with the server; a restarted app starts new ones
            pools.pop().shutdown(wait=False)

    app = FastAPI(
        title="imageblocks",
        version=__version__,
        description=f"Predictions of a {task} model ({info['arch']}).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.model = model
    app.state.requests = in_progress
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False)
    app.add_middleware(BodyGuard, body_timeout=body_timeout)  # outermost: sees every answer

    def run_model(data: bytes, with_cams: bool = False) -> Response:
        """Check the header, decode and predict (and the CAMs): the answer; in the pool."""
        size = check_header(data, max_pixels, model.draft)
        try:
            record = {"task": task, **model.predict(data)}
        except ItemError as e:
            log.info("undecodable image: %s", e)
            raise HTTPException(
                400, "The image could not be decoded: it is truncated or corrupt."
            ) from None
        if task == "multilabel":
            record.update(thresholds=thresholds, no_known_object=len(record["labels"]) == 0)
        elif task == "points":
            record["image_size"] = list(size)
        if with_cams and cam is not None:
            record["cams"] = {label: _data_url(png) for label, png in cam(data).items()}
        return _json(record)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> HTMLResponse:
        """The web page: pick an image, see what the model finds."""
        headers = {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        }
        return HTMLResponse(html, headers=headers)

    @app.get("/health")
    async def health_check() -> Response:
        """Liveness: the model is loaded (answered on the event loop, never queued)."""
        return _json(health)

    @app.get("/info")
    async def model_info() -> Response:
        """What the model predicts and what uploads it accepts."""
        return _json(info)

    @app.post("/predict", openapi_extra=UPLOAD_SCHEMA)
    async def predict(request: Request) -> Response:
        """Predict one image sent as multipart/form-data field `file`; `?cam=1`: with the class
        activation maps of the predicted labels."""
        with_cams = request.query_params.get("cam", "0").lower() in ("1", "true", "yes")
        if with_cams and not classifier:
            raise HTTPException(
                400, f"Class activation maps need a classification model, not {task}."
            )
        if with_cams and cam is None:
            raise HTTPException(
                400,
                "Class activation maps need PyTorch: start the service with the main package, "
                "`imageblocks serve MODEL --cam`.",
            )
        if not in_progress.enter():
            raise HTTPException(
                503,
                f"The server is busy ({max_requests} predictions in progress): "
                f"retry in {RETRY_AFTER_S} s.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        try:
            async with receive_upload(request, limit) as upload:
                if sniff_format(await upload.read(16)) is None:
                    raise HTTPException(
                        415,
                        "Not a supported image: send a JPEG, PNG, WebP, BMP, GIF or TIFF file.",
                    )
                async with semaphore:
                    await upload.seek(0)
                    data = await upload.read()
                    loop = asyncio.get_running_loop()
                    try:
                        return await loop.run_in_executor(pool(), run_model, data, with_cams)
                    except HTTPException:
                        raise
                    except Exception:
                        log.exception("prediction failed")
                        raise HTTPException(500, "Internal error: the prediction failed.") from None
        finally:
            in_progress.leave()

    return app


def serve(
    model: RuntimeModel | str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 10,
    max_concurrency: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_requests: int = 64,
    body_timeout: float = 60.0,
    header_timeout: float = 10.0,
    allowed_hosts: Sequence[str] = (),
    cam: CamProvider | None = None,
    int8: bool = False,
    threads: int | None = 1,
    **uvicorn_kw: Any,
) -> None:
    """Serve `model` (a `RuntimeModel` or a model folder) over HTTP with uvicorn (blocks until
    stopped).

    `allowed_hosts` adds `Host` names to those of the bound address (`allowed_hosts_for`);
    `header_timeout` closes connections that do not finish a request's headers in time.
    """
    app = create_app(
        model,
        max_upload_mb,
        max_concurrency,
        max_pixels,
        max_requests,
        body_timeout,
        allowed_hosts_for(host, allowed_hosts),
        cam=cam,
        int8=int8,
        threads=threads,
    )
    Server(uvicorn_config(app, host, port, header_timeout, **uvicorn_kw)).run()
