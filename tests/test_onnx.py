"""ONNX export: onnxruntime gives PyTorch's outputs; config.json tells a consumer how to feed it.

The graph is self-contained (uint8 item-transformed images in, activated outputs out); the
runtime's parity with learn.predict is tests/test_onnx_graph.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, MultiCategoryBlock, PointBlock
from imageblocks.data.sources import get_image_files
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.model_config import ExportError
from imageblocks.learn.onnx_export import export_onnx, input_size
from imageblocks.learn.predict import activation
from imageblocks.transforms.batch import aug_transforms
from imageblocks.transforms.item import Resize
from imageblocks.transforms.normalize import Normalize

ort = pytest.importorskip("onnxruntime")


def _session(file):
    return ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])


def _check_same_outputs(learn, file, images) -> None:
    """onnxruntime on the uint8 item-transformed images == PyTorch's activated outputs on the
    loader's batches (1e-4), for batches of 1 and 3."""
    session = _session(file)
    learn.model.eval()
    for n in (1, 3):
        dl = learn.dls.test_dl(images[:n], bs=n)
        (xb,) = next(iter(dl))[:1]
        assert xb.shape[0] == n
        with torch.no_grad():
            expected = activation(learn.loss_func)(learn.model(xb)).float().cpu().numpy()
        images_u8 = np.stack([dl.dataset[i][0] for i in range(n)])
        got = session.run(None, {"image": images_u8})[0]
        assert got.shape[0] == n
        np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-4, rtol=0)


@pytest.fixture
def multilabel(voc):
    df = pd.read_csv(voc / "train.csv")
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        get_x=lambda r: voc / "train" / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
        item_tfms=Resize((40, 56)),
        batch_tfms=Normalize.from_stats([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]),
    )
    dls = dblock.dataloaders(df, bs=8, num_workers=0)
    return vision_learner(dls, "resnet18", pretrained=False), sorted((voc / "train").iterdir())


def test_multilabel_onnx_matches_pytorch(multilabel, tmp_path):
    torch.manual_seed(0)
    learn, images = multilabel
    file = export_onnx(learn, tmp_path / "onnx")
    assert file == tmp_path / "onnx" / "model.onnx" and file.is_file()
    _check_same_outputs(learn, file, images)

    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    spec = config["onnx"]
    assert config["task"] == "multilabel" and config["vocab"] == list(learn.dls.vocab)
    assert spec["file"] == "model.onnx" and spec["opset"] == 17
    assert spec["input"] == {
        "name": "image", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", 40, 56, 3],
    }  # fmt: skip
    n = len(learn.dls.vocab)
    assert spec["outputs"] == {
        "probabilities": {"dtype": "float32", "shape": ["batch", n]},
        "decisions": {"dtype": "bool", "shape": ["batch", n]},
    }
    assert spec["thresholds"] == [0.5] * n
    session = _session(file)
    assert session.get_inputs()[0].shape == ["batch", 40, 56, 3]


def test_efficientnet_lite0_exports_with_tf_padding(voc, tmp_path):
    df = pd.read_csv(voc / "train.csv")
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        get_x=lambda r: voc / "train" / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
        item_tfms=Resize(48, method="squish"),
    )
    learn = vision_learner(
        dblock.dataloaders(df, bs=8, num_workers=0), "efficientnet_lite0", pretrained=False
    )
    file = export_onnx(learn, tmp_path / "lite0.onnx", opset=17)
    assert file.name == "lite0.onnx" and (tmp_path / "config.json").is_file()
    _check_same_outputs(learn, file, sorted((voc / "train").iterdir()))


def test_points_onnx_reads_size_from_the_batch_resize(biwi, tmp_path):
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_items=get_image_files,
        get_y=lambda f: torch.tensor([320.0, 240.0]),
        batch_tfms=aug_transforms(size=(48, 64)),
    )
    dls = dblock.dataloaders(biwi, bs=4, num_workers=0)
    learn = vision_learner(dls, "resnet18", pretrained=False, y_range=(-1, 1))
    assert input_size(learn) == (48, 64)
    # into the learner's own export folder: both formats side by side, still loadable
    folder = learn.export(tmp_path / "model")
    file = export_onnx(learn, folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.onnx",
        "model.safetensors",
    ]
    _check_same_outputs(learn, file, get_image_files(biwi))
    spec = json.loads((folder / "config.json").read_text())["onnx"]
    # no item resize: the graph takes the decoded image as it is and resizes it itself
    assert spec["input"]["shape"] == ["batch", "height", "width", 3]
    assert spec["outputs"] == {"points": {"dtype": "float32", "shape": ["batch", 1, 2]}}
    loaded = load_learner(folder)
    f = get_image_files(biwi)[0]
    assert torch.allclose(loaded.predict(f)[0], learn.predict(f)[0], atol=1e-4)


def test_export_from_a_loaded_model_and_clear_errors(multilabel, tmp_path):
    learn, images = multilabel
    loaded = load_learner(learn.export(tmp_path / "model"))
    file = export_onnx(loaded, tmp_path / "again")
    _check_same_outputs(learn, file, images)

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "config.json").write_text(json.dumps({"task": "points"}))
    with pytest.raises(ExportError, match="another model"):
        export_onnx(learn, tmp_path / "busy")


def test_no_fixed_size_exports_a_graph_of_any_size(voc, tmp_path):
    df = pd.read_csv(voc / "train.csv")
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        get_x=lambda r: voc / "train" / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
    )
    learn = vision_learner(dblock.dataloaders(df, num_workers=0), "resnet18", pretrained=False)
    assert input_size(learn) is None
    file = export_onnx(learn, tmp_path / "sized", size=(32, 48))  # traced at 32 x 48
    spec = json.loads((file.parent / "config.json").read_text())["onnx"]
    assert spec["input"]["shape"] == ["batch", "height", "width", 3]
    session = _session(file)
    learn.model.eval()
    for h, w in ((32, 48), (40, 40)):
        x = np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        xb = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            expected = torch.sigmoid(learn.model(xb)).numpy()
        got = session.run(["probabilities"], {"image": x})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
