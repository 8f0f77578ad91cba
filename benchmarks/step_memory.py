"""One BIWI-sized training step's peak memory and time, per allocator setting and batch-norm layer.

Each configuration runs in its own process (a fresh heap): EfficientNet-Lite0 with the key-point
head, unfrozen, AdamW, a new 64x3x240x320 float32 batch each step. It records the median step time
(the first step left out), the process's max RSS, and glibc's heap after each forward and backward
(`mallinfo2`: heap size and bytes in use), which shows how much of the peak is fragmentation.

- allocator `kept`: glibc's heap kept (`imageblocks.runtime.keep_freed_memory`: no trim, no mmap)
  with the block cache turned off (`IMAGEBLOCKS_BLOCK_CACHE=0`), training's setting before it;
  `glibc`: glibc's defaults (every block over 32 MB a fresh mmap, its pages faulted in again);
  `mmap64`: kept, except blocks of 64 MB and more, which are mmapped; `cache`: kept, with blocks
  of 1 MB and more from the block cache (`imageblocks.block_cache`: exact-size reuse), training's
  setting now.
- layer `timm`: timm's BatchNormAct2d; `lean`: `imageblocks.models.bn_act.LeanBatchNormAct2d`
  (the default body's).

    .venv/bin/python benchmarks/step_memory.py --isa avx2   # 8 configurations, about 12 minutes
    .venv/bin/python benchmarks/step_memory.py --isa avx2 --profile   # and one more step profiled
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    import cpu_features  # run as a script: this folder is on sys.path
    import profile_step
    import run as side
except ImportError:  # imported as benchmarks.step_memory (the tests)
    from benchmarks import cpu_features, profile_step
    from benchmarks import run as side

ROOT = Path(__file__).resolve().parent
ALLOCATORS = ("kept", "glibc", "mmap64", "cache")
LAYERS = ("timm", "lean")
_M_MMAP_THRESHOLD, _M_MMAP_MAX = -3, -4


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def heap_mb() -> dict[str, float]:
    """glibc's main heap now: its size and the bytes in use, in MB."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {"heap_mb": info.arena / 2**20, "in_use_mb": info.uordblks / 2**20}


def set_allocator(allocator: str) -> None:
    """Apply one of ALLOCATORS to this process's glibc malloc."""
    import os

    from imageblocks import runtime

    if allocator == "glibc":
        return
    if allocator != "cache":
        os.environ["IMAGEBLOCKS_BLOCK_CACHE"] = "0"
    if not runtime.keep_freed_memory():
        raise SystemExit("the kept heap is not available here (not glibc, or MALLOC_* set)")
    if allocator == "cache":
        from imageblocks import block_cache

        if not block_cache.installed():
            raise SystemExit(block_cache.unavailable_reason)
    if allocator == "mmap64":
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)


def one_config(
    allocator: str, layer: str, steps: int, bs: int, size: tuple[int, int], profiled: bool = False
) -> dict:
    """Train `steps` steps in this process; the step record (times, max RSS, heap after each half,
    and with `profiled` a torch.profiler table of one more step)."""
    import contextlib
    import resource

    import torch
    from torch.profiler import ProfilerActivity, profile

    from imageblocks.models import backbones
    from imageblocks.models.backbones import create_vision_model
    from imageblocks.models.bn_act import lean_saved_activations

    set_allocator(allocator)
    torch.manual_seed(0)
    if layer == "timm":  # the body as it was before the lean layer became the default
        backbones.use_lean_bn_act = lambda model: model
    model = create_vision_model("efficientnet_lite0", 2, y_range=(-1, 1))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randn(bs, 2)
    saving = lean_saved_activations if layer == "lean" else contextlib.nullcontext
    times, heaps, ops = [], [], None
    for i in range(steps + profiled):
        batch = torch.randn(bs, 3, *size)  # a new batch each step, as a loader gives
        last = (
            i == steps
        )  # the profiled step, one more, left out of the times: the profiler slows it
        with (
            profile(activities=[ProfilerActivity.CPU]) if last else contextlib.nullcontext() as prof
        ):
            start = time.perf_counter()
            with saving():
                out = model(batch)
            after_forward = heap_mb()
            torch.nn.functional.mse_loss(out, target).backward()
            heaps.append({"forward": after_forward, "backward": heap_mb()})
            opt.step()
            opt.zero_grad()
            del out
            if not last:
                times.append(time.perf_counter() - start)
        if last:
            ops = profile_step.op_table(prof, 1)
    return {
        "ops": ops,
        "allocator": allocator,
        "layer": layer,
        "step_s": statistics.median(times[1:] or times),
        "times_s": times,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "heap": heaps,
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a table, one row per configuration."""
    rows = [
        f"# One training step's memory: {result['cpu']['model']}, `--isa {result['isa']}`, "
        f"batch {result['bs']} x {result['size'][0]}x{result['size'][1]}, float32\n",
        "| allocator | batch-norm | step (s) | max RSS (MB) | heap after forward / in use (MB) "
        "| largest heap (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for c in result["configs"]:
        last = c["heap"][-1]
        largest = max(h["backward"]["heap_mb"] for h in c["heap"])
        rows.append(
            f"| {c['allocator']} | {c['layer']} | {c['step_s']:.2f} | {c['max_rss_mb']:.0f} "
            f"| {last['forward']['heap_mb']:.0f} / {last['forward']['in_use_mb']:.0f} "
            f"| {largest:.0f} |"
        )
    for c in result["configs"]:
        if c.get("ops"):
            rows += [
                f"\n## {c['allocator']}, {c['layer']}: one step under torch.profiler, "
                f"{c['ops']['self_cpu_s_per_step']:.2f} s of self CPU time\n",
                "| op | share | ms | calls |",
                "| --- | ---: | ---: | ---: |",
            ]
            rows += [
                f"| `{o['op']}` | {o['share']:.1%} | {o['ms_per_step']:.0f} | {o['calls_per_step']:.0f} |"
                for o in c["ops"]["top_ops"]
            ]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", default="native", choices=list(cpu_features.ISA_ENV))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320))
    parser.add_argument("--allocators", nargs="+", default=list(ALLOCATORS), choices=ALLOCATORS)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument(
        "--profile", action="store_true", help="a torch.profiler table of one more step"
    )
    parser.add_argument("--one", nargs=2, metavar=("ALLOCATOR", "LAYER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        record = one_config(*args.one, args.steps, args.bs, tuple(args.size), args.profile)
        print(json.dumps(record))
        return
    env = cpu_features.isa_env(args.isa)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    configs = []
    for allocator in args.allocators:
        for layer in args.layers:
            cmd = [sys.executable, __file__, "--one", allocator, layer, "--steps", str(args.steps)]
            cmd += ["--bs", str(args.bs), "--size", *map(str, args.size)]
            cmd += ["--profile"] * args.profile
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            configs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            c = configs[-1]
            print(
                f"{allocator:7s} {layer:5s} step {c['step_s']:.2f} s, max RSS {c['max_rss_mb']:.0f} MB"
            )
    result = {
        "cpu": cpu_features.cpu_record(),
        "isa": args.isa,
        "bs": args.bs,
        "size": list(args.size),
        "steps": args.steps,
        "configs": configs,
    }
    machine = cpu_features.machine_name() + ("" if args.isa == "native" else f"-{args.isa}")
    print(side.write_results("step-memory-", machine, False, result, markdown(result), args.out))


if __name__ == "__main__":
    main()
