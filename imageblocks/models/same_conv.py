"""TensorFlow "same" convolutions that train fast on CPU: `SameConv2d` replaces timm's `Conv2dSame`.

TF-ported weights (`tf_efficientnet_lite0`, the bundled backbone) need TF's "same" padding, which
for a stride-2 convolution on an even input pads one more row and column after than before.
timm does that with `F.pad` on every batch: a full copy of the activations forward and another
backward. Here the extra row/column becomes a zero tap in front of the kernel, so the convolution
pads symmetrically by itself and no copy is made; the result is the same convolution exactly.

Hand-written because it is a measured hot spot of the product's default backbone: on CPU, oneDNN's
bfloat16 backward of a strided depthwise convolution is 10-25x slower than its float32 one
(100 ms against 4.5 ms for 672 channels at 8x8, batch 64, on an AVX512-BF16 EPYC), and these four
layers were half of a training step. So while gradients are recorded on CPU in bfloat16, the
strided depthwise ones compute in float32 and hand bfloat16 back.

An ONNX export whose input size is fixed traces inside `static_padding()`: each convolution's
padding is worked out once, at the traced size, and written as a constant `Pad` (which ONNX
Runtime folds into the `Conv`), not as the chain of `Shape`/`Ceil`/`Clip` nodes a size-agnostic
graph needs; int8 quantisation would otherwise put its rounding on those size computations.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.conv2d_same import conv2d_same
from timm.layers.padding import get_same_padding
from torch import nn

from imageblocks.models.lean_conv import conv2d
from imageblocks.models.replace import replace_modules

_STATIC = contextvars.ContextVar("imageblocks_static_same_padding", default=False)


@contextlib.contextmanager
def static_padding() -> Iterator[None]:
    """Within it, an ONNX export pads each "same" convolution for the traced input size only."""
    token = _STATIC.set(True)
    try:
        yield
    finally:
        _STATIC.reset(token)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "same" padding (before, after) of one dimension: after is before or before + 1."""
    total = get_same_padding(size, kernel, stride, dilation)
    return total // 2, total - total // 2


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of `x` runs in here (the autocast dtype when autocast is on)."""
    if x.device.type != "cpu":
        return x.dtype
    try:  # torch >= 2.4 names the device; the older calls are deprecated there
        on, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    except (TypeError, AttributeError):
        on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return dtype if on else x.dtype


class SameConv2d(nn.Conv2d):
    """`nn.Conv2d` with TF "same" padding worked out from each input's size, without `F.pad`."""

    def _fp32_backward(self, x: torch.Tensor) -> bool:
        depthwise = self.groups > 1 and self.groups == self.in_channels
        return (
            depthwise
            and max(self.stride) > 1
            and x.device.type == "cpu"
            and torch.is_grad_enabled()
            and _compute_dtype(x) == torch.bfloat16
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of `x` with "same" padding."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        if torch.onnx.is_in_onnx_export() and _STATIC.get():
            top, bottom = same_padding(int(x.shape[-2]), kh, sh, dh)
            left, right = same_padding(int(x.shape[-1]), kw, sw, dw)
            x = F.pad(x, (left, right, top, bottom))
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        if dh > 1 or dw > 1 or torch.onnx.is_in_onnx_export():
            # a zero tap shifts by one pixel only when undilated, and ONNX wants a fixed kernel
            # and traceable padding: timm's own padded convolution
            return conv2d_same(
                x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups
            )
        top, bottom = same_padding(x.shape[-2], kh, sh)
        left, right = same_padding(x.shape[-1], kw, sw)
        weight = self.weight
        if bottom > top or right > left:
            # pad one more before than TF would, and shift the kernel by a zero tap to match
            weight = F.pad(weight, (right - left, 0, bottom - top, 0))
        return self._conv(x, weight, (bottom, right))

    def _conv(
        self, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]
    ) -> torch.Tensor:
        args = (self.stride, padding, self.dilation, self.groups)
        if self._fp32_backward(x):
            with torch.autocast("cpu", enabled=False):
                bias = None if self.bias is None else self.bias.float()
                return F.conv2d(x.float(), weight.float(), bias, *args).to(torch.bfloat16)
        return conv2d(x, weight, self.bias, *args)  # with a frozen weight, no input kept


def _same_conv(child: nn.Module) -> SameConv2d | None:
    """A `SameConv2d` sharing the parameters of a timm `Conv2dSame`, None for anything else."""
    if type(child) is not Conv2dSame:
        return None
    conv = SameConv2d(
        child.in_channels,
        child.out_channels,
        child.kernel_size,
        child.stride,
        0,
        child.dilation,
        child.groups,
        child.bias is not None,
        device="meta",
    )
    conv.weight, conv.bias = child.weight, child.bias
    return conv


def use_same_conv(model: nn.Module) -> nn.Module:
    """Replace every timm `Conv2dSame` in `model` by a `SameConv2d` sharing its parameters."""
    return replace_modules(model, _same_conv)
