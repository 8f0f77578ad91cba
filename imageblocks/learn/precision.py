"""Which floating-point precision a Learner computes in, per device.

`"auto"` (the default) picks mixed precision where the hardware runs it natively: bfloat16 on
CUDA GPUs that support it (float16 otherwise), bfloat16 on CPUs with AVX512-BF16 or AMX, and full
float32 everywhere else (an emulated bfloat16 is slower than float32), including an AVX-512
machine told to run AVX2 code paths (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`).
The head always runs in float32 (see `VisionModel.forward`), so regression outputs keep their
precision.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32", None)


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which it still computes bfloat16 natively
_ONEDNN_BF16_MARKS = ("BF16", "AMX", "FP16", "AVX10", "ALL")


def native_bf16(flags: set[str], aten_capability: str, onednn_cap: str | None) -> bool:
    """True when a CPU with these /proc/cpuinfo `flags` computes bfloat16 in hardware on the code
    path PyTorch uses: not when `ATEN_CPU_CAPABILITY` (reported as `aten_capability`) or
    `ONEDNN_MAX_CPU_ISA` (`onednn_cap`) caps it below AVX512-BF16, as when an AVX-512 machine
    runs an AVX2 machine's code paths."""
    if not {"avx512_bf16", "amx_bf16"} & flags:
        return False
    if aten_capability.upper() in ("DEFAULT", "AVX2"):
        return False
    return not onednn_cap or any(m in onednn_cap.upper() for m in _ONEDNN_BF16_MARKS)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16) and PyTorch's
    code path is not capped below it (see `native_bf16`)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    capability = torch.backends.cpu.get_cpu_capability()
    return native_bf16(set(line.partition(":")[2].split()), capability, onednn_cap)


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
