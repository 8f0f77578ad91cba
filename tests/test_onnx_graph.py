"""The self-contained model.onnx: the runtime (no PyTorch) gives learn.predict's answers.

Parity on the validation set of small trained learners (decisions equal, probabilities within
1e-4, points within 0.05 px of the original image), the graph's outputs and dtypes per task,
and the int8 copy (written, loadable, smaller, mostly the same decisions).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imageblocks.cli import app
from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import (
    CategoryBlock,
    ImageBlock,
    MultiCategoryBlock,
    PointBlock,
    RegressionBlock,
)
from imageblocks.data.splitters import ColSplitter
from imageblocks.learn import export as export_module
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.model_config import ExportError, validate_config
from imageblocks.learn.onnx_export import export_onnx
from imageblocks.learn.predict import prediction_record
from imageblocks.paths import Path
from imageblocks.transforms.batch import aug_transforms
from imageblocks.transforms.item import Resize
from imageblocks.transforms.normalize import Normalize, imagenet_stats
from imageblocks_runtime.model import RuntimeModel
from imageblocks_runtime.onnx_spec import output_spec
from tests.conftest import CLASSES, blob_image

ort = pytest.importorskip("onnxruntime")

_NP_DTYPES = {"float32": np.float32, "bool": np.bool_, "int64": np.int64}


def _labelled_images(root: Path, n: int = 32) -> pd.DataFrame:
    """`n` images of varied sizes, a bright square whose colour (and place) sets the labels."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        w, h = ((120, 90), (90, 120), (100, 100))[i % 3]
        arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        labels = [c for k, c in enumerate(CLASSES) if (i >> k) & 1]
        for k, c in enumerate(CLASSES):
            if c in labels:
                arr[10 + 15 * k : 25 + 15 * k, 10:40, k % 3] = 255
        x, y = rng.uniform(20, w - 20), rng.uniform(20, h - 20)
        arr[int(y) - 5 : int(y) + 5, int(x) - 5 : int(x) + 5] = 250
        Image.fromarray(arr).save(root / "images" / f"{i:03d}.jpg", quality=90)
        rows.append((f"{i:03d}.jpg", " ".join(labels), x, y, i % 3 == 0))
    df = pd.DataFrame(rows, columns=["fname", "labels", "x", "y", "is_valid"])
    df.to_csv(root / "labels.csv", index=False)
    return df


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = Path(tmp_path_factory.mktemp("graph_data"))
    return root, _labelled_images(root)


def _block(root: Path, blocks: tuple, get_y, **tfms) -> DataBlock:
    return DataBlock(
        blocks=blocks,
        splitter=ColSplitter(),
        get_x=lambda r: root / "images" / r["fname"],
        get_y=get_y,
        **tfms,
    )


def _labels(r) -> list[str]:
    return r["labels"].split(" ") if r["labels"] else []


@pytest.fixture(scope="module")
def multilabel(dataset, tmp_path_factory):
    """A trained multi-label learner with tuned per-class thresholds, and its export folder."""
    root, df = dataset
    torch.manual_seed(0)
    dblock = _block(
        root,
        (ImageBlock, MultiCategoryBlock),
        _labels,
        item_tfms=Resize(40),
        batch_tfms=[*aug_transforms(size=32), Normalize.from_stats(*imagenet_stats)],
    )
    df = df.assign(labels=df["labels"].fillna(""))
    learn = vision_learner(
        dblock.dataloaders(df, bs=8, num_workers=0), "resnet18", pretrained=False
    )
    learn.fit_one_cycle(2, 3e-3)
    learn.thresholds = torch.tensor([0.3, 0.45, 0.5, 0.6])  # distinct, as tuning leaves them
    folder = learn.export(Path(tmp_path_factory.mktemp("ml")) / "model")
    return learn, folder, [root / "images" / f for f in df[df.is_valid].fname]


@pytest.fixture(scope="module")
def points(dataset, tmp_path_factory):
    """A trained points learner: a padded item resize, then a batch resize to another shape."""
    root, df = dataset
    torch.manual_seed(0)
    dblock = _block(
        root,
        (ImageBlock, PointBlock),
        lambda r: torch.tensor([[r["x"], r["y"]]], dtype=torch.float32),
        item_tfms=Resize(48, method="pad", pad_mode="zeros"),
        batch_tfms=[*aug_transforms(size=(40, 56)), Normalize.from_stats(*imagenet_stats)],
    )
    dls = dblock.dataloaders(df, bs=8, num_workers=0)
    learn = vision_learner(dls, "resnet18", pretrained=False, y_range=(-1, 1))
    learn.fit_one_cycle(2, 3e-3)
    folder = learn.export(Path(tmp_path_factory.mktemp("pts")) / "model")
    return learn, folder, [root / "images" / f for f in df[df.is_valid].fname]


def test_multilabel_runtime_equals_predict_on_the_validation_set(multilabel):
    learn, folder, files = multilabel
    model = RuntimeModel.load(folder)
    assert model.thresholds == pytest.approx([0.3, 0.45, 0.5, 0.6])
    one_by_one = [model.predict(f) for f in files]
    batched = model.predict_many(files, bs=5)
    n_positive = 0
    for f, got, many in zip(files, one_by_one, batched):
        expected = prediction_record(learn, learn.predict(f))
        assert got["labels"] == expected["labels"] == many["labels"], f.name
        assert list(got["probabilities"]) == list(expected["probabilities"])
        for c, p in expected["probabilities"].items():
            assert got["probabilities"][c] == pytest.approx(p, abs=1e-4)
            assert many["probabilities"][c] == pytest.approx(p, abs=1e-4)
        n_positive += len(got["labels"])
    assert 0 < n_positive < len(files) * len(CLASSES)  # the thresholds decide both ways
    # the decisions are the graph's own (per-class thresholds baked in), not recomputed
    x = np.stack([model.prepare(f)[0] for f in files])
    out = model.run(x)
    np.testing.assert_array_equal(out["decisions"], out["probabilities"] > model.thresholds)


def test_points_runtime_equals_predict_on_the_validation_set(points):
    learn, folder, files = points
    model = RuntimeModel.load(folder)
    assert model.input_size == (48, 48)
    worst = 0.0
    for f, many in zip(files, model.predict_many(files, bs=4)):
        expected = np.asarray(prediction_record(learn, learn.predict(f))["points"])
        got = np.asarray(model.predict(f)["points"])
        assert got.shape == expected.shape == (1, 2)
        worst = max(worst, float(np.abs(got - expected).max()))
        np.testing.assert_allclose(many["points"], expected, atol=0.05, rtol=0)
    assert worst < 0.05, worst


def test_the_loaded_learner_and_the_runtime_agree(points):
    """A folder re-read by load_learner predicts what the runtime does (one export, one answer)."""
    _, folder, files = points
    loaded, model = load_learner(folder), RuntimeModel.load(folder)
    for f in files[:3]:
        expected = prediction_record(loaded, loaded.predict(f))["points"]
        np.testing.assert_allclose(model.predict(f)["points"], expected, atol=0.05, rtol=0)


def _tiny(root: Path, df: pd.DataFrame, task: str):
    blocks, get_y, extra = {
        "multilabel": (MultiCategoryBlock, _labels, {}),
        "category": (CategoryBlock, lambda r: CLASSES[int(r["fname"][:3]) % 3], {}),
        "points": (PointBlock, lambda r: torch.tensor([[r["x"], r["y"]], [1.0, 2.0]]), {}),
        "regression": (RegressionBlock, lambda r: torch.tensor([r["x"], r["y"], 1.0]), {}),
    }[task]
    # points: no item resize, so the graph takes any size and resizes itself
    tfms = (
        {"batch_tfms": aug_transforms(size=32)} if task == "points" else {"item_tfms": Resize(32)}
    )
    dblock = _block(root, (ImageBlock, blocks), get_y, **tfms)
    dls = dblock.dataloaders(df.assign(labels=df["labels"].fillna("")), bs=8, num_workers=0)
    return vision_learner(dls, "resnet18", pretrained=False, **extra)


@pytest.mark.parametrize("task", ["multilabel", "category", "points", "regression"])
def test_the_graph_outputs_are_named_and_typed_per_task(dataset, tmp_path, task):
    root, df = dataset
    learn = _tiny(root, df, task)
    folder = learn.export(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    section = config["onnx"]
    n_out = config["model"]["n_out"]
    assert section["outputs"] == output_spec(task, n_out)
    assert set(config["files"]) == {"model.onnx", "model.safetensors"}
    size = ["height", "width"] if task == "points" else [32, 32]
    assert section["input"] == {
        "name": "image", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", *size, 3],
    }  # fmt: skip
    assert (section["thresholds"] is not None) == (task == "multilabel")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert [o.name for o in session.get_outputs()] == list(section["outputs"])
    hw = (44, 52) if task == "points" else (32, 32)
    x = np.random.default_rng(0).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    for out, (name, spec) in zip(session.run(None, {"image": x}), section["outputs"].items()):
        assert out.dtype == _NP_DTYPES[spec["dtype"]], name
        assert out.shape == tuple(3 if d == "batch" else d for d in spec["shape"]), name
    if task == "category":
        probs, decisions = session.run(None, {"image": x})
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
        np.testing.assert_array_equal(decisions, probs.argmax(1))


def test_int8_is_written_smaller_loadable_and_mostly_agrees(multilabel, tmp_path):
    learn, _, files = multilabel
    folder = tmp_path / "q"
    export_onnx(learn, folder, int8=True, check=False)
    config = validate_config(json.loads((folder / "config.json").read_text()))
    q = config["onnx"]["int8"]
    assert q == {"file": "model.int8.onnx", "calibration_images": len(files)}
    assert {"model.onnx", "model.int8.onnx"} <= set(config["files"])
    size, float_size = ((folder / n).stat().st_size for n in ("model.int8.onnx", "model.onnx"))
    assert size < 0.4 * float_size
    full, small = RuntimeModel.load(folder), RuntimeModel.load(folder, int8=True)
    assert small.file.name == "model.int8.onnx"
    x = np.stack([full.prepare(f)[0] for f in files])
    a, b = full.run(x), small.run(x)
    assert b["decisions"].dtype == np.bool_ and b["decisions"].shape == a["decisions"].shape
    assert (a["decisions"] == b["decisions"]).mean() >= 0.8
    assert np.abs(a["probabilities"] - b["probabilities"]).mean() < 0.05
    # a new export drops the int8 copy of the old weights
    learn.export(folder)
    assert not (folder / "model.int8.onnx").exists()


def test_export_onnx_command_writes_the_graph_and_int8_into_the_model(
    multilabel, dataset, tmp_path
):
    learn, _, files = multilabel
    root, _ = dataset
    folder = learn.export(tmp_path / "m")
    (folder / "model.onnx").unlink()  # as an export from before model.onnx was written
    args = ["export-onnx", str(folder), "--int8", "--images", str(root / "images")]
    result = CliRunner().invoke(app, [*args, "--csv", str(root / "labels.csv")])
    assert result.exit_code == 0, result.output
    assert "uint8 (batch, 40, 40, 3)" in result.stdout and "int8:" in result.stdout
    config = json.loads((folder / "config.json").read_text())
    assert config["onnx"]["int8"]["calibration_images"] == len(files)  # the validation rows
    assert RuntimeModel.load(folder, int8=True).predict(files[0])["labels"] is not None
    result = CliRunner().invoke(app, ["export-onnx", str(folder), "--int8"])
    assert result.exit_code == 1 and "--images" in result.output


def test_an_untraceable_model_exports_without_onnx_with_a_warning(
    multilabel, tmp_path, monkeypatch
):
    learn, _, files = multilabel

    def fail(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::fancy\nmore detail")

    monkeypatch.setattr(export_module, "graph_bytes", fail)
    with pytest.warns(UserWarning, match="model.onnx not written .*aten::fancy"):
        folder = learn.export(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert "onnx" not in config and set(config["files"]) == {"model.safetensors"}
    assert not (folder / "model.onnx").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_learner(folder)
    assert loaded.predict(files[0])[1].shape == (len(CLASSES),)


def test_blob_points_stay_within_a_twentieth_of_a_pixel_at_full_size(tmp_path):
    """A 640 x 480 image (JPEG draft decoding) with a batch resize only: pixels of the original."""
    for i in range(6):
        blob_image(640, 480, 100 + 80 * i, 120 + 40 * i, r=20).save(tmp_path / f"{i}.jpg")
    df = pd.DataFrame({"fname": [f"{i}.jpg" for i in range(6)], "is_valid": [0, 1] * 3})
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        splitter=ColSplitter(),
        get_x=lambda r: tmp_path / r["fname"],
        get_y=lambda r: torch.tensor([[320.0, 240.0]]),
        batch_tfms=aug_transforms(size=(48, 64)),
    )
    dls = dblock.dataloaders(df, bs=4, num_workers=0)
    learn = vision_learner(dls, "resnet18", pretrained=False, y_range=(-1, 1))
    model = RuntimeModel.load(learn.export(tmp_path / "m"))
    assert model.input_size is None and model.config["onnx"]["input"]["shape"][1] == "height"
    for f in [tmp_path / f"{i}.jpg" for i in range(6)]:
        expected = prediction_record(learn, learn.predict(f))["points"]
        np.testing.assert_allclose(model.predict(f)["points"], expected, atol=0.05, rtol=0)


def test_export_leaves_the_learner_as_it_was(dataset, tmp_path):
    """The graph is traced from the learner's own modules: their modes and weights stay."""
    root, df = dataset
    learn = _tiny(root, df, "multilabel")
    learn.model.train()
    learn.model[0].eval()  # a frozen body's modes, say
    modes = [m.training for m in learn.model.modules()]
    state = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.export(tmp_path / "m")
    assert [m.training for m in learn.model.modules()] == modes
    assert all(torch.equal(state[k], v) for k, v in learn.model.state_dict().items())


def test_thresholds_edited_by_hand_are_refused_not_ignored_by_the_graph(multilabel, tmp_path):
    learn, _, _ = multilabel
    folder = learn.export(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["thresholds"]["per_class"][0] = 0.9  # the graph still decides with 0.3
    (folder / "config.json").write_text(json.dumps(config))
    for load in (load_learner, RuntimeModel.load):
        with pytest.raises(ExportError, match="onnx.thresholds .*re-export"):
            load(folder)


def test_a_tf_padded_backbone_exports_constant_padding_and_the_same_answers(dataset, tmp_path):
    root, df = dataset
    dblock = _block(root, (ImageBlock, MultiCategoryBlock), _labels, item_tfms=Resize(48))
    dls = dblock.dataloaders(df.assign(labels=df["labels"].fillna("")), bs=8, num_workers=0)
    learn = vision_learner(dls, "efficientnet_lite0", pretrained=False)
    folder = learn.export(tmp_path / "model")
    onnx = pytest.importorskip("onnx")
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert "Pad" in ops and not {"Shape", "Ceil"} & ops  # constant "same" padding at 48 px
    runtime = RuntimeModel.load(folder)
    files = [root / "images" / f for f in df[df.is_valid].fname]
    got = runtime.run(np.stack([runtime.prepare(f)[0] for f in files]))["probabilities"]
    learn.fast_predict = False  # PyTorch's own convolutions, padded per input, in float32
    learn.to_fp32()
    want = np.stack([learn.predict(f)[2].numpy() for f in files])
    np.testing.assert_allclose(got, want, atol=1e-4)
