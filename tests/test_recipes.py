"""The training workflows called as a library (no shell), and one set of thresholds everywhere:
what the CLI reports, what the service reports and what `predict` decides with."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from imageblocks.cli import app as cli_app
from imageblocks.learn.loading import load_learner
from imageblocks.learn.thresholds import class_thresholds, decision_thresholds
from imageblocks.recipes.csv_data import CsvDataError
from imageblocks.recipes.train import CsvSource, train
from imageblocks.serve.app import create_app
from tests.serve_models import VOCAB, export_multilabel, write_images

LABELS = ["cat dog", "car", "", "dog", "car cat", ""]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """An untrained multi-label export, its images and a labels CSV naming them."""
    root = tmp_path_factory.mktemp("recipes")
    images = write_images(root / "images")[:6]
    pd.DataFrame({"fname": [p.name for p in images], "labels": LABELS}).to_csv(
        root / "labels.csv", index=False
    )
    return {"root": root, "images": images, "model": export_multilabel(images, root / "ml")}


def _variant(exported: dict, name: str, edit) -> object:
    """A copy of the export whose config.json `edit` changes, exported again from it (so its
    model.onnx holds the edited thresholds too)."""
    src, out = exported["model"], exported["root"] / name
    out.mkdir()
    for f in src.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((out / "config.json").read_text())
    edit(config, _probs(exported))
    config.pop("onnx")  # the graph of the unedited model: the export below writes the new one
    (out / "config.json").write_text(json.dumps(config))
    return load_learner(out).export(out)


def _probs(exported: dict) -> list[float]:
    """The untrained model's probabilities for the first image."""
    return load_learner(exported["model"]).predict(exported["images"][0])[2].tolist()


def _untuned(config: dict, probs: list[float]) -> None:
    # one threshold from the loss, midway between the first image's two lowest probabilities
    # (an untrained model's are close together): not 0.5, one class out and two in
    low = sorted(probs)
    thresh = (low[0] + low[1]) / 2
    config["loss"]["thresh"] = thresh
    config["thresholds"] = {"global": thresh, "per_class": None}


def _tuned(config: dict, probs: list[float]) -> None:
    # per class: just under, just over, just under the first image's probability
    per_class = [probs[0] - 1e-3, probs[1] + 1e-3, probs[2] - 1e-3]
    config["thresholds"] = {"global": None, "per_class": per_class}


@pytest.mark.parametrize("edit", [_untuned, _tuned], ids=["untuned", "tuned"])
def test_cli_service_and_predict_agree_on_thresholds(exported, edit):
    model = _variant(exported, edit.__name__, edit)
    learn = load_learner(model)
    expected = class_thresholds(learn)
    assert expected is not None and list(expected) == VOCAB
    assert len(set(expected.values()) - {0.5}) > 0  # a model whose thresholds are not 0.5

    result = CliRunner().invoke(
        cli_app,
        ["evaluate", str(model), "--csv", str(exported["root"] / "labels.csv"), "--images",
         str(exported["root"] / "images")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["thresholds"] == expected

    with TestClient(create_app(model)) as client:
        assert client.get("/info").json()["thresholds"] == expected
        with open(exported["images"][0], "rb") as f:
            answer = client.post("/predict", files={"file": ("0.jpg", f, "image/jpeg")}).json()
    assert answer["thresholds"] == expected

    labels, decided, probs = learn.predict(exported["images"][0])
    by_threshold = [c for c, p in zip(VOCAB, probs.tolist()) if p > expected[c]]
    assert list(labels) == by_threshold == answer["labels"]
    assert decided.tolist() == (probs > decision_thresholds(learn)).tolist()
    assert 0 < len(by_threshold) < len(VOCAB)  # the thresholds decide: some in, some out


def test_train_from_a_csv_as_a_library_call(exported, tmp_path):
    """`train` runs without the shell: data, fit, tuned thresholds, export, metrics, plots."""
    root = exported["root"]
    pd.DataFrame(
        {"fname": [p.name for p in exported["images"]], "labels": LABELS,
         "is_valid": [False, False, False, False, True, True]}
    ).to_csv(tmp_path / "split.csv", index=False)  # fmt: skip
    lines: list[str] = []
    source = CsvSource(root / "images", tmp_path / "split.csv", size=32, bs=2, num_workers=0)
    metrics = train(
        "multilabel", source, tmp_path / "m", epochs=1, freeze_epochs=0, lr=1e-3,
        arch="resnet18", pretrained=False, log=lines.append,
    )  # fmt: skip
    assert lines[0] == "data: 4 training / 2 validation images, 3 classes: car cat dog"
    assert any(line.startswith("thresholds: global") for line in lines)
    assert json.loads((tmp_path / "m" / "metrics.json").read_text()) == metrics
    assert metrics["thresholds"] == class_thresholds(load_learner(tmp_path / "m"))
    assert {"loss.png", "thresholds.png", "results.png"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }


def test_csv_source_needs_one_source_per_task(tmp_path):
    with pytest.raises(CsvDataError, match="one preset is 'biwi'"):
        CsvSource(tmp_path, preset="coco").dataloaders("points")
    with pytest.raises(CsvDataError, match="not both"):
        CsvSource(tmp_path, tmp_path / "p.csv", preset="biwi").dataloaders("points")
    with pytest.raises(CsvDataError, match=r"needs a CSV \(--csv"):
        CsvSource(tmp_path).dataloaders("points")
    with pytest.raises(CsvDataError, match="one of multilabel, points"):
        CsvSource(tmp_path, tmp_path / "p.csv").dataloaders("segmentation")
