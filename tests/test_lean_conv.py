"""LeanConv2d: PyTorch's convolution, keeping no input while its weight is frozen."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from imageblocks.models.backbones import create_vision_model
from imageblocks.models.freezing import norm_param_ids
from imageblocks.models.lean_conv import LeanConv2d, use_lean_conv
from tests.saved_tensors import saved_bytes


@pytest.mark.parametrize("channels_last, weight_too", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize(
    "c_in, c_out, k, stride, padding, dilation, groups, bias",
    [
        (4, 6, 3, 1, 1, 1, 1, False),
        (6, 6, 5, 2, 2, 1, 6, False),  # strided depthwise, as in EfficientNet
        (4, 8, 1, 1, 0, 1, 1, True),
        (4, 4, 3, 2, 2, 2, 2, False),
    ],
)
def test_a_frozen_convolution_gives_pytorchs_input_gradient_and_keeps_no_input(
    channels_last, weight_too, c_in, c_out, k, stride, padding, dilation, groups, bias
):
    torch.manual_seed(0)
    ref = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias).requires_grad_(False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if weight_too:  # as the Learner converts the model
        ref = ref.to(memory_format=fmt)
    lean = use_lean_conv(nn.Sequential(copy.deepcopy(ref)))
    assert type(lean[0]) is LeanConv2d
    x = torch.randn(2, c_in, 13, 16).to(memory_format=fmt)
    x_ref, x_lean = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_lean = ref(x_ref), lean(x_lean)
    torch.testing.assert_close(out_lean, out_ref, rtol=0, atol=0)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_lean.backward(grad)
    torch.testing.assert_close(x_lean.grad, x_ref.grad, rtol=0, atol=0)
    assert x_lean.grad.is_contiguous(memory_format=fmt)
    _, kept = saved_bytes(lean, x.clone().requires_grad_())
    _, kept_ref = saved_bytes(ref, x.clone().requires_grad_())
    assert kept == 0 and kept_ref >= x.numel() * 4


def test_a_trained_weight_keeps_its_gradient_and_its_input():
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 5, 3, padding=1)
    lean = use_lean_conv(nn.Sequential(copy.deepcopy(ref)))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    ref(x).square().sum().backward()
    lean(x).square().sum().backward()
    torch.testing.assert_close(lean[0].weight.grad, ref.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(lean[0].bias.grad, ref.bias.grad, rtol=0, atol=0)
    assert saved_bytes(lean, x)[1] >= x.numel() * 4


def test_a_frozen_body_trains_its_batch_norm_as_before_and_keeps_less():
    """The frozen phase of fine_tune: the body's convolutions frozen, its batch-norm training."""
    torch.manual_seed(0)
    model = create_vision_model("efficientnet_lite0", 2, pretrained=False, y_range=(-1, 1))
    ref = copy.deepcopy(model)
    for m in ref.modules():  # the body as nn.Conv2d had it
        if type(m) is LeanConv2d:
            m.__class__ = nn.Conv2d
    assert any(type(m) is LeanConv2d for m in model.modules())
    for net in (model, ref):
        norms = norm_param_ids(net[0])
        for p in net[0].parameters():
            p.requires_grad_(id(p) in norms)
        net.train()
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    torch.manual_seed(1)  # the head's dropout
    out, kept = saved_bytes(model, x)
    torch.manual_seed(1)
    out_ref, kept_ref = saved_bytes(ref, x)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    assert kept < 0.95 * kept_ref  # the block inputs (the ReLU6 outputs were recipes already)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    pairs = [(p, q) for p, q in zip(model.parameters(), ref.parameters()) if p.requires_grad]
    assert len(pairs) > 40
    for p, q in pairs:
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_state_dict_export_and_no_grad_are_unchanged():
    model = create_vision_model("efficientnet_lite0", 2, pretrained=False).eval()
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if type(m) is LeanConv2d:
            m.__class__ = nn.Conv2d
    assert set(model.state_dict()) == set(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
