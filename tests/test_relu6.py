"""LeanReLU6: PyTorch's in-place ReLU6 values and gradients, without the saved input copy."""

from __future__ import annotations

import copy

import torch
from torch import nn

from imageblocks.models.backbones import create_body
from imageblocks.models.relu6 import LeanReLU6, use_lean_relu6
from tests.saved_tensors import saved_bytes


def _block() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(inplace=True),
        nn.Conv2d(8, 4, 3, padding=1),
    )


def test_values_and_gradients_equal_pytorch_s_relu6_bit_for_bit() -> None:
    ref = _block()
    lean = use_lean_relu6(copy.deepcopy(ref))
    assert isinstance(lean[2], LeanReLU6)
    x = torch.randn(4, 3, 16, 16) * 4  # many values beyond 0 and 6
    x[0, 0, 0, :4] = torch.tensor([0.0, 6.0, -1e-8, 6 + 1e-6])
    outs = []
    for model in (ref, lean):
        xi = x.clone().requires_grad_()
        out = model(xi)
        out.square().sum().backward()
        outs.append((out.detach(), xi.grad, [p.grad for p in model.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])
    for a, b in zip(outs[0][2], outs[1][2], strict=True):
        assert torch.equal(a, b)


def test_the_backward_keeps_one_activation_less_per_relu6() -> None:
    ref = _block()
    lean = use_lean_relu6(copy.deepcopy(ref))
    x = torch.randn(2, 3, 32, 32)
    _, ref_bytes = saved_bytes(ref, x)
    _, lean_bytes = saved_bytes(lean, x)
    activation = 2 * 8 * 32 * 32 * 4  # one (2, 8, 32, 32) float32 tensor
    assert ref_bytes - lean_bytes == activation


def test_without_gradients_it_is_a_plain_in_place_relu6() -> None:
    act = LeanReLU6()
    x = torch.tensor([-1.0, 3.0, 7.0])
    with torch.no_grad():
        y = act(x)
    assert y is x and torch.equal(x, torch.tensor([0.0, 3.0, 6.0]))


def test_the_default_backbone_uses_it() -> None:
    body = create_body("efficientnet_lite0", pretrained=False)
    kinds = {type(m) for m in body.module.modules()}
    assert LeanReLU6 in kinds and nn.ReLU6 not in kinds
