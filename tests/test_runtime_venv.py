"""The runtime installs and runs on its own: a fresh virtualenv with only `runtime/[serve]`
(no PyTorch, no imageblocks) predicts and serves a model the main package exported.

The virtualenv is kept under `.pytest_cache/`, keyed by runtime/pyproject.toml's hash (its
dependencies); the runtime itself is reinstalled into it whenever its source changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_models import export_multilabel, write_images

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime"
BIN = "Scripts" if os.name == "nt" else "bin"


def _run(venv: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """A command of the virtualenv, run from its own folder (no checkout on its path)."""
    return subprocess.run(
        list(args), capture_output=True, text=True, env=_env(), cwd=venv, timeout=120, **kwargs
    )


def _env() -> dict[str, str]:
    """The environment of the virtualenv's commands: nothing of this checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        cwd=RUNTIME,  # not the repository root: pip must not see the main package
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _source_hash() -> str:
    """A digest of what the runtime's wheel is built from (not pip's build/ leftovers)."""
    digest = hashlib.sha256()
    files = [RUNTIME / "pyproject.toml", *sorted((RUNTIME / "imageblocks_runtime").rglob("*"))]
    for p in files:
        if p.is_file() and "__pycache__" not in p.parts:
            digest.update(str(p.relative_to(RUNTIME)).encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def venv() -> Path:
    """A virtualenv with `runtime/[serve]` installed (not editable) and nothing else of ours."""
    key = hashlib.sha256((RUNTIME / "pyproject.toml").read_bytes()).hexdigest()[:12]
    root = REPO / ".pytest_cache" / f"runtime-venv-{key}"
    python = root / BIN / "python"
    if not (root / ".ready").exists():
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(root)],
            check=True,
            env=_env(),
            timeout=300,
        )
        _pip(python, f"{RUNTIME}[serve]", "setuptools>=68")  # setuptools: fast reinstalls below
        (root / ".installed").write_text(_source_hash())
        (root / ".ready").write_text("")
    source = _source_hash()
    if (root / ".installed").read_text() != source:
        _pip(python, "--no-deps", "--no-build-isolation", "--force-reinstall", str(RUNTIME))
        (root / ".installed").write_text(source)
    return root


def test_the_virtualenv_has_the_runtime_and_no_pytorch(venv):
    code = (
        "import importlib.util as u, json, imageblocks_runtime as r; "
        "print(json.dumps([r.__file__, *(bool(u.find_spec(m)) for m in "
        "('torch', 'timm', 'torchvision', 'imageblocks', 'onnxruntime', 'fastapi'))]))"
    )
    done = _run(venv, str(venv / BIN / "python"), "-c", code)
    assert done.returncode == 0, done.stderr
    where, *found = json.loads(done.stdout)
    assert str(venv) in where  # the installed copy, not this checkout
    assert found == [False, False, False, False, True, True]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("venv_model")
    images = write_images(root / "images")
    return export_multilabel(images, root / "model"), images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_runtime_alone_predicts_and_serves_an_exported_model(venv, exported, tmp_path):
    from imageblocks_runtime.model import RuntimeModel

    model, images = exported
    command = str(venv / BIN / "imageblocks-runtime")
    expected = RuntimeModel.load(model).predict_many(images[:2])
    done = _run(venv, command, "predict", str(model), *map(str, images[:2]), "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert [g["labels"] for g in got] == [e["labels"] for e in expected]
    for g, e in zip(got, expected):
        assert list(g["probabilities"].values()) == pytest.approx(
            list(e["probabilities"].values()), abs=1e-5
        )
    out = tmp_path / "preds.csv"
    done = _run(venv, command, "predict", str(model), str(images[0].parent), "--csv", str(out))
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 1 + len(images)

    port = _free_port()
    server = subprocess.Popen(
        [command, "serve", str(model), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=venv,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the service did not start in 60 s"
                time.sleep(0.1)
        assert health.status_code == 200
        files = {"file": (images[0].name, images[0].read_bytes(), "image/jpeg")}
        answer = httpx.post(f"{url}/predict", files=files, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["labels"] == expected[0]["labels"]
        assert body["probabilities"] == pytest.approx(expected[0]["probabilities"], abs=1e-5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
