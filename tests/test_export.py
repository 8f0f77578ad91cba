"""Export with no pickle: round trip, lambdas in the DataBlock, and clear errors on bad folders."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, MultiCategoryBlock, PointBlock
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.model_config import ExportError
from imageblocks.transforms.batch import aug_transforms
from imageblocks.transforms.item import Resize
from tests.test_architecture import GRAPH


def _reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


@pytest.mark.parametrize("module", ["export", "onnx_export", "model_config", "model_folder"])
def test_writing_and_checking_an_export_needs_no_learner(module):
    """Only `learn.loading` builds a Learner; the export modules reach it by no import at all."""
    assert "imageblocks.learn.learner" not in _reachable(f"imageblocks.learn.{module}")
    assert "imageblocks.learn.loading" not in _reachable(f"imageblocks.learn.{module}")


@pytest.fixture
def multilabel_learner(voc):
    df = pd.read_csv(voc / "train.csv")
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        get_x=lambda r: voc / "train" / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
        item_tfms=Resize(32),
    )
    dls = dblock.dataloaders(df, bs=8, num_workers=0)
    return vision_learner(dls, "resnet18", pretrained=False), voc


def test_round_trip_with_lambdas_gives_the_same_predictions(multilabel_learner, tmp_path):
    learn, voc = multilabel_learner
    folder = learn.export(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.onnx", "model.safetensors",
    ]  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == "multilabel" and config["vocab"] == list(learn.dls.vocab)
    assert config["item_tfms"][0]["name"] == "Resize" and config["model"]["arch"] == "resnet18"
    loaded = load_learner(folder)
    files = sorted((voc / "train").iterdir())[:5]
    for f in files:
        a, b = learn.predict(f), loaded.predict(f)
        assert list(a[0]) == list(b[0]) and torch.allclose(a[2], b[2], atol=1e-6)
    pa, _ = learn.get_preds(dl=learn.dls.test_dl(files))
    pb, _ = loaded.get_preds(dl=loaded.dls.test_dl(files))
    assert torch.allclose(pa, pb, atol=1e-6)


def test_points_export_keeps_resize_and_normalisation(biwi, tmp_path):
    from imageblocks.data.sources import get_image_files

    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_items=get_image_files,
        get_y=lambda f: torch.tensor([320.0, 240.0]),
        batch_tfms=aug_transforms(size=(48, 64)),
    )
    learn = vision_learner(
        dblock.dataloaders(biwi, bs=4, num_workers=0), "resnet18", pretrained=False, y_range=(-1, 1)
    )
    loaded = load_learner(learn.export(tmp_path / "pts"))
    assert [c["name"] for c in loaded.config["batch_tfms"]] == ["Resize"]
    f = get_image_files(biwi)[0]
    pa, pb = learn.predict(f)[0], loaded.predict(f)[0]
    assert pa.shape == (1, 2) and torch.allclose(pa, pb, atol=1e-4)


def test_bad_export_folders_get_clear_errors(multilabel_learner, tmp_path):
    learn, _ = multilabel_learner
    folder = learn.export(tmp_path / "model")
    with pytest.raises(ExportError, match="not found"):
        load_learner(tmp_path / "nowhere")
    config = json.loads((folder / "config.json").read_text())

    (folder / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        load_learner(folder)
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ExportError, match="newer than this imageblocks"):
        load_learner(folder)
    (folder / "config.json").write_text(
        json.dumps({**config, "item_tfms": [{"name": "os.system"}]})
    )
    with pytest.raises(ExportError, match="unknown item transform"):
        load_learner(folder)
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(str(folder / "model.safetensors"))
    state["1.8.weight"] = torch.zeros(3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ExportError, match="do not match"):
        load_learner(folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ExportError, match="not a readable safetensors"):
        load_learner(folder)
