"""Where a training step's time goes: the book's PASCAL recipe, a few frozen and unfrozen steps.

EfficientNet-Lite0, batch 32, 128 px, on the generated demo data. The ISA cap (`--isa avx2`, the
default: an AVX2-only CPU's code paths, see `cpu_features.py`) is set before torch is imported.
Measures, per phase (frozen body with batch-norm training, as the book's `fine_tune`; unfrozen):

- the median step time on batches fetched beforehand (the model's work alone),
- the same steps pulling batches from the loader's workers (the loader's share of the cores),
- a `torch.profiler` table of the steps: top ops by self CPU time, and shares by kind,
- a validation pass's batches (eval forward, no grad).

    .venv/bin/python benchmarks/profile_step.py --isa avx2 --precision fp32 [--no-channels-last]
        [--train-bn/--no-train-bn] [--steps 10] --out FILE.json

A few dozen steps: short enough for a shared machine (say so with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

try:
    import cpu_features  # run as a script: this folder is on sys.path
except ImportError:  # imported as benchmarks.profile_step
    from benchmarks import cpu_features

KINDS = {  # op-name fragments per kind, first match wins (aten op names of PyTorch 2.x)
    "convolution": ("conv", "mkldnn_convolution"),
    "batch_norm": ("batch_norm",),
    "activation": ("hardtanh", "relu", "clamp", "silu", "sigmoid"),
    "optimizer": ("_foreach", "adam", "addcdiv", "lerp"),
    "copy / memory format": ("copy_", "contiguous", "clone", "to_dense", "empty_strided"),
    "linear / pooling / loss": ("addmm", "mm", "linear", "mean", "avg_pool", "binary_cross"),
}


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, marks in KINDS.items():
        if any(m in low for m in marks):
            return kind
    return "other"


def median_step(learn: Any, batches: list, n: int) -> float:
    """Median seconds of `n` training steps over `batches` (cycled)."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        learn.train_step(batches[i % len(batches)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profiled(learn: Any, batches: list, n: int) -> dict[str, Any]:
    """`n` steps under torch.profiler: the top ops by self CPU time and the shares by kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(n):
            learn.train_step(batches[i % len(batches)])
    return op_table(prof, n)


def op_table(prof: Any, n: int) -> dict[str, Any]:
    """A finished torch.profiler run of `n` steps: the top ops by self CPU time and the shares by kind."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    kinds: dict[str, float] = {}
    for e in events:
        kinds[kind_of(e.key)] = kinds.get(kind_of(e.key), 0.0) + e.self_cpu_time_total
    return {
        "self_cpu_s_per_step": round(total / 1e6 / n, 4),
        "top_ops": [
            {
                "op": e.key,
                "share": round(e.self_cpu_time_total / total, 4),
                "ms_per_step": round(e.self_cpu_time_total / 1e3 / n, 2),
                "calls_per_step": round(e.count / n, 1),
            }
            for e in events[:15]
        ],
        "kinds": {k: round(v / total, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
    }


def in_loop_step(learn: Any, dl: Any, n: int) -> float:
    """Median seconds per step over `n` steps that pull their batches from `dl`'s workers."""
    times, it = [], iter(dl)
    next(it)  # the workers have started
    for _ in range(n):
        t0 = time.perf_counter()
        learn.train_step(next(it))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", default="avx2", choices=list(cpu_features.ISA_ENV))
    ap.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--train-bn", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-profile", action="store_true", help="timings only")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ.update(cpu_features.ISA_ENV[args.isa])  # before torch is imported
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does

    from functools import partial

    import pandas as pd
    import torch

    from imageblocks.data.sources import URLs, untar_data
    from imageblocks.learn.learner import vision_learner
    from imageblocks.learn.metrics import accuracy_multi
    from imageblocks.recipes.book import multilabel_block
    from imageblocks.runtime import keep_freed_memory

    keep_freed_memory()  # as the first fit does
    torch.manual_seed(0)
    pascal = untar_data(URLs.DEMO_MULTILABEL)
    df = pd.read_csv(pascal / "train.csv")
    dls = multilabel_block(pascal).dataloaders(df, bs=args.bs, num_workers=args.workers)
    learn = vision_learner(
        dls,
        "efficientnet_lite0",
        metrics=partial(accuracy_multi, thresh=0.2),
        precision=args.precision,
        channels_last=args.channels_last,
        train_bn=args.train_bn,
    )
    if args.compile:
        learn.model = torch.compile(learn.model)
    n = args.steps
    t0 = time.perf_counter()
    it = iter(dls.train)
    batches = [next(it) for _ in range(n)]
    del it
    loader_first_s = (time.perf_counter() - t0) / n  # workers starting, first decode included
    result: dict[str, Any] = {
        "cpu": cpu_features.cpu_record(),
        "args": vars(args),
        "threads": torch.get_num_threads(),
        "autocast": str(learn.autocast_dtype),
        "loader_first_batches_s": round(loader_first_s, 4),
        "phases": {},
    }
    for phase in ("frozen", "unfrozen"):
        learn.freeze() if phase == "frozen" else learn.unfreeze()
        learn.model.train()
        t0 = time.perf_counter()
        median_step(learn, batches, 1)  # warm-up: oneDNN primitives, allocator, compiling
        first = time.perf_counter() - t0
        median_step(learn, batches, 1)
        out: dict[str, Any] = {"first_step_s": round(first, 2)}
        out["step_s"] = round(median_step(learn, batches, n), 4)
        out["in_loop_step_s"] = round(in_loop_step(learn, dls.train, n), 4)
        if not args.no_profile:
            out["profile"] = profiled(learn, batches, n)
        result["phases"][phase] = out
        print(phase, {k: v for k, v in out.items() if k != "profile"}, file=sys.stderr, flush=True)
    learn.model.eval()
    vit = iter(dls.valid)
    vbatches = [next(vit) for _ in range(min(4, len(dls.valid)))]
    del vit
    times = []
    with torch.no_grad():
        for b in vbatches * 2:
            xs, _ = learn.split_batch(b)
            t0 = time.perf_counter()
            with learn.autocast():
                learn.model(*xs)
            times.append(time.perf_counter() - t0)
    result["valid_batch_s"] = round(statistics.median(times[len(vbatches) :]), 4)
    result["valid_bs"] = len(vbatches[0][0])
    result["n_train"], result["n_valid"] = len(dls.train.dataset), len(dls.valid.dataset)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "phases"}), file=sys.stderr)


if __name__ == "__main__":
    main()
