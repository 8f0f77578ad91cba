"""Which CPU a benchmark ran on, and which of its instruction sets PyTorch actually used.

Shared by `run.py` (imageblocks' side) and `fastai_run.py` (fastai's side, in its own
virtualenv: this file imports nothing from imageblocks, and torch only inside functions).

An AVX-512 machine can run the code paths of an AVX2-only one (most laptops, many servers):
`isa_env("avx2")` is the environment that caps every library PyTorch computes with

- ATen's own kernels: `ATEN_CPU_CAPABILITY=avx2` (read by `torch.backends.cpu.get_cpu_capability`),
- oneDNN (convolutions, batch-norm, some matmuls): `ONEDNN_MAX_CPU_ISA=AVX2`,
- MKL (other matmuls): `MKL_ENABLE_INSTRUCTIONS=AVX2`,

and is set in a child process's environment before torch is imported there (each library reads
it once, at start). The record of a run (`cpu_record`) holds the CPU's flags, its class and the
ISA each library reports in that process, so a result says which code path it measured.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# the flags that decide the code path (and whether bfloat16 is native), in /proc/cpuinfo's names
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")

# --isa NAME: the environment that caps PyTorch's libraries to that class's code paths
ISA_ENV: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "avx512": {  # AVX-512 without bfloat16 or AMX (Skylake/Cascade Lake servers, Zen 4 with caps)
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
}
ISA_VARS = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
)
# a capped ISA has no native bfloat16: the precision `--isa` implies for imageblocks' "auto"
ISA_PRECISION = {"avx2": "fp32", "avx512": "fp32"}


def isa_env(isa: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the variables of `--isa isa` set."""
    if isa not in ISA_ENV:
        raise ValueError(f"unknown ISA {isa!r}: use one of {', '.join(ISA_ENV)}")
    env = dict(os.environ if base is None else base)
    env.update(ISA_ENV[isa])
    return env


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo; empty where unknown)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (`platform.machine()` where /proc/cpuinfo has none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.machine()
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def cpu_class(flags: set[str]) -> str:
    """'amx', 'avx512-bf16', 'avx512', 'avx2' or 'baseline': the best code path the CPU has."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "baseline"


def onednn_isa() -> str | None:
    """The ISA oneDNN dispatches to in this process's environment (it says so in its verbose
    log); found in a short child process, since oneDNN logs to the C stdout. None if unknown."""
    code = (
        "import torch\n"
        "x = torch.randn(8, 32, 32, 32)\n"  # big enough for ATen to hand it to oneDNN
        "with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):\n"
        "    torch.nn.functional.conv2d(x, torch.randn(64, 32, 3, 3))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"onednn_verbose,.*?info,cpu,isa:(.*)", out)
    return m.group(1).strip() if m else None


def machine_name(cpuinfo: str | None = None) -> str:
    """cpu<cores>-<model>-<class>, the name results files carry: 'cpu2-AMD-EPYC-avx2'. The
    class is in it because one model name covers CPUs with and without AVX-512."""
    model = " ".join(cpu_model(cpuinfo).replace("(R)", "").replace("(TM)", "").split())
    return f"cpu{len(os.sched_getaffinity(0))}-{model}-{cpu_class(cpu_flags(cpuinfo))}"


def cpu_record(probe_onednn: bool = True) -> dict[str, Any]:
    """The CPU, its class and flags, the ISA caps in the environment and the ISA that ATen (and
    oneDNN, with `probe_onednn`) actually use in this process: stored with every result."""
    import torch

    flags = cpu_flags()
    record: dict[str, Any] = {
        "model": cpu_model(),
        "class": cpu_class(flags),
        "flags": {f: f in flags for f in FLAGS},
        "cores": len(os.sched_getaffinity(0)),
        "env": {k: os.environ[k] for k in ISA_VARS if k in os.environ},
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if probe_onednn:
        record["onednn_isa"] = onednn_isa()
    return record


def code_path(record: dict[str, Any]) -> str:
    """One line for a report: 'AVX2 (ATen) / Intel AVX2 (oneDNN), CPU class avx512-bf16'."""
    if not record:
        return "unknown"
    aten, onednn = record.get("aten_capability", "?"), record.get("onednn_isa") or "?"
    return f"{aten} (ATen) / {onednn} (oneDNN), CPU class {record.get('class', '?')}"
