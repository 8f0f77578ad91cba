"""Batch-norm folded into convolutions for evaluation: the same outputs, the model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imageblocks.models.backbones import create_vision_model
from imageblocks.models.fold_bn import fold_batchnorm, has_hooks


def trained_stats(model: nn.Module) -> nn.Module:
    """`model` with batch-norm running statistics and affine parameters away from their init."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_efficientnet_gives_the_same_outputs_and_leaves_the_model(channels_last):
    model = trained_stats(create_vision_model("efficientnet_lite0", 5, pretrained=False))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=fmt)
    folded, n = fold_batchnorm(model, check=x)
    assert n == 49 and folded is not model  # stem, 16 blocks' convolutions, head
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert model.training and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_model_with_hooks_is_not_folded():
    model = create_vision_model("efficientnet_lite0", 3, pretrained=False)
    handle = model.modules().__next__().register_forward_hook(lambda *a: None)
    assert has_hooks(model)
    assert fold_batchnorm(model) == (model, 0)
    handle.remove()
    assert not has_hooks(model)


class BatchNormFirst(nn.Module):
    """Registers conv then bn, but normalises the input before the convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_a_fold_that_changes_the_outputs_is_dropped_when_checked():
    model = trained_stats(BatchNormFirst()).eval()
    x = torch.randn(2, 3, 8, 8)
    assert fold_batchnorm(model)[1] == 1  # unchecked: registration order taken at its word
    assert fold_batchnorm(model, check=x) == (model, 0)


def test_validation_runs_a_folded_copy_with_the_model_s_outputs(voc):
    from imageblocks.learn.learner import vision_learner
    from imageblocks.learn.predict import eval_model
    from imageblocks.transforms.item import Resize
    from tests.conftest import voc_block

    df, dblock = voc_block(voc, Resize(32))
    dls = dblock.dataloaders(df, bs=4, num_workers=0)
    learn = vision_learner(dls, "resnet18", pretrained=False, precision="fp32")
    trained_stats(learn.model)
    learn.model.eval()
    xs, ys = learn.split_batch(dls.valid.one_batch())
    folded = eval_model(learn, xs[0])
    assert folded is not learn.model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    preds, _ = learn.get_preds()
    with torch.no_grad():
        want = torch.cat([learn.model(learn.split_batch(b)[0][0]).sigmoid() for b in dls.valid])
    assert torch.allclose(preds, want, atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in learn.model.modules())  # untouched
    conv = next(m for m in learn.model.modules() if isinstance(m, nn.Conv2d))
    handle = conv.register_forward_hook(lambda *a: None)  # as Grad-CAM's would
    assert eval_model(learn, xs[0]) is learn.model
    handle.remove()
