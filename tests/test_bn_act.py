"""LeanBatchNormAct2d: timm's batch-norm + ReLU6 values and gradients, one activation kept."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from imageblocks.models import bn_act
from imageblocks.models.backbones import create_body, create_vision_model
from imageblocks.models.bn_act import LeanBatchNormAct2d, lean_saved_activations, use_lean_bn_act
from imageblocks.models.lean_conv import use_lean_conv
from tests.saved_tensors import saved_bytes


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        BatchNormAct2d(8, act_layer=nn.ReLU6),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        BatchNormAct2d(8, act_layer=nn.ReLU6),
        nn.Conv2d(8, 4, 1, bias=False),
        BatchNormAct2d(4, apply_act=False),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # outputs on both sides of 0 and 6
            nn.init.uniform_(m.weight, 0.5, 3.0)
            nn.init.uniform_(m.bias, -1.0, 4.0)
    return net


def _as_timms(model: nn.Module) -> nn.Module:
    """A copy of `model` with timm's BatchNormAct2d back in place of the lean one."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, LeanBatchNormAct2d):
            m.__class__ = BatchNormAct2d
    return model


@pytest.mark.parametrize("channels_last", [False, True])
def test_values_gradients_and_running_stats_are_timms(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ref = _net().to(memory_format=fmt)
    lean = use_lean_bn_act(copy.deepcopy(ref))
    assert [type(m) for m in lean][1::2] == [LeanBatchNormAct2d, LeanBatchNormAct2d, BatchNormAct2d]
    x = (torch.randn(4, 3, 16, 16) * 2).contiguous(memory_format=fmt)
    xr, xl = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, ref_bytes = saved_bytes(ref, xr, lean_saved_activations())
    yl, lean_bytes = saved_bytes(lean, xl, lean_saved_activations())
    assert lean_bytes < 0.5 * ref_bytes  # two activations per layer become one
    assert yl.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(yl, yr)
    grad = torch.randn_like(yr)
    yr.backward(grad)
    yl.backward(grad)
    torch.testing.assert_close(xl.grad, xr.grad)
    for (name, p), q in zip(ref.named_parameters(), lean.parameters()):
        atol = 1e-5 * p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=atol, msg=name)
    for (name, b), c in zip(ref.named_buffers(), lean.buffers()):
        torch.testing.assert_close(c, b, msg=name)


def test_a_step_trains_as_timms_batch_norm_does():
    """The lean layer's gradients move the loss as timm's do, step after step."""
    ref = _net()
    lean = use_lean_bn_act(copy.deepcopy(ref))
    x, target = torch.randn(8, 3, 12, 12), torch.randn(8, 4, 12, 12)
    losses = []
    for model in (ref, lean):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        run = []
        for _ in range(5):
            with lean_saved_activations():
                loss = nn.functional.mse_loss(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[1][-1] < losses[1][0]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_evaluation_bfloat16_and_no_grad_take_timms_path():
    lean = use_lean_bn_act(_net())
    ref = _as_timms(lean)
    x = torch.randn(2, 3, 8, 8)
    lean.eval(), ref.eval()
    assert torch.equal(lean(x), ref(x))
    lean.train(), ref.train()
    with torch.no_grad():
        assert torch.equal(lean(x), ref(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lean(x.requires_grad_())
    assert out.grad_fn is not None and "BatchNormReLU6" not in type(out.grad_fn).__name__


@pytest.mark.parametrize("frozen_convs", [False, True])
def test_each_output_is_made_again_once_a_backward_and_not_at_all_for_frozen_convs(
    frozen_convs, monkeypatch
):
    """The mask of a layer's backward reuses the output the next convolution made again; with
    that convolution frozen (`LeanConv2d`) only the mask is computed."""
    lean = use_lean_bn_act(_net())
    if frozen_convs:
        use_lean_conv(lean)
        for m in lean.modules():
            if isinstance(m, nn.Conv2d):
                m.requires_grad_(False)
    ref = _as_timms(lean)
    made = []
    real = bn_act._pre_activation
    monkeypatch.setattr(bn_act, "_pre_activation", lambda *a: made.append(1) or real(*a))
    monkeypatch.setattr(bn_act._Recompute, "__call__", _counted(bn_act._Recompute.__call__))
    x = torch.randn(4, 3, 12, 12)
    xl, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    with lean_saved_activations():
        yl = lean(xl)
    yr = ref(xr)
    grad = torch.randn_like(yr)
    yl.backward(grad)
    yr.backward(grad)
    assert len(made) == 2  # one per lean layer: its output, or (frozen) its mask alone
    assert bn_act._Recompute.__call__.calls == (0 if frozen_convs else 2)
    torch.testing.assert_close(xl.grad, xr.grad)
    for (name, p), q in zip(ref.named_parameters(), lean.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def _counted(fn):
    def counted(*args):
        counted.calls += 1
        return fn(*args)

    counted.calls = 0
    return counted


def test_a_weight_changed_before_the_backward_is_an_error():
    lean = use_lean_bn_act(_net())
    with lean_saved_activations():
        out = lean(torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        lean[1].weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_on_the_backbone_it_replaces_every_batch_norm_relu6_and_keeps_the_state_dict():
    body = create_body("efficientnet_lite0", pretrained=False)
    keys = set(body.module.state_dict())
    use_lean_bn_act(body.module)
    mods = list(body.module.modules())
    assert sum(isinstance(m, LeanBatchNormAct2d) for m in mods) > 20
    assert not any(type(m) is BatchNormAct2d and isinstance(m.act, nn.ReLU6) for m in mods)
    assert set(body.module.state_dict()) == keys


def test_a_vision_model_saves_less_and_a_memory_probe_around_it_sees_it():
    """A probe's hooks around the lean ones (the budget planner's) still see every tensor kept,
    so it measures the saving."""
    lean = use_lean_bn_act(create_vision_model("efficientnet_lite0", 2, pretrained=False)).train()
    ref = _as_timms(lean)
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)  # the head's dropout
    out_lean, lean_bytes = saved_bytes(lean, x, lean_saved_activations())
    torch.manual_seed(0)
    out_ref, ref_bytes = saved_bytes(ref, x)
    torch.testing.assert_close(out_lean, out_ref, rtol=1e-3, atol=1e-3)
    assert lean_bytes < 0.7 * ref_bytes
    out_lean.sum().backward()
    assert all(p.grad is not None for p in lean[0].parameters())
