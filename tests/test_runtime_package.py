"""The PyTorch-free runtime (runtime/imageblocks_runtime): it imports nothing heavy, and
`imageblocks predict` on a self-contained folder runs on it, in batch mode too."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imageblocks.cli import app
from imageblocks.learn.loading import load_learner
from imageblocks_runtime.config import ExportError
from imageblocks_runtime.model import RuntimeModel
from tests.serve_models import export_multilabel, export_points, write_images
from tests.test_architecture import _external_roots

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime" / "imageblocks_runtime"
LIBS = ("torch", "torchvision", "timm", "pandas", "matplotlib")  # what a deployment lacks
HEAVY = (*LIBS, "imageblocks")  # nor may the runtime import the training package
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "runtime")]),
    "OMP_NUM_THREADS": "1",
}


def _runtime_modules() -> list[str]:
    out = []
    for p in sorted(RUNTIME.rglob("*.py")):
        parts = p.relative_to(RUNTIME.parent).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_the_runtime_source_imports_no_training_package():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) >= 10
    bad = {str(f.relative_to(REPO)): _external_roots(f) & set(HEAVY) for f in files}
    assert not {f: b for f, b in bad.items() if b}


# Run a command's `main` in a fresh interpreter, then record which heavy packages it loaded.
_PROBE = """
import json, sys
sys.argv = [{prog!r}, *{args!r}]
try:
    from {module} import main
    main()
    code = 0
except SystemExit as e:
    code = e.code or 0
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
    with open({report!r}, "w") as f:
        json.dump({{"code": code, "loaded": loaded}}, f)
"""


def _run(tmp_path: Path, module: str, *args: object) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "probe.json"
    code = _PROBE.format(
        prog=module, args=[str(a) for a in args], module=module, heavy=LIBS, report=str(report)
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert report.exists(), done.stderr
    return done, json.loads(report.read_text())


def test_importing_every_runtime_module_loads_nothing_heavy():
    modules = _runtime_modules()
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Untrained 32 px multi-label and points models exported by the main package, and images."""
    root = tmp_path_factory.mktemp("runtime")
    images = write_images(root / "images")
    return {
        "images": root / "images",
        "multilabel": export_multilabel(images, root / "ml"),
        "points": export_points(images, root / "pts"),
    }


def _torch_path(model: Path, images: list[Path], *more: str) -> list[dict]:
    """What `imageblocks predict --json` prints through PyTorch (--device cpu forces it)."""
    result = CliRunner().invoke(
        app, ["predict", str(model), *map(str, images), "--json", "--device", "cpu", *more]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("task", ["multilabel", "points"])
def test_predict_on_a_self_contained_folder_imports_no_torch_and_matches_pytorch(
    models, task, tmp_path
):
    images = sorted(models["images"].iterdir())[:3]
    done, probe = _run(tmp_path, "imageblocks.cli", "predict", models[task], *images, "--json")
    assert probe == {"code": 0, "loaded": []}, done.stderr
    got, expected = json.loads(done.stdout), _torch_path(models[task], images)
    assert [p["image"] for p in got] == [str(f) for f in images]
    for g, e in zip(got, expected):
        if task == "points":
            assert np.asarray(g["points"]) == pytest.approx(np.asarray(e["points"]), abs=0.05)
        else:
            assert g["labels"] == e["labels"]
            assert list(g["probabilities"]) == list(e["probabilities"])
            probs = list(e["probabilities"].values())
            assert list(g["probabilities"].values()) == pytest.approx(probs, abs=1e-4)


def test_thresh_and_text_lines_on_the_runtime(models, tmp_path):
    f = sorted(models["images"].iterdir())[0]
    done, probe = _run(tmp_path, "imageblocks.cli", "predict", models["multilabel"], f)
    assert probe["code"] == 0 and not probe["loaded"]
    assert done.stdout.startswith(f"{f}: ")
    low = RuntimeModel.load(models["multilabel"]).predict(f, thresh=0.01)
    assert low["labels"] == ["car", "cat", "dog"]
    assert _torch_path(models["multilabel"], [f], "--thresh", "0.99")[0]["labels"] == []
    done, probe = _run(
        tmp_path, "imageblocks.cli", "predict", models["points"], f, "--thresh", "0.5"
    )
    assert probe["code"] == 1 and "multi-label models only" in done.stderr


def test_the_runtime_command_prints_what_imageblocks_predict_prints(models, tmp_path):
    images = sorted(models["images"].iterdir())[:2]
    main, _ = _run(tmp_path, "imageblocks.cli", "predict", models["multilabel"], *images)
    own, probe = _run(tmp_path, "imageblocks_runtime.cli", "predict", models["multilabel"], *images)
    assert probe == {"code": 0, "loaded": []} and own.stdout == main.stdout != ""


def _bad_folder(tmp_path: Path, images: Path) -> Path:
    """A folder of images with a corrupt JPEG, a linked file, a linked folder, and a text file."""
    folder = tmp_path / "batch"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(sorted(images.iterdir())):
        (folder / ("sub" if i % 2 else ".") / f.name).write_bytes(f.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "linked.jpg").symlink_to(images / "0.jpg")
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (50, 30), "red").save(tmp_path / "elsewhere" / "red.png")
    (folder / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    return folder


@pytest.mark.parametrize("workers", ["0", "2"])
def test_batch_prediction_to_csv_lists_unreadable_files(models, tmp_path, workers):
    folder = _bad_folder(tmp_path, models["images"])
    out = tmp_path / "out" / "preds.csv"
    args = ["predict", models["multilabel"], folder, "--csv", out, "--bs", "2"]
    done, probe = _run(tmp_path, "imageblocks.cli", *args, "--workers", workers)
    assert probe == {"code": 0, "loaded": []}, done.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [Path(r["file"]).relative_to(folder).as_posix() for r in rows]
    expected = ["0.jpg", "2.jpg", "4.jpg", "blob.png", "broken.jpg", "linked.jpg", "more/red.png"]
    assert names == sorted([*expected, "sub/1.jpg", "sub/3.jpg", "sub/5.jpg"])
    assert list(rows[0]) == ["file", "labels", "car", "cat", "dog", "error"]
    bad = [r for r in rows if r["error"]]
    assert [Path(r["file"]).name for r in bad] == ["broken.jpg"]
    assert bad[0]["labels"] == bad[0]["car"] == "" and "broken.jpg" in bad[0]["error"]
    assert "broken.jpg" in done.stderr and "9 of 10 images predicted" in done.stderr
    runtime = RuntimeModel.load(models["multilabel"])
    for row in rows[:3]:
        if not row["error"]:
            record = runtime.predict(row["file"])
            assert row["labels"] == " ".join(record["labels"])
            got = [float(row[c]) for c in runtime.vocab]
            assert got == pytest.approx(list(record["probabilities"].values()), abs=1e-5)
    assert not [p for p in out.parent.iterdir() if p.name != "preds.csv"]  # no temp file left


def test_batch_prediction_of_points_writes_pixels_and_fails_when_nothing_reads(models, tmp_path):
    out = tmp_path / "pts.csv"
    files = sorted(models["images"].iterdir())[:2]
    done, probe = _run(
        tmp_path, "imageblocks.cli", "predict", models["points"], *files, "--csv", out
    )
    assert probe["code"] == 0, done.stderr
    rows = list(csv.DictReader(open(out, newline="")))
    assert list(rows[0]) == ["file", "x0", "y0", "error"]
    point = RuntimeModel.load(models["points"]).predict(files[0])["points"][0]
    assert [float(rows[0]["x0"]), float(rows[0]["y0"])] == pytest.approx(point, abs=1e-3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nothing")
    done, probe = _run(
        tmp_path, "imageblocks.cli", "predict", models["points"], tmp_path / "bad", "--csv", out
    )
    assert probe["code"] == 1 and "0 of 1 images predicted" in done.stderr


def test_an_old_folder_predicts_through_pytorch_with_a_note(models, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((models["multilabel"] / "config.json").read_text())
    config.pop("onnx")
    config["files"] = {"model.safetensors": config["files"]["model.safetensors"]}
    (old / "config.json").write_text(json.dumps(config))
    (old / "model.safetensors").write_bytes(
        (models["multilabel"] / "model.safetensors").read_bytes()
    )
    f = sorted(models["images"].iterdir())[0]
    result = CliRunner().invoke(app, ["predict", str(old), str(f), "--json"])
    assert result.exit_code == 0, result.output
    assert "runs through PyTorch" in result.stderr and "export-onnx" in result.stderr
    assert (
        json.loads(result.stdout)[0]["labels"]
        == _torch_path(models["multilabel"], [f])[0]["labels"]
    )
    assert load_learner(old).config["task"] == "multilabel"
    with pytest.raises(ExportError, match="export-onnx"):
        RuntimeModel.load(old)
    batch = CliRunner().invoke(app, ["predict", str(old), str(f), "--csv", str(tmp_path / "x")])
    assert batch.exit_code == 1 and "export-onnx" in batch.stderr


def test_runtime_model_refuses_a_graph_that_is_not_the_one_config_json_describes(models, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in models["multilabel"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    model = RuntimeModel.load(folder)
    assert model.task.value == "multilabel" and model.input_size == (32, 32)
    assert model.draft == (32, 32) and model.vocab == ["car", "cat", "dog"]
    arr, size = model.prepare(sorted(models["images"].iterdir())[0])
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8 and size == (48, 40)
    outputs = model.run(arr[None])
    assert outputs["probabilities"].shape == (1, 3) and outputs["decisions"].dtype == bool
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match="different exports"):
        RuntimeModel.load(folder)
    with pytest.raises(ExportError, match="no int8 model"):
        RuntimeModel.load(models["multilabel"], int8=True)


def test_predict_int8_runs_the_quantised_graph_without_torch(models, tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    for f in models["multilabel"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    args = ["export-onnx", str(folder), "--int8", "--images", str(models["images"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    images = sorted(models["images"].iterdir())[:3]
    done, probe = _run(tmp_path, "imageblocks.cli", "predict", folder, *images, "--json", "--int8")
    assert probe == {"code": 0, "loaded": []}, done.stderr
    quantised, full = json.loads(done.stdout), RuntimeModel.load(folder).predict_many(images)
    assert RuntimeModel.load(folder, int8=True).file.name == "model.int8.onnx"
    for q, f in zip(quantised, full):
        assert list(q["probabilities"]) == list(f["probabilities"])
        assert list(q["probabilities"].values()) == pytest.approx(
            list(f["probabilities"].values()), abs=0.1
        )
