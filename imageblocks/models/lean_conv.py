"""Convolutions that keep no input for the backward while their weights are frozen: `LeanConv2d`.

Autograd's convolution saves its input whatever needs a gradient, though with a frozen weight
(the body in `freeze()`, `lr_find` and the first epochs of `fine_tune`) the backward only needs
the input's shape: the gradient that flows on to the batch-norm layers below is computed from
the weight alone. Here such a convolution saves the weight and the input's shape, and the
backward runs ATen's own `convolution_backward` for the input only, so the values are PyTorch's.
In EfficientNet-Lite0 that frees every convolution input of a frozen step and, with
`LeanBatchNormAct2d`, spares the recomputation of the ReLU6 outputs, which only a trained
weight's gradient reads. Hand-written because autograd has no switch for it; on CPU in float32
and float64 only (under autocast the saved weight would not be the dtype the backward gets).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imageblocks.models.replace import replace_modules


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a tensor laid out so (and not also contiguous), else contiguous."""
    channels_last = not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


class _FrozenConv2d(torch.autograd.Function):
    """conv2d whose backward gives the input's gradient only, from the weight and the shape."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        args: tuple[Sequence[int], Sequence[int], Sequence[int], int],
    ) -> torch.Tensor:
        ctx.input_meta = (x.shape, x.dtype, x.device, memory_format_of(x))
        ctx.args = args  # stride, padding, dilation, groups
        ctx.save_for_backward(weight)
        return F.conv2d(x, weight, bias, *args)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
        (weight,) = ctx.saved_tensors
        shape, dtype, device, memory_format = ctx.input_meta
        stride, padding, dilation, groups = ctx.args
        # never read: the kernel takes the input's sizes from it, and its memory format from it
        # or from the weight, so where the two agree a placeholder of no memory does
        if memory_format_of(weight) == memory_format:
            placeholder = grad.new_empty(1).expand(shape)
        else:
            placeholder = torch.empty(
                shape, dtype=dtype, device=device, memory_format=memory_format
            )
        gx = torch.ops.aten.convolution_backward(
            grad,
            placeholder,
            weight,
            None,
            stride,
            padding,
            dilation,
            False,
            [0] * len(stride),
            groups,
            (True, False, False),
        )[0]
        return gx, None, None, None


def _frozen(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        torch.is_grad_enabled()
        and x.device.type == "cpu"  # where it was measured; CUDA keeps autograd's own path
        and x.requires_grad
        and not weight.requires_grad
        and (bias is None or not bias.requires_grad)
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled(x.device.type)
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
    )


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """`F.conv2d` (zero padding given as numbers), keeping no input when the weight is frozen."""
    if _frozen(x, weight, bias):
        return _FrozenConv2d.apply(x, weight, bias, (stride, padding, dilation, groups))
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class LeanConv2d(nn.Conv2d):
    """`nn.Conv2d` that keeps no copy of its input for the backward while its weight is frozen."""

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def _lean_conv(child: nn.Module) -> LeanConv2d | None:
    """A `LeanConv2d` sharing the parameters of a plain `nn.Conv2d`, None for anything else."""
    if type(child) is not nn.Conv2d:
        return None
    conv = LeanConv2d(
        child.in_channels,
        child.out_channels,
        child.kernel_size,
        child.stride,
        child.padding,
        child.dilation,
        child.groups,
        child.bias is not None,
        child.padding_mode,
        device="meta",
    )
    conv.weight, conv.bias = child.weight, child.bias
    return conv


def use_lean_conv(model: nn.Module) -> nn.Module:
    """Replace every plain `nn.Conv2d` in `model` by a `LeanConv2d` sharing its parameters."""
    return replace_modules(model, _lean_conv)
