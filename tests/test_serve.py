"""The HTTP service: the API's answers match `learn.predict`, and bad uploads get clear 4xx codes."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import imageblocks_runtime.serve.app as runtime_app
from imageblocks.cli import app as cli_app
from imageblocks.learn.loading import load_learner
from imageblocks.serve.app import MULTIPART_OVERHEAD, create_app, sniff_format
from imageblocks_runtime.model import RuntimeModel
from tests.serve_models import (
    VOCAB,
    export_multilabel,
    export_points,
    png_declaring,
    with_thresholds,
    write_images,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Images and exported models shared by this module's tests (built once)."""
    root = tmp_path_factory.mktemp("serve")
    images = write_images(root / "images")
    ml = export_multilabel(images, root / "ml")
    return {
        "images": images,
        "ml": ml,
        "pts": export_points(images, root / "pts"),
        "some": with_thresholds(ml, root / "some", [0.0, 1.0, 0.0]),
        "none": with_thresholds(ml, root / "none", [1.0, 1.0, 1.0]),
    }


@pytest.fixture(scope="module")
def client(models) -> TestClient:
    with TestClient(create_app(models["ml"])) as c:
        yield c


def post(client: TestClient, data: bytes, name: str = "x.jpg", field: str = "file"):
    return client.post("/predict", files={field: (name, data, "image/jpeg")})


def assert_healthy(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_health_info_and_page(client):
    assert client.get("/health").json() == {
        "status": "ok",
        "task": "multilabel",
        "arch": "resnet18",
        "classes": 3,
    }
    info = client.get("/info").json()
    assert info["task"] == "multilabel" and info["vocab"] == VOCAB
    assert info["thresholds"] == {v: 0.5 for v in VOCAB}
    assert info["input_size"] == {"height": 32, "width": 32}
    assert info["max_upload_bytes"] == 10 * 1024 * 1024
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    assert 'id="file"' in page.text and "No known object" in page.text
    for path in (
        "/docs",
        "/redoc",
        "/static/index.html",
        "/static/",
        "/serve/app.py",
        "/%2e%2e/config.json",
        "/config.json",
    ):
        assert client.get(path).status_code == 404, path


def test_multilabel_predict_equals_learner_predict(client, models):
    learn = load_learner(models["ml"])
    for path in (models["images"][0], models["images"][-1]):
        r = post(client, path.read_bytes(), path.name)
        assert r.status_code == 200, r.text
        res = r.json()
        labels, _, probs = learn.predict(path)
        assert res["task"] == "multilabel" and res["labels"] == list(labels)
        assert set(res["labels"]) <= set(VOCAB) and list(res["probabilities"]) == VOCAB
        assert all(0 <= p <= 1 for p in res["probabilities"].values())
        assert torch.allclose(torch.tensor(list(res["probabilities"].values())), probs, atol=1e-6)
        assert res["no_known_object"] == (res["labels"] == [])


@pytest.mark.parametrize(
    "model, labels", [("some", ["car", "dog"]), ("none", [])], ids=["some", "none"]
)
def test_thresholds_decide_labels_and_no_known_object(models, model, labels):
    with TestClient(create_app(models[model])) as c:
        res = post(c, models["images"][1].read_bytes()).json()
    assert res["labels"] == labels and res["no_known_object"] == (labels == [])
    assert res["thresholds"] == dict(zip(VOCAB, [0.0, 1.0, 0.0] if labels else [1.0] * 3))


def test_points_predict_equals_learner_predict(models, tmp_path):
    png = models["images"][-1]
    rotated = tmp_path / "rotated.jpg"  # EXIF orientation 6: shown 48 wide, 64 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(png).save(rotated, quality=95, exif=exif)
    learn = load_learner(models["pts"])
    with TestClient(create_app(models["pts"])) as c:
        assert c.get("/health").json()["task"] == "points"
        for path, size in ((png, [64, 48]), (rotated, [48, 64])):
            res = post(c, path.read_bytes(), path.name).json()
            assert res["task"] == "points" and res["image_size"] == size
            ((x, y),) = res["points"]
            assert 0 <= x <= size[0] and 0 <= y <= size[1]
            expected = learn.predict(path)[0]
            assert torch.allclose(torch.tensor(res["points"]), expected, atol=1e-4)


def test_oversize_uploads_get_413_without_reading_the_body(models):
    limit = 10_000
    with TestClient(create_app(models["ml"], max_upload_mb=limit / 2**20)) as c:
        # Declared too large: refused from Content-Length alone.
        r = post(c, b"\xff\xd8\xff" + bytes(limit + MULTIPART_OVERHEAD))
        assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]
        # The file alone is one byte over the limit, the body fits the multipart allowance.
        r = post(c, b"\xff\xd8\xff" + bytes(limit - 2))
        assert r.status_code == 413
        assert_healthy(c)
        # No Content-Length and an endless body: counted while streaming, stopped at the limit.
        status, chunks_read = asyncio.run(endless_upload(c.app))
        assert status == 413 and chunks_read <= (limit + MULTIPART_OVERHEAD) // 4096 + 2


async def endless_upload(app) -> tuple[int, int]:
    """Send `app` a multipart body that never ends; (response status, 4 KiB chunks it read)."""
    read, sent = 0, []

    async def receive() -> dict:
        nonlocal read
        read += 1
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        return {
            "type": "http.request",
            "body": head if read == 1 else bytes(4096),
            "more_body": True,
        }

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", b"multipart/form-data; boundary=b"), (b"host", b"t")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent[0]["status"], read


def test_bad_uploads_get_clear_4xx_and_the_service_keeps_answering(client, models):
    jpeg = models["images"][0].read_bytes()
    cases = [
        (post(client, b"just some text\n", "notes.jpg"), 415, "Not a supported image"),
        (post(client, b"%PDF-1.7\n" + bytes(100), "/etc/secret/doc.jpg"), 415, "JPEG, PNG"),
        (post(client, jpeg[: len(jpeg) // 2]), 400, "truncated or corrupt"),
        (post(client, jpeg[:40]), 400, "corrupt"),
        (post(client, b""), 400, "empty"),
        (post(client, jpeg, field="image"), 400, "field named 'file'"),
        (client.post("/predict", data={"file": "not a file"}), 415, "multipart/form-data"),
        (client.post("/predict", json={"file": "x"}), 415, "multipart/form-data"),
        (
            client.post(
                "/predict",
                content=b"garbage without boundaries",
                headers={"content-type": "multipart/form-data"},
            ),
            400,
            "Malformed multipart",
        ),
        (
            client.post(
                "/predict",
                files=[("file", ("a.jpg", jpeg, "image/jpeg")), ("file", ("b.jpg", jpeg, "i/j"))],
            ),
            400,
            "Malformed multipart",
        ),
    ]
    for r, status, message in cases:
        assert r.status_code == status, (status, r.text)
        detail = r.json()["detail"]
        assert message in detail, detail
        assert "secret" not in r.text and "Traceback" not in r.text
    assert_healthy(client)


def test_decompression_bombs_are_refused_from_the_header(client):
    for w, h in ((30000, 30000), (9000, 9000)):  # above Pillow's own limit, and only above ours
        t0 = time.perf_counter()
        r = post(client, png_declaring(w, h), "bomb.png")
        assert r.status_code == 413 and "million pixels" in r.json()["detail"]
        assert time.perf_counter() - t0 < 5
    assert_healthy(client)


def test_accepted_formats_are_sniffed_from_the_bytes(client, models):
    img = Image.open(models["images"][0])
    for fmt in ("PNG", "WEBP", "BMP", "GIF", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        assert sniff_format(buf.getvalue()) == fmt
        r = post(client, buf.getvalue(), "image.jpg")  # the name does not matter
        assert r.status_code == 200, (fmt, r.text)
    assert sniff_format(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None


def test_internal_errors_are_generic_and_logged(models, caplog):
    app = create_app(models["ml"])

    def broken(item):
        raise RuntimeError("boom in /home/secret/model.py")

    app.state.model.predict = broken
    with TestClient(app) as c, caplog.at_level(logging.ERROR, logger="imageblocks.serve"):
        r = post(c, models["images"][0].read_bytes())
        assert r.status_code == 500 and "secret" not in r.text and "boom" not in r.text
        assert_healthy(c)
    assert "boom in /home/secret/model.py" in caplog.text


def test_model_calls_are_bounded_by_max_concurrency(models):
    app = create_app(models["ml"], max_concurrency=2)
    predict, lock, active = app.state.model.predict, threading.Lock(), [0, 0]

    def slow(item):
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        time.sleep(0.15)
        with lock:
            active[0] -= 1
        return predict(item)

    app.state.model.predict = slow
    data = models["images"][0].read_bytes()

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(
                *(c.post("/predict", files={"file": ("a.jpg", data)}) for _ in range(6))
            )
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 6
    assert active[1] == 2


def test_the_pixel_budget_counts_what_is_really_decoded(models):
    gradient = np.tile(np.linspace(0, 255, 2000, dtype=np.uint8), (1500, 1))
    img = Image.fromarray(np.dstack([gradient] * 3))
    jpeg, png = io.BytesIO(), io.BytesIO()
    img.save(jpeg, "JPEG")
    img.save(png, "PNG")
    with TestClient(create_app(models["ml"], max_pixels=1_000_000)) as c:
        assert c.get("/info").json()["max_pixels"] == 1_000_000
        # 3 MP JPEG decoded at 1/8 scale for the 32 px model: 250x188 pixels.
        assert post(c, jpeg.getvalue()).status_code == 200
        r = post(c, png.getvalue(), "big.png")  # a PNG decodes at full size
        assert r.status_code == 413 and "2000x1500 decodes to 3.0 million pixels" in r.text
        assert "limit of 1 million pixels" in r.json()["detail"]


def test_the_serve_command_passes_the_limits_on(models, monkeypatch):
    calls = []
    monkeypatch.setattr(runtime_app, "serve", lambda *a, **kw: calls.append((a, kw)))
    args = ["serve", str(models["ml"]), "--host", "0.0.0.0", "--allowed-host", "api.example"]
    args += ["--allowed-host", "box.lan", "--max-pixels", "5000000", "--max-requests", "8"]
    args += ["--body-timeout", "20", "--header-timeout", "3", "--max-upload-mb", "2"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    ((positional, kw),) = calls
    assert isinstance(positional[0], RuntimeModel) and positional[0].folder == models["ml"]
    assert positional[1:] == ("0.0.0.0", 8000)
    assert kw == {
        "cam": None,
        "allowed_hosts": ["api.example", "box.lan"],
        "max_upload_mb": 2.0,
        "max_pixels": 5_000_000,
        "max_requests": 8,
        "body_timeout": 20.0,
        "header_timeout": 3.0,
    }
