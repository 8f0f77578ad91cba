"""The `imageblocks` command on tiny generated data: every command, its output and its errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from imageblocks.cli import app
from imageblocks.learn.loading import load_learner
from imageblocks.recipes.csv_data import CsvDataError, multilabel_from_csv, points_from_csv

runner = CliRunner()
TINY = ["--arch", "resnet18", "--no-pretrained", "--bs", "8", "--workers", "0"]


def invoke(*args: str):
    """Run the command; fail with its output when it crashes with a traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 small PNGs holding a square, a disk, both or neither; a labels CSV and a points CSV."""
    root = tmp_path_factory.mktemp("cli")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    labels_rows, point_rows = [], []
    for i in range(24):
        img = Image.fromarray(rng.integers(60, 200, (40, 48, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        labels = [name for name in ("square", "disk") if rng.random() < 0.5]
        for name in labels:
            x, y = rng.integers(8, 32, 2)
            shape = draw.rectangle if name == "square" else draw.ellipse
            shape([x - 7, y - 7, x + 7, y + 7], fill=(0, 0, 0))
        img.save(images / f"{i:03d}.png")
        labels_rows.append((f"{i:03d}.png", " ".join(labels), i % 3 == 0))
        cx, cy = rng.uniform(5, 43, 2)
        point_rows.append((f"{i:03d}.png", cx, cy, cx / 2, cy / 2, i % 3 == 0))
    pd.DataFrame(labels_rows, columns=["fname", "labels", "is_valid"]).to_csv(
        root / "labels.csv", index=False
    )
    pd.DataFrame(point_rows, columns=["fname", "x0", "y0", "x1", "y1", "is_valid"]).to_csv(
        root / "points.csv", index=False
    )
    return root


@pytest.fixture(scope="module")
def multilabel_model(data):
    """A multi-label model trained by the command (1 + 1 epochs, 32 px)."""
    torch.manual_seed(0)
    out = data / "ml_model"
    result = invoke(
        "train", "multilabel", "--csv", data / "labels.csv", "--images", data / "images",
        "--out", out, "--size", "32", "--epochs", "1", "--freeze-epochs", "1", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def points_model(data):
    """A two-point model trained by the command from a CSV."""
    out = data / "pts_model"
    result = invoke(
        "train", "points", "--csv", data / "points.csv", "--images", data / "images",
        "--out", out, "--size", "32x40", "--epochs", "1", "--freeze-epochs", "1",
        "--lr", "1e-3", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result


def test_train_multilabel_writes_model_metrics_and_plots(multilabel_model):
    out, result = multilabel_model
    assert "train_loss" in result.stdout and "valid_loss" in result.stdout  # the epoch table
    assert "lr_find: valley" in result.stdout and "thresholds:" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json"} <= names
    assert {"loss.png", "lr_find.png", "thresholds.png", "results.png"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy_multi", "f1_macro", "f1_micro", "mAP", "valid_loss", "at_0.5", "lr"):
        assert key in metrics, key
    assert metrics["task"] == "multilabel" and metrics["vocab"] == ["disk", "square"]
    assert metrics["n_train"] == 16 and metrics["n_valid"] == 8
    assert set(metrics["thresholds"]) == {"disk", "square"}
    assert set(metrics["threshold_tuning"]["per_class"]) == {"disk", "square"}
    assert 0 <= metrics["mAP"] <= 1 and metrics["lr"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["thresholds"]["per_class"] == list(metrics["thresholds"].values())


def test_predict_text_and_json_match_load_learner(multilabel_model, data):
    out, _ = multilabel_model
    images = [data / "images" / "000.png", data / "images" / "001.png"]
    learn = load_learner(out)
    expected = [learn.predict(f) for f in images]

    result = invoke("predict", out, *images, "--json")
    assert result.exit_code == 0, result.output
    preds = json.loads(result.stdout)
    assert [p["image"] for p in preds] == [str(f) for f in images]
    for pred, (labels, _, probs) in zip(preds, expected):
        assert pred["labels"] == list(labels)
        assert list(pred["probabilities"].values()) == pytest.approx(probs.tolist(), abs=1e-4)

    result = invoke("predict", out, *images)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, f, (labels, _, _) in zip(lines, images, expected):
        assert line.startswith(f"{f}: ")
        if len(labels):
            assert all(label in line for label in labels)
        else:
            assert "no known object" in line


def test_predict_thresh_overrides_the_model(multilabel_model, data):
    out, _ = multilabel_model
    f = data / "images" / "000.png"
    low = json.loads(invoke("predict", out, f, "--json", "--thresh", "0.01").stdout)[0]
    high = json.loads(invoke("predict", out, f, "--json", "--thresh", "0.99").stdout)[0]
    assert low["labels"] == ["disk", "square"] and high["labels"] == []
    assert "no known object" in invoke("predict", out, f, "--thresh", "0.99").stdout


def test_evaluate_prints_metrics_as_json(multilabel_model, data):
    out, _ = multilabel_model
    result = invoke("evaluate", out, "--csv", data / "labels.csv", "--images", data / "images")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"task", "loss", "accuracy_multi", "f1_macro", "f1_micro", "mAP", "thresholds"} <= set(
        metrics
    )
    assert metrics["n_images"] == 24 and metrics["task"] == "multilabel"


def test_train_points_from_csv_and_predict_pixels(points_model, data):
    out, result = points_model
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "points" and {"mse", "pixel_error"} <= set(metrics)
    assert metrics["input_size"] == [32, 40]
    assert "results.png" in {p.name for p in out.iterdir()}
    f = data / "images" / "003.png"
    pred = json.loads(invoke("predict", out, f, "--json").stdout)[0]
    expected = load_learner(out).predict(f)[0]
    assert np.asarray(pred["points"]) == pytest.approx(expected.numpy(), abs=0.01)
    assert len(pred["points"]) == 2
    line = invoke("predict", out, f).stdout
    assert line.startswith(f"{f}: (") and line.strip().endswith("px")
    result = invoke("evaluate", out, "--csv", data / "points.csv", "--images", data / "images")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"mse", "pixel_error", "input_pixel_error", "loss"} <= set(metrics)
    # pixel_error is in the original images' pixels: what predict's points are off by
    df = pd.read_csv(data / "points.csv")
    learn = load_learner(out)
    errors = [
        (learn.predict(data / "images" / r.fname)[0] - torch.tensor([[r.x0, r.y0], [r.x1, r.y1]]))
        .norm(dim=-1)
        .mean()
        for r in df.itertuples()
    ]
    assert metrics["pixel_error"] == pytest.approx(float(torch.stack(errors).mean()), abs=1e-2)


def test_train_points_biwi_preset(biwi, tmp_path):
    result = invoke(
        "train", "points", "--preset", "biwi", "--images", biwi, "--out", tmp_path / "m",
        "--size", "24x32", "--epochs", "1", "--freeze-epochs", "0", "--lr", "1e-3", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "26 training / 2 validation images" in result.stdout  # person 13 is validation
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_lr_find_prints_suggestions_and_writes_png(data, tmp_path):
    png = tmp_path / "plots" / "lr.png"
    result = invoke(
        "lr-find", "--csv", data / "labels.csv", "--images", data / "images", "--out", png,
        "--size", "32", "--num-it", "8", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("minimum", "steep", "valley", "slide"):
        assert f"{name}: " in result.stdout
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_export_onnx_command(multilabel_model, data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out, _ = multilabel_model
    result = invoke("export-onnx", out, tmp_path / "onnx")
    assert result.exit_code == 0, result.output
    file = tmp_path / "onnx" / "model.onnx"
    assert file.is_file() and "uint8 (batch, 32, 32, 3)" in result.stdout
    assert "probabilities float32 (batch, " in result.stdout
    learn = load_learner(out)
    dl = learn.dls.test_dl([data / "images" / "005.png"])
    (xb,) = next(iter(dl))[:1]
    with torch.no_grad():
        expected = torch.sigmoid(learn.model.eval()(xb)).numpy()
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"image": dl.dataset[0][0][None]})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert invoke("export-onnx", out).exit_code == 0  # into the model folder itself
    assert json.loads((out / "config.json").read_text())["onnx"]["file"] == "model.onnx"


def test_check_lists_unreadable_images(data, tmp_path):
    result = invoke("check", "--images", data / "images")
    assert result.exit_code == 0 and "checked 24 images: no problems" in result.stdout
    bad = tmp_path / "imgs"
    bad.mkdir()
    (bad / "ok.png").write_bytes((data / "images" / "000.png").read_bytes())
    (bad / "broken.jpg").write_text("not an image")
    (tmp_path / "l.csv").write_text("fname,labels\nok.png,a\nbroken.jpg,b\ngone.png,a\n")
    result = invoke("check", "--images", bad, "--csv", tmp_path / "l.csv")
    assert result.exit_code == 1
    assert "broken.jpg: " in result.stdout and "gone.png: " in result.stdout
    assert "checked 3 images: 2 problems" in result.stdout


def test_check_lists_bad_points_and_unknown_labels_in_one_scan(multilabel_model, data, tmp_path):
    (tmp_path / "p.csv").write_text("fname,x,y\n000.png,10,12\n001.png,nan,3\n002.png,400,5\n")
    result = invoke("check", "--images", data / "images", "--csv", tmp_path / "p.csv")
    assert result.exit_code == 1
    assert "001.png: " in result.stdout and "002.png: " in result.stdout
    assert "000.png" not in result.stdout and "checked 3 images: 2 problems" in result.stdout

    (tmp_path / "l.csv").write_text("fname,labels\n000.png,square\n001.png,unicorn\n")
    model, _ = multilabel_model
    args = ("--images", data / "images", "--csv", tmp_path / "l.csv", "--model", model)
    result = invoke("check", *args)
    assert result.exit_code == 1 and "001.png: " in result.stdout and "unicorn" in result.stdout
    assert "checked 2 images: 1 problem" in result.stdout


def _assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message


def test_errors_are_one_line_with_exit_code_1(multilabel_model, data, tmp_path):
    out, _ = multilabel_model
    images = data / "images"
    _assert_clean_error(
        invoke("predict", tmp_path / "nowhere", images / "000.png"), "model folder not found"
    )
    _assert_clean_error(invoke("predict", out, images / "nope.png"), "image not found", "nope.png")
    (tmp_path / "bad.png").write_text("not an image")
    _assert_clean_error(invoke("predict", out, tmp_path / "bad.png"), "bad.png")
    _assert_clean_error(
        invoke(
            "train",
            "multilabel",
            "--csv",
            data / "labels.csv",
            "--images",
            images,
            "--out",
            tmp_path / "m",
            "--label-col",
            "tags",
            *TINY,
        ),  # fmt: skip
        "'tags'",
        "fname, labels, is_valid",
    )
    _assert_clean_error(
        invoke(
            "train",
            "multilabel",
            "--csv",
            data / "labels.csv",
            "--images",
            tmp_path / "none",
            "--out",
            tmp_path / "m",
            *TINY,
        ),  # fmt: skip
        "images folder not found",
    )
    (tmp_path / "empty.csv").write_text("")
    _assert_clean_error(
        invoke(
            "evaluate",
            out,
            "--csv",
            tmp_path / "empty.csv",
            "--images",
            images,
        ),  # fmt: skip
        "empty",
    )
    _assert_clean_error(
        invoke("evaluate", out, "--csv", data / "points.csv", "--images", images), "'labels'"
    )
    _assert_clean_error(invoke("export-onnx", tmp_path / "nowhere", tmp_path / "o"), "not found")
    _assert_clean_error(invoke("serve", tmp_path / "nowhere"), "not found")
    _assert_clean_error(
        invoke("train", "points", "--images", images, "--out", tmp_path / "p"), "--csv"
    )


@pytest.mark.parametrize(
    "command",
    [[], ["demo"], ["train"], ["train", "multilabel"], ["train", "points"], ["predict"],
     ["evaluate"], ["lr-find"], ["export-onnx"], ["serve"], ["check"]],
)  # fmt: skip
def test_help_everywhere(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout


def test_demo_help_mentions_no_train():
    assert "--no-train" in invoke("demo", "--help").stdout


# --- csv_data -------------------------------------------------------------------------------


def test_multilabel_csv_vocab_split_and_errors(data, tmp_path):
    df = pd.read_csv(data / "labels.csv")
    df.loc[0, "labels"] = "triangle"  # row 0 is validation only: still in the vocab
    df.to_csv(tmp_path / "l.csv", index=False)
    dls = multilabel_from_csv(tmp_path / "l.csv", data / "images", size=16, bs=4, num_workers=0)
    assert list(dls.vocab) == ["disk", "square", "triangle"]
    assert len(dls.valid.dataset) == 8  # the is_valid column
    dls = multilabel_from_csv(
        tmp_path / "l.csv", data / "images", valid_pct=0.5, size=16, bs=4, num_workers=0
    )
    assert len(dls.valid.dataset) == 12
    with pytest.raises(CsvDataError, match="not both"):
        multilabel_from_csv(
            tmp_path / "l.csv", data / "images", split_col="is_valid", valid_pct=0.2
        )
    df.assign(is_valid=False).to_csv(tmp_path / "nv.csv", index=False)
    with pytest.raises(CsvDataError, match="no validation image"):
        multilabel_from_csv(tmp_path / "nv.csv", data / "images")
    df.assign(fname="missing.png").to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(CsvDataError, match=r"24 of the 24 images .* 'missing.png' \(row 2\)"):
        multilabel_from_csv(tmp_path / "m.csv", data / "images")
    (tmp_path / "h.csv").write_text("fname,labels\n")
    with pytest.raises(CsvDataError, match="no rows"):
        multilabel_from_csv(tmp_path / "h.csv", data / "images")


def test_points_csv_columns(data, tmp_path):
    dls = points_from_csv(data / "points.csv", data / "images", size=16, bs=4, num_workers=0)
    _, yb = dls.one_batch()
    assert yb.shape == (4, 2, 2)  # x0,y0,x1,y1: two points
    dls = points_from_csv(
        data / "points.csv", data / "images", point_cols=["x1", "y1"], size=16, bs=4, num_workers=0
    )
    assert dls.one_batch()[1].shape == (4, 1, 2)
    df = pd.read_csv(data / "points.csv")
    df.loc[3, "y0"] = None
    df.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(CsvDataError, match=r"'y0' .* row 5"):
        points_from_csv(tmp_path / "nan.csv", data / "images")


def test_train_commands_share_every_training_flag_and_default():
    from typer.main import get_command

    train = get_command(app).commands["train"]
    shared = {
        "--fname-col": "fname", "--split-col": None, "--valid-pct": None,
        "--arch": "efficientnet_lite0", "--pretrained": True, "--bs": 64, "--epochs": None,
        "--budget": None, "--freeze-epochs": 1, "--lr": None, "--workers": None,
        "--device": None, "--seed": 42, "--resume": False, "--early-stop": None,
        "--save-best": False,
    }  # fmt: skip
    own = {
        "multilabel": {"--csv": None, "--images": None, "--out": None, "--label-col": "labels",
                       "--size": 128, "--tune-thresholds": True},
        "points": {"--images": None, "--out": None, "--csv": None, "--preset": None,
                   "--point-cols": None, "--size": "240x320"},
    }  # fmt: skip
    for name, flags in own.items():
        params = {p.opts[0]: p.default for p in train.commands[name].params}
        assert params == {**flags, **shared}, name
