"""The FastAPI app: load an export folder once, answer `/predict` with bounded, checked uploads.

Every upload is checked before the model sees it, cheapest check first: the size (Content-Length,
then counted while streaming, never reading past the limit), the magic bytes (an image type we
accept), the header's declared dimensions (decompression bombs), and only then a full decode.
Clients get a status code and a short message; details and tracebacks go to the log only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import re
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from imageblocks import __version__
from imageblocks.errors import ItemError
from imageblocks.learn.export import load_learner

log = logging.getLogger("imageblocks.serve")

MB = 1024 * 1024
MULTIPART_OVERHEAD = 16 * 1024  # room for boundaries and part headers around the file
EXIF_ORIENTATION, SWAPS_AXES = 0x0112, {5, 6, 7, 8}  # orientations rotated by 90 or 270 degrees
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
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


class _TooLarge(Exception):
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


async def read_upload(request: Request, limit: int) -> bytes:
    """The bytes of the multipart field `file`, at most `limit` of them (413, 415 or 400 if not)."""
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
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "No file in the request: send it in a field named 'file'.")
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        raise too_large
    if not data:
        raise HTTPException(400, "The uploaded file is empty.")
    return data


def check_header(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) declared by the image header, read without decoding pixels (400 or 413).

    The size is the one `decode_image` reports, which `Learner.predict` maps points into: JPEG
    EXIF rotations by 90 degrees swap it. (Pillow's `getexif` decodes a whole PNG: not called.)
    """
    too_large = HTTPException(
        413, f"The image is too large: more than {max_pixels / 1e6:g} million pixels."
    )
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise too_large
            if img.format == "JPEG" and img.getexif().get(EXIF_ORIENTATION, 1) in SWAPS_AXES:
                w, h = h, w
    except Image.DecompressionBombError:
        raise too_large from None  # Pillow's own, higher, limit
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        log.info("unreadable image header: %s", e)
        raise HTTPException(400, "The image header is unreadable: the file is corrupt.") from None
    return w, h


def _input_size(config: dict) -> dict[str, int] | None:
    """The (height, width) the model sees: the last size among item then batch transforms."""
    sizes = [t["size"] for t in config["item_tfms"] + config["batch_tfms"] if t.get("size")]
    return {"height": int(sizes[-1][0]), "width": int(sizes[-1][1])} if sizes else None


def _thresholds(learn: Any, vocab: list[str]) -> dict[str, float] | None:
    """Each class's decision threshold (tuned per class, or the loss's single one)."""
    if learn.thresholds is not None:
        values = torch.as_tensor(learn.thresholds).flatten().tolist()
    elif getattr(learn.loss_func, "thresh", None) is not None:
        values = [float(learn.loss_func.thresh)] * len(vocab)
    else:
        return None
    return dict(zip(vocab, map(float, values)))


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
    max_pixels: int = 50_000_000,
) -> FastAPI:
    """A FastAPI app serving the model exported in `model_dir` (loaded once, here)."""
    if max_upload_mb <= 0 or max_concurrency < 1 or max_pixels < 1:
        raise ValueError("max_upload_mb, max_concurrency and max_pixels must be positive")
    learn = load_learner(model_dir)
    config = learn.config
    task = config["task"]
    vocab = [str(v) for v in config.get("vocab") or []]
    thresholds = _thresholds(learn, vocab) if task == "multilabel" else None
    limit = int(max_upload_mb * MB)
    semaphore = asyncio.Semaphore(max_concurrency)
    html, csp = _page()
    info = {
        "task": task,
        "arch": config["model"].get("arch"),
        "vocab": vocab,
        "thresholds": thresholds,
        "input_size": _input_size(config),
        "max_upload_bytes": limit,
        "max_pixels": max_pixels,
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

    def run_model(data: bytes) -> dict[str, Any]:
        """Check the header, decode and predict; runs in a worker thread."""
        size = check_header(data, max_pixels)
        try:
            out = learn.predict(data)
        except ItemError as e:
            log.info("undecodable image: %s", e)
            raise HTTPException(
                400, "The image could not be decoded: it is truncated or corrupt."
            ) from None
        if task == "multilabel":
            labels, _, probs = out
            probabilities = dict(zip(vocab, probs.tolist()))
            return {
                "task": task,
                "labels": [str(label) for label in labels],
                "probabilities": probabilities,
                "thresholds": thresholds,
                "no_known_object": len(labels) == 0,
            }
        if task == "points":
            return {"task": task, "points": out[0].tolist(), "image_size": list(size)}
        if task == "category":
            return {
                "task": task,
                "label": str(out[0]),
                "probabilities": dict(zip(vocab, out[2].tolist())),
            }
        return {"task": task, "values": out[2].flatten().tolist()}

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
    def health() -> dict[str, Any]:
        """Liveness: the model is loaded."""
        return {"status": "ok", "task": task, "arch": info["arch"], "classes": len(vocab)}

    @app.get("/info")
    def model_info() -> dict[str, Any]:
        """What the model predicts and what uploads it accepts."""
        return info

    @app.post("/predict", openapi_extra=UPLOAD_SCHEMA)
    async def predict(request: Request) -> dict[str, Any]:
        """Predict one image sent as multipart/form-data field `file`."""
        data = await read_upload(request, limit)
        if sniff_format(data) is None:
            raise HTTPException(
                415, "Not a supported image: send a JPEG, PNG, WebP, BMP, GIF or TIFF file."
            )
        async with semaphore:
            try:
                return await run_in_threadpool(run_model, data)
            except HTTPException:
                raise
            except Exception:
                log.exception("prediction failed")
                raise HTTPException(500, "Internal error: the prediction failed.") from None

    return app


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 10,
    max_concurrency: int = 4,
    max_pixels: int = 50_000_000,
    **uvicorn_kw: Any,
) -> None:
    """Serve the model in `model_dir` over HTTP with uvicorn (blocks until stopped)."""
    import uvicorn

    app = create_app(model_dir, max_upload_mb, max_concurrency, max_pixels)
    # Connections beyond this get 503: bounds the memory held by uploads waiting for the model.
    uvicorn_kw.setdefault("limit_concurrency", 8 * max_concurrency + 8)
    uvicorn.run(app, host=host, port=port, **uvicorn_kw)
