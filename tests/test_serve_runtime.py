"""The service on the runtime: `imageblocks serve` and `imageblocks-runtime serve` on a
self-contained folder import neither torch nor timm (a real process on a real socket), and the
class activation maps come only from the main package (`--cam`)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import imageblocks_runtime.serve.app as runtime_app
from imageblocks.cli import app as cli_app
from imageblocks.serve.cam import learner_cams
from imageblocks_runtime.serve.app import create_app
from tests.serve_models import export_multilabel, write_images
from tests.test_serve_socket import BOUNDARY, multipart

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision")
COMMANDS = {
    "imageblocks": ["-m", "imageblocks", "serve"],
    "imageblocks-runtime": ["-m", "imageblocks_runtime.cli", "serve"],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Test images and an exported multi-label model (built once)."""
    root = tmp_path_factory.mktemp("serve_runtime")
    images = write_images(root / "images")
    return {"images": images, "ml": export_multilabel(images, root / "ml")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    """GET (or POST a multipart `body` to) `url`: (status, JSON answer)."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"} if body else {}
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def imported(importtime_log: str) -> set[str]:
    """The top-level packages named by a `python -X importtime` log."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)", importtime_log, flags=re.M)
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_serve_imports_no_torch_on_a_self_contained_folder(models, command):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'runtime'}"}
    server = subprocess.Popen(
        [sys.executable, "-X", "importtime", *COMMANDS[command], str(models["ml"])]
        + ["--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if request(url + "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert server.poll() is None, server.communicate()[1][-3000:]
        status, res = request(url + "/predict", multipart(models["images"][0].read_bytes()))
        assert status == 200 and res["task"] == "multilabel" and "probabilities" in res
        status, info = request(url + "/info")
        assert status == 200 and info["cam"] is False
        status, res = request(url + "/predict?cam=1", multipart(models["images"][0].read_bytes()))
        assert status == 400 and "--cam" in res["detail"]
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode in (0, 130), err[-3000:]  # 130: uvicorn re-raises the SIGINT
    assert f"serving {models['ml']} on http://127.0.0.1:{port}" in out
    modules = imported(err)
    assert {"imageblocks_runtime", "onnxruntime", "uvicorn", "fastapi"} <= modules
    assert not modules & set(HEAVY), modules & set(HEAVY)


def test_cams_only_with_a_provider(models):
    data = models["images"][-1].read_bytes()
    files = {"file": ("a.png", data, "image/png")}
    with TestClient(create_app(models["ml"])) as client:
        assert client.get("/info").json()["cam"] is False
        r = client.post("/predict?cam=1", files=files)
        assert r.status_code == 400 and "imageblocks serve MODEL --cam" in r.json()["detail"]
        assert client.post("/predict", files=files).status_code == 200
    with TestClient(create_app(models["ml"], cam=learner_cams(models["ml"]))) as client:
        assert client.get("/info").json()["cam"] is True
        res = client.post("/predict?cam=1", files=files).json()
        assert res["cams"] and all(
            u.startswith("data:image/png;base64,") for u in res["cams"].values()
        )


def test_the_serve_command_passes_a_cam_provider_with_cam(models, monkeypatch):
    calls = []
    monkeypatch.setattr(runtime_app, "serve", lambda *a, **kw: calls.append(kw))
    for args, with_cam in (([], False), (["--cam"], True)):
        result = CliRunner().invoke(cli_app, ["serve", str(models["ml"]), *args])
        assert result.exit_code == 0, result.output
        assert callable(calls[-1]["cam"]) if with_cam else calls[-1]["cam"] is None


def test_serve_on_a_folder_without_the_graph_says_how_to_export(models, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((models["ml"] / "config.json").read_text())
    config.pop("onnx")
    config["files"] = {k: v for k, v in config["files"].items() if k != "model.onnx"}
    (old / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli_app, ["serve", str(old)])
    assert result.exit_code == 1
    assert "export-onnx" in result.output and "Traceback" not in result.output


def test_runtime_serve_errors_are_one_line(models, tmp_path, capsys):
    from imageblocks_runtime.cli import main

    for args, message in (
        ([str(tmp_path / "missing")], "model folder not found"),
        ([str(models["ml"]), "--threads", "0"], "--threads must be at least 1"),
        ([str(tmp_path)], "config.json"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["serve", *args])
        err = capsys.readouterr().err
        assert stop.value.code == 1 and err.startswith("error: ") and message in err, err
        assert "Traceback" not in err
