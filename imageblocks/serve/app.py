"""The FastAPI app: load an export folder once, answer `/predict` with bounded, checked uploads.

Every upload is checked before the model sees it, cheapest check first: the size (Content-Length,
then counted while streaming, never reading past the limit), the magic bytes (an image type we
accept), the header's dimensions against the pixel budget (counted at the size that will really
be decoded: a JPEG at its reduced DCT scale), and only then a full decode.
Clients get a status code and a short message; details and tracebacks go to the log only.

Load is bounded by requests, not connections: at most `max_requests` predictions in progress
(receiving, waiting or running; 503 with `Retry-After` beyond), `max_concurrency` of them in the
model at once; a waiting upload stays spooled (1 MB in memory, the rest in a temporary file).
`/health`, `/info` and the page are never limited. Bodies have a deadline (`body_timeout`, 408)
and early answers are readable (`guard.BodyGuard`); `serve` adds the header deadline and the
allowed `Host` names (`server`).

`POST /predict?cam=1` (classification models) adds `cams`: for each predicted label, its class
activation map over the image the model saw, as a PNG data URL; one more forward and backward
pass, inside the same request and model slots.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from uvicorn import Server

from imageblocks import __version__
from imageblocks.errors import ImageblocksError, ItemError
from imageblocks.image import ImageTooLarge, _scaled_size, probe_image
from imageblocks.learn.loading import load_learner
from imageblocks.learn.predict import prediction_record
from imageblocks.learn.thresholds import class_thresholds
from imageblocks.serve.guard import BodyGuard, BodyTimeout
from imageblocks.serve.limits import RequestLimit
from imageblocks.serve.server import allowed_hosts_for, uvicorn_config

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


def _input_size(config: dict) -> dict[str, int] | None:
    """The (height, width) the model sees: the last size among item then batch transforms."""
    sizes = [t["size"] for t in config["item_tfms"] + config["batch_tfms"] if t.get("size")]
    return {"height": int(sizes[-1][0]), "width": int(sizes[-1][1])} if sizes else None


def _data_url(png: bytes) -> str:
    """PNG bytes as a `data:` URL (the page's Content-Security-Policy allows them as images)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _page() -> tuple[str, str]:
    """The web page and a Content-Security-Policy that allows only its own inline script."""
    html = files("imageblocks.serve").joinpath("static/index.html").read_text(encoding="utf-8")
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


def create_app(
    model_dir: str | Path,
    max_upload_mb: float = 10,
    max_concurrency: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_requests: int = 64,
    body_timeout: float = 60.0,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """A FastAPI app serving the model exported in `model_dir` (loaded once, here).

    `max_requests` predictions in progress at most (503 + Retry-After beyond), `max_concurrency`
    of them in the model; `max_pixels` decoded pixels per image (413 from the header beyond);
    `body_timeout` seconds for a whole upload (408); `allowed_hosts`: the `Host` names answered
    (400 "Invalid host header" for others; None: any).
    """
    if max_upload_mb <= 0 or max_concurrency < 1 or max_pixels < 1 or max_requests < 1:
        raise ValueError(
            "max_upload_mb, max_concurrency, max_pixels and max_requests must be positive"
        )
    learn = load_learner(model_dir)
    config = learn.config
    task = config["task"]
    vocab = [str(v) for v in config.get("vocab") or []]
    thresholds = class_thresholds(learn) if task == "multilabel" else None
    limit = int(max_upload_mb * MB)
    draft = learn.dls.valid.dataset.draft  # the size JPEGs decode down to, as predict does
    semaphore = asyncio.Semaphore(max_concurrency)
    in_progress = RequestLimit(max_requests)
    html, csp = _page()
    info = {
        "task": task,
        "arch": config["model"].get("arch"),
        "vocab": vocab,
        "thresholds": thresholds,
        "input_size": _input_size(config),
        "max_upload_bytes": limit,
        "max_pixels": max_pixels,
        "max_requests": max_requests,
        "cam": task in ("multilabel", "category"),
        "library_version": __version__,
    }
    app = FastAPI(
        title="imageblocks",
        version=__version__,
        description=f"Predictions of a {task} model ({info['arch']}).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.learner = learn
    app.state.requests = in_progress
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False)
    app.add_middleware(BodyGuard, body_timeout=body_timeout)  # outermost: sees every answer

    def run_model(data: bytes, cam: bool = False) -> dict[str, Any]:
        """Check the header, decode and predict (and the CAMs); runs in a worker thread."""
        size = check_header(data, max_pixels, draft)
        try:
            out = learn.predict(data)
        except ItemError as e:
            log.info("undecodable image: %s", e)
            raise HTTPException(
                400, "The image could not be decoded: it is truncated or corrupt."
            ) from None
        record = {"task": task, **prediction_record(learn, out)}
        if task == "multilabel":
            record.update(thresholds=thresholds, no_known_object=len(record["labels"]) == 0)
        elif task == "points":
            record["image_size"] = list(size)
        if cam:
            record["cams"] = {c.label: _data_url(c.png()) for c in learn.cam(data)}
        return record

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
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded (answered on the event loop, never queued)."""
        return {"status": "ok", "task": task, "arch": info["arch"], "classes": len(vocab)}

    @app.get("/info")
    async def model_info() -> dict[str, Any]:
        """What the model predicts and what uploads it accepts."""
        return info

    @app.post("/predict", openapi_extra=UPLOAD_SCHEMA)
    async def predict(request: Request) -> dict[str, Any]:
        """Predict one image sent as multipart/form-data field `file`; `?cam=1`: with the class
        activation maps of the predicted labels."""
        cam = request.query_params.get("cam", "0").lower() in ("1", "true", "yes")
        if cam and not info["cam"]:
            raise HTTPException(
                400, f"Class activation maps need a classification model, not {task}."
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
                    try:
                        return await run_in_threadpool(run_model, data, cam)
                    except HTTPException:
                        raise
                    except Exception:
                        log.exception("prediction failed")
                        raise HTTPException(500, "Internal error: the prediction failed.") from None
        finally:
            in_progress.leave()

    return app


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 10,
    max_concurrency: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_requests: int = 64,
    body_timeout: float = 60.0,
    header_timeout: float = 10.0,
    allowed_hosts: Sequence[str] = (),
    **uvicorn_kw: Any,
) -> None:
    """Serve the model in `model_dir` over HTTP with uvicorn (blocks until stopped).

    `allowed_hosts` adds `Host` names to those of the bound address (`allowed_hosts_for`);
    `header_timeout` closes connections that do not finish a request's headers in time.
    """
    app = create_app(
        model_dir,
        max_upload_mb,
        max_concurrency,
        max_pixels,
        max_requests,
        body_timeout,
        allowed_hosts_for(host, allowed_hosts),
    )
    Server(uvicorn_config(app, host, port, header_timeout, **uvicorn_kw)).run()
