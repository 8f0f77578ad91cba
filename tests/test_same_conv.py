"""`SameConv2d` is timm's TF "same" convolution exactly, without the pad copy, and trains in bf16."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from imageblocks.models.backbones import create_body
from imageblocks.models.same_conv import SameConv2d, same_padding, use_same_conv


def pair(c_in: int, c_out: int, k: int, stride: int, dilation: int, groups: int, bias: bool):
    """A timm `Conv2dSame` and the `SameConv2d` that replaces it, with the same parameters."""
    torch.manual_seed(0)
    timm_conv = Conv2dSame(c_in, c_out, k, stride, dilation=dilation, groups=groups, bias=bias)
    ours = use_same_conv(nn.Sequential(timm_conv))[0]
    assert isinstance(ours, SameConv2d) and ours.weight is timm_conv.weight
    return timm_conv, ours


@pytest.mark.parametrize("size", [(16, 16), (17, 15), (9, 12)])
@pytest.mark.parametrize(
    "c_in,c_out,k,stride,dilation,groups,bias",
    [
        (3, 8, 3, 2, 1, 1, False),  # the stem
        (8, 8, 3, 2, 1, 8, False),  # strided depthwise 3x3
        (8, 8, 5, 2, 1, 8, True),  # strided depthwise 5x5 with a bias
        (8, 4, 3, 1, 1, 1, True),
        (4, 6, 3, 2, 2, 1, False),  # dilated: padded the TF way
    ],
)
def test_same_output_and_gradients_as_timm(size, c_in, c_out, k, stride, dilation, groups, bias):
    timm_conv, ours = pair(c_in, c_out, k, stride, dilation, groups, bias)
    x = torch.randn(2, c_in, *size, dtype=torch.float64)
    timm_conv.double()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = timm_conv(x1), ours(x2)
    assert y1.shape == y2.shape
    torch.testing.assert_close(y2, y1)
    g = torch.randn_like(y1)
    w1 = torch.autograd.grad(y1, [x1, timm_conv.weight], g)
    w2 = torch.autograd.grad(y2, [x2, ours.weight], g)
    for a, b in zip(w2, w1):
        torch.testing.assert_close(a, b)


def test_same_padding_is_tf_padding():
    assert same_padding(64, 3, 2) == (0, 1)
    assert same_padding(32, 5, 2) == (1, 2)
    assert same_padding(65, 3, 2) == (1, 1)
    assert same_padding(10, 3, 1) == (1, 1)


def test_strided_depthwise_trains_in_bf16_autocast_with_float32_gradients():
    timm_conv, ours = pair(16, 16, 5, 2, 1, 16, False)
    x = torch.randn(4, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x.to(torch.bfloat16).requires_grad_())
        with torch.no_grad():
            y_eval = ours(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y_eval.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), timm_conv(x), atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert ours.weight.grad is not None and ours.weight.grad.dtype == torch.float32


def test_the_bundled_backbone_has_no_pad_copy_and_keeps_its_weight_names():
    import timm

    body = create_body("efficientnet_lite0", pretrained=False)
    assert not any(type(m) is Conv2dSame for m in body.module.modules())
    assert sum(isinstance(m, SameConv2d) for m in body.module.modules()) == 5
    reference = timm.create_model("tf_efficientnet_lite0", num_classes=0, global_pool="")
    assert list(body.module.state_dict()) == list(reference.state_dict())
