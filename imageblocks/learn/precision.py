"""Which floating-point precision a Learner computes in, per device.

`"auto"` (the default) picks mixed precision where the hardware runs it natively: bfloat16 on
CUDA GPUs that support it (float16 otherwise), bfloat16 on CPUs with AVX512-BF16 or AMX, and full
float32 everywhere else (an emulated bfloat16 is slower than float32). The head always runs in
float32 (see `VisionModel.forward`), so regression outputs keep their precision.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32", None)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def check_precision(precision: str | None) -> str | None:
    """`precision` if it is one the Learner knows, else a ValueError listing them."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}: use one of 'auto', 'bf16', 'fp16', 'fp32' (or None)"
        )
    return precision


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for full float32."""
    if precision in (None, "fp32"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(precision: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """`torch.autocast` in the dtype `precision` picks on `device`, or a no-op for float32."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
