"""Batch-norm + ReLU6 that keeps one activation for the backward instead of two: `LeanBatchNormAct2d`.

In training, timm's `BatchNormAct2d` (batch-norm, then ReLU6) leaves two tensors of the layer's
full size to autograd: batch-norm's input (for its gradient) and the ReLU6 output (for its mask,
and as the input of the convolution after it). In EfficientNet-Lite0 on 64 images of 240x320 in
float32 those were 4.9 of the 5.3 GB autograd kept. Both can be had from the input x and the
batch's mean and 1/std: the forward is timm's (ATen's batch-norm, then the ReLU6 in place), the
batch-norm gradient is ATen's own kernel on x, the ReLU6 mask is where 0 < x·scale + shift < 6
(scale = weight/std, shift = bias - mean·scale), and the output the next layer saves is
recomputed from x in the backward, through a saved-tensor hook (`lean_saved_activations`,
entered around the body's forward) that stores a recipe in place of the output, and read again
by the layer's own backward for its mask; the recomputed output equals the forward's to float32
rounding (ATen's vectorised kernel fuses the multiply-add differently). While the body is frozen its convolutions keep no input (`LeanConv2d`), so nothing
is recomputed but the mask: one elementwise pass per layer in the backward. Hand-written because
no library offers it for ReLU6 (inplace-abn's trick needs an invertible activation); float32
only, where the memory is (bfloat16 keeps timm's).

On by default in `create_body` (`use_lean_bn_act`, the forward inside
`lean_saved_activations()`), since training's allocator became the block cache
(`imageblocks.block_cache`): with glibc's kept heap the lean layer's saving was lost to
fragmentation (a BIWI step, 64x240x320 float32, peaked at 8.7 GB against 7.7-8.4 GB with timm's
layer); with the block cache the same step peaks at 5.4 GB against 7.0 GB with timm's layer
(`benchmarks/step_memory.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from timm.layers import BatchNormAct2d
from torch import nn

from imageblocks.models.lean_conv import memory_format_of
from imageblocks.models.replace import replace_modules


def _pre_activation(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
) -> torch.Tensor:
    """The batch-norm output before the ReLU6, made again: x·scale + shift per channel."""
    scale = weight * invstd
    shift = torch.addcmul(bias, mean, scale, value=-1.0)
    return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))


@dataclass(eq=False)
class _Recompute:
    """What a saved-tensor hook stores instead of a layer's output: how to make it again."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    invstd: torch.Tensor
    versions: tuple[int, int]
    made: torch.Tensor | None = None  # the output made again, until the layer's backward takes it

    def __call__(self) -> torch.Tensor:
        if (self.weight._version, self.bias._version) != self.versions:
            raise RuntimeError(
                "a batch-norm weight was modified in place between the forward and the backward; "
                "call backward() before changing the model's parameters"
            )
        made = _pre_activation(self.x, self.weight, self.bias, self.mean, self.invstd)
        self.made = made.clamp_(0.0, 6.0)
        return self.made

    def take(self) -> torch.Tensor | None:
        """The output made again for a later layer's backward, if it was, handed over once."""
        made, self.made = self.made, None
        return made


@dataclass(eq=False)
class _Outer:
    """A tensor packed by the saved-tensor hooks that were active around ours."""

    packed: object


# id(output) -> (the output, weakly; its version; its recipe), while a forward runs
_Outputs = dict[int, tuple[weakref.ref, int, _Recompute]]
_outputs: contextvars.ContextVar[_Outputs | None] = contextvars.ContextVar(
    "lean_bn_outputs", default=None
)


def _outer_hooks() -> tuple | None:
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


@contextlib.contextmanager
def lean_saved_activations() -> Iterator[None]:
    """Within: outputs of `LeanBatchNormAct2d` layers saved by later ops are recomputed in the
    backward instead of kept (hooks active around this, such as a memory probe's, still see the
    rest)."""
    hooks_enabled = getattr(torch._C._autograd, "_saved_tensors_hooks_is_enabled", lambda: True)
    if not torch.is_grad_enabled() or _outputs.get() is not None or not hooks_enabled():
        yield
        return
    outputs: _Outputs = {}
    outer = _outer_hooks()

    def pack(t: torch.Tensor) -> object:
        ref, version, recipe = outputs.get(id(t), (None, None, None))
        if ref is not None and ref() is t and t._version == version:
            return recipe
        return _Outer(outer[0](t)) if outer else t

    def unpack(packed: object) -> torch.Tensor:
        if isinstance(packed, _Recompute):
            return packed()
        return outer[1](packed.packed) if isinstance(packed, _Outer) else packed

    token = _outputs.set(outputs)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _outputs.reset(token)
        outputs.clear()


class _BatchNormReLU6(torch.autograd.Function):
    """Training-mode batch-norm then ReLU6, saving only its input (and the batch statistics)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        momentum: float,
        eps: float,
    ) -> torch.Tensor:
        y, mean, invstd = torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        return y.clamp_(0.0, 6.0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
        x, weight, bias, mean, invstd = ctx.saved_tensors
        recipe = getattr(ctx, "recipe", None)
        # the graph, and with it this node, can outlive the backward until the next forward:
        # let go of the recipe, which holds the layer's input
        ctx.recipe = None
        y = recipe.take() if recipe is not None else None
        if y is None:  # nobody needed the output again (a frozen convolution after it)
            y = _pre_activation(x, weight, bias, mean, invstd)
        # 0 < clamp(z, 0, 6) < 6 exactly where 0 < z < 6, so either gives the ReLU6 mask
        grad = torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous(memory_format=memory_format_of(x)),
            x,
            weight,
            None,
            None,
            mean,
            invstd,
            True,
            0.0,
            list(ctx.needs_input_grad[:3]),
        )
        return gx, gw, gb, None, None, None, None


class LeanBatchNormAct2d(BatchNormAct2d):
    """timm's `BatchNormAct2d` with a ReLU6, keeping only its input for the float32 backward."""

    def _lean(self, x: torch.Tensor) -> bool:
        return (
            self.training
            and self.track_running_stats
            and self.affine
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and torch.is_grad_enabled()
            and (x.requires_grad or self.weight.requires_grad or self.bias.requires_grad)
            and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._lean(x):
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        y = _BatchNormReLU6.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps
        )
        outputs = _outputs.get()
        if outputs is not None:
            saved, w, b = y.grad_fn.saved_tensors, self.weight, self.bias
            recipe = _Recompute(saved[0], w, b, saved[3], saved[4], (w._version, b._version))
            outputs[id(y)] = (weakref.ref(y), y._version, recipe)
            y.grad_fn.recipe = recipe  # its backward reuses the output the next layer made again
        return y


def _lean_bn_act(child: nn.Module) -> LeanBatchNormAct2d | None:
    """A `LeanBatchNormAct2d` sharing the state of a timm `BatchNormAct2d` + ReLU6, else None."""
    if not (
        type(child) is BatchNormAct2d
        and isinstance(child.act, nn.ReLU6)
        and isinstance(child.drop, nn.Identity)
    ):
        return None
    lean = LeanBatchNormAct2d(
        child.num_features,
        child.eps,
        child.momentum,
        child.affine,
        child.track_running_stats,
        device="meta",
    )
    lean.act, lean.drop = child.act, child.drop
    for name, tensor in [
        *child.named_parameters(recurse=False),
        *child.named_buffers(recurse=False),
    ]:
        setattr(lean, name, tensor)
    return lean


def use_lean_bn_act(model: nn.Module) -> nn.Module:
    """Replace every timm `BatchNormAct2d` + ReLU6 in `model` by a `LeanBatchNormAct2d`."""
    return replace_modules(model, _lean_bn_act)
