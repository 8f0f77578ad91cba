"""predict() through ONNX Runtime: the same answers as PyTorch, always from the current weights."""

from __future__ import annotations

import builtins

import torch

from imageblocks.image import PILImage
from imageblocks.learn.learner import vision_learner
from imageblocks.seeding import set_seed
from imageblocks.transforms.item import Resize
from tests.conftest import voc_block


def _learner(voc):
    set_seed(0)
    df, dblock = voc_block(voc, Resize(64))
    return vision_learner(dblock.dataloaders(df, bs=4, num_workers=0), "efficientnet_lite0")


def _torch_predict(learn, img):
    learn.fast_predict = False
    try:
        return learn.predict(img)
    finally:
        learn.fast_predict = True


def test_onnx_predict_equals_pytorch_and_follows_training(voc):
    learn = _learner(voc)
    img = voc / "train" / "000001.jpg"
    fast = learn.predict(img)
    assert learn.onnx_runner.session is not None and learn.onnx_runner.unavailable is None
    slow = _torch_predict(learn, img)
    # PyTorch computes the body in bfloat16 on CPUs that have it: agree to its precision
    assert torch.allclose(fast[2], slow[2], atol=2e-2)

    learn.fit(1, 1e-2)  # the weights change: the next predict must use the new ones
    session = learn.onnx_runner.session
    after = learn.predict(img)
    assert learn.onnx_runner.session is not session
    assert not torch.allclose(after[2], fast[2], atol=1e-4)
    learn.precision = "fp32"
    assert torch.allclose(after[2], _torch_predict(learn, img)[2], atol=1e-4)


def test_predict_falls_back_to_pytorch_without_onnxruntime(voc, monkeypatch):
    learn = _learner(voc)
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    labels, mask, probs = learn.predict(voc / "train" / "000002.jpg")
    assert learn.onnx_runner.unavailable == "onnxruntime is not installed"
    assert probs.shape == (len(learn.dls.vocab),) and mask.dtype == torch.bool


def test_predict_batch_gives_predict_for_each_image(voc):
    learn = _learner(voc)
    learn.precision = "fp32"
    learn.fast_predict = False  # both through PyTorch in fp32: the same numbers
    imgs = [voc / "train" / f for f in ("000001.jpg", "000002.jpg", "000003.jpg")]
    imgs.append(PILImage.create(imgs[0]))
    batch = learn.predict_batch(imgs, bs=3)
    assert len(batch) == 4
    for img, (labels, mask, probs) in zip(imgs, batch):
        one = learn.predict(img)
        assert torch.allclose(probs, one[2], atol=1e-4)
        assert list(labels) == list(one[0]) and torch.equal(mask, one[1])
    assert learn.predict_batch([]) == []
