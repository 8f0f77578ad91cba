"""Class activation maps: the heatmap lies on the object, in the image's frame, in [0, 1]."""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, PointBlock
from imageblocks.learn.cam import CAM
from imageblocks.learn.learner import Learner
from imageblocks.learn.loading import load_learner
from imageblocks.models.grad_cam import grad_cam
from imageblocks.serve.app import create_app
from imageblocks.serve.cam import learner_cams
from tests.serve_models import export_multilabel, export_points, write_images
from tests.test_interpret import SIZE, tiny_model, train_colours
from tests.test_serve_socket import BOUNDARY, multipart, running


def bright_detector() -> nn.Sequential:
    """A hand-built model: its body fires on bright pixels; class 0 rises with them, 1 falls."""
    body = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        body[0].weight.fill_(1.0)
        body[0].bias.fill_(-2.0)
        head[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return nn.Sequential(body, head)


def test_grad_cam_peaks_inside_the_bright_square():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 40, 48) * 0.5
    squares = [(4, 20), (25, 3), (30, 38)]  # (top, left) of 8x8 squares
    for i, (top, left) in enumerate(squares):
        x[i, :, top : top + 8, left : left + 8] = 1.0
    maps = grad_cam(bright_detector(), x, torch.zeros(3, dtype=torch.long))
    assert maps.shape == (3, 1, 40, 48) and maps.min() >= 0 and maps.max() <= 1
    for m, (top, left) in zip(maps[:, 0], squares):
        r, c = np.unravel_index(int(m.argmax()), m.shape)
        assert top <= r < top + 8 and left <= c < left + 8
        assert m.max() == pytest.approx(1.0)
        outside = torch.ones_like(m, dtype=torch.bool)
        outside[max(top - 1, 0) : top + 9, max(left - 1, 0) : left + 9] = False
        assert m[outside].max() < 0.05
    # class 1 falls with bright pixels: no position raises it, the map is all zeros
    assert grad_cam(bright_detector(), x, torch.ones(3, dtype=torch.long)).max() == 0


def test_grad_cam_needs_a_body_or_a_layer():
    model = nn.Conv2d(3, 2, 1)
    with pytest.raises(ValueError, match="pass layer="):
        grad_cam(model, torch.rand(1, 3, 8, 8), torch.zeros(1, dtype=torch.long))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ValueError, match="channels, height, width"):
        grad_cam(flat, torch.rand(1, 3, 8, 8), torch.zeros(1, dtype=torch.long))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    learn, df = train_colours(root, single=False)
    learn.freeze()  # a frozen body must not stop the gradient Grad-CAM needs
    return learn, df, root


def test_learner_cam_finds_the_coloured_square(trained):
    learn, df, root = trained
    rows = df[df["labels"].str.split().str.len() == 1].head(6)
    for _, row in rows.iterrows():
        cam = learn.cam(root / row["fname"], row["labels"])
        assert isinstance(cam, CAM) and cam.label == row["labels"]
        assert cam.heatmap.shape == (SIZE, SIZE) and cam.image.shape == (3, SIZE, SIZE)
        assert 0 <= float(cam.heatmap.min()) and float(cam.heatmap.max()) == pytest.approx(1)
        r, c = np.unravel_index(int(cam.heatmap.argmax()), cam.heatmap.shape)
        x, y = row["x"], row["y"]
        assert y - 2 <= r < y + 10 and x - 2 <= c < x + 10, (row["fname"], (r, c), (x, y))


def test_cam_for_the_predicted_labels_and_by_index(trained):
    learn, df, root = trained
    row = df[df["labels"].str.split().str.len() == 2].iloc[0]
    path = root / row["fname"]
    labels, mask, probs = learn.predict(path)
    cams = learn.cam(path)
    assert isinstance(cams, list) and sorted(c.label for c in cams) == sorted(labels)
    assert [c.prob for c in cams] == sorted((c.prob for c in cams), reverse=True)
    k = list(learn.dls.vocab).index(cams[0].label)
    by_index = learn.cam(path, k)
    assert by_index.label == cams[0].label and torch.allclose(by_index.heatmap, cams[0].heatmap)
    assert by_index.prob == pytest.approx(float(probs[k]), abs=1e-4)
    png = Image.open(io.BytesIO(cams[0].png()))
    assert png.size == (SIZE, SIZE) and png.mode == "RGB"
    assert cams[0]._repr_png_() == cams[0].png()
    with pytest.raises(ValueError, match="'purple' is not one of the model's classes"):
        learn.cam(path, "purple")


def test_show_results_lays_the_cams_over_the_images(trained):
    learn, _, _ = trained
    fig = learn.show_results(max_n=4, cam=True)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4 and all(len(ax.images) == 2 for ax in shown)
    heat = shown[0].images[1].get_array()
    assert heat.shape == (SIZE, SIZE) and 0 <= heat.min() and heat.max() <= 1
    plain = learn.show_results(max_n=4)
    assert all(len(ax.images) == 1 for ax in plain.axes if ax.images)


def test_cam_refuses_a_points_model(tmp_path):
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    items = [(tmp_path / "a.png", (10.0, 12.0))] * 10
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock), get_x=lambda o: o[0], get_y=lambda o: [o[1]]
    )
    learn = Learner(dblock.dataloaders(items, bs=2, num_workers=0), tiny_model(2))
    with pytest.raises(ValueError, match="classification model"):
        learn.cam(tmp_path / "a.png")
    with pytest.raises(ValueError, match="classification model"):
        learn.show_results(cam=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("served")
    images = write_images(root / "images")
    return {
        "images": images,
        "ml": export_multilabel(images, root / "ml"),
        "pts": export_points(images, root / "pts"),
    }


def _png(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


def test_the_service_returns_a_cam_per_predicted_label(served):
    data = served["images"][-1].read_bytes()
    learn = load_learner(served["ml"])
    expected = learn.cam(data)
    with TestClient(create_app(served["ml"], cam=learner_cams(served["ml"]))) as client:
        assert client.get("/info").json()["cam"] is True
        plain = client.post("/predict", files={"file": ("a.png", data, "image/png")}).json()
        assert "cams" not in plain
        r = client.post("/predict?cam=1", files={"file": ("a.png", data, "image/png")})
        assert r.status_code == 200
        res = r.json()
        assert list(res["cams"]) == [c.label for c in expected]
        assert set(res["cams"]) == set(res["labels"]) or (
            not res["labels"] and len(res["cams"]) == 1
        )
        for c in expected:
            png = _png(res["cams"][c.label])
            assert png.size == (32, 32)
            assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(c.overlay()))
        page = client.get("/")
        assert 'id="cam"' in page.text and "predict?cam=1" in page.text
        assert "img-src blob: data:" in page.headers["content-security-policy"]


def test_the_service_refuses_cams_for_points(served):
    data = served["images"][0].read_bytes()
    with TestClient(create_app(served["pts"], cam=learner_cams(served["pts"]))) as client:
        assert client.get("/info").json()["cam"] is False
        r = client.post("/predict?cam=1", files={"file": ("a.jpg", data, "image/jpeg")})
        assert r.status_code == 400 and "classification model" in r.json()["detail"]
        ok = client.post("/predict", files={"file": ("a.jpg", data, "image/jpeg")})
        assert ok.status_code == 200 and client.get("/health").status_code == 200


def test_cams_over_a_real_socket(served):
    body = multipart(served["images"][0].read_bytes())
    with running(create_app(served["ml"], cam=learner_cams(served["ml"]))) as port:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict?cam=1",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            res = json.loads(r.read())
    assert res["cams"] and all(_png(u).size == (32, 32) for u in res["cams"].values())
