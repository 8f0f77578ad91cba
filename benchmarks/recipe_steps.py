"""The BIWI recipe's `lr_find` step by step, per allocator setting: time, system time, page faults.

`step_memory.py` times one step on a fixed batch; this runs the book's BIWI recipe as a user does
(the demo data, its loader with 2 workers and batch augmentation, `lr_find`), each allocator
setting in its own process, and prints for every training step its wall time, the process's
system time and minor page faults, and the block cache's counters (requests that mapped a new
block, blocks unmapped to stay bounded, the largest working set, what is mapped). It shows whether
the cache serves a whole recipe from what it keeps or maps (and faults in) memory every step.
Settings: `cache` (training's default: the block cache, the lean layers), `kept`
(glibc's kept heap, `IMAGEBLOCKS_BLOCK_CACHE=0`) and `kept-timm` (the kept heap and timm's
batch-norm layer and PyTorch's convolutions: the defaults before the memory work).

    .venv/bin/python benchmarks/recipe_steps.py --isa avx2       # every setting, one process each
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import cpu_features  # run as a script: this folder is on sys.path
except ImportError:  # imported as benchmarks.recipe_steps
    from benchmarks import cpu_features

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Setting:
    """An allocator setting (its environment) and whether the backbone has the lean layers."""

    env: dict[str, str]
    lean: bool = True  # the lean batch-norm + ReLU6 and the convolutions keeping no frozen input


SETTINGS = {
    "cache": Setting({}),
    "kept": Setting({"IMAGEBLOCKS_BLOCK_CACHE": "0"}),
    # training's defaults before the memory work: the kept heap and timm's batch-norm layer
    "kept-timm": Setting({"IMAGEBLOCKS_BLOCK_CACHE": "0"}, lean=False),
}


def _usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def one_setting(num_it: int, workers: int, lean: bool = True) -> dict[str, Any]:
    """In this process: the BIWI recipe's lr_find(num_it), one record per step."""
    from imageblocks import block_cache
    from imageblocks.data.sources import URLs, untar_data
    from imageblocks.learn.learner import vision_learner
    from imageblocks.models import backbones
    from imageblocks.recipes.book import points_block
    from imageblocks.runtime import keep_freed_memory

    if not lean:  # timm's BatchNormAct2d and PyTorch's Conv2d stay
        backbones.use_lean_bn_act = backbones.use_lean_conv = lambda model: model
    keep_freed_memory()  # as run.py: before the loader's workers are forked
    biwi = untar_data(URLs.DEMO_POINTS)
    dls = points_block(biwi).dataloaders(biwi, bs=64, num_workers=workers, device="cpu")
    learn = vision_learner(dls, "efficientnet_lite0", y_range=(-1, 1), precision="fp32")
    steps: list[dict[str, Any]] = []
    last = {"t": time.perf_counter(), "usage": _usage()}
    process = dls.train.process

    def timed_process(b: Any) -> Any:  # a batch asked for: the previous step has ended
        now, usage = time.perf_counter(), _usage()
        step = {
            "s": round(now - last["t"], 3),
            "sys_s": round(usage[1] - last["usage"][1], 3),
            "minor_faults": usage[2] - last["usage"][2],
        }
        if block_cache.installed():
            st = block_cache.stats()
            step.update(
                misses=st.misses,
                evictions=st.evictions,
                peak_mb=st.peak >> 20,
                mapped_mb=(st.in_use + st.cached) >> 20,
            )
        steps.append(step)
        last.update(t=now, usage=usage)
        return process(b)

    dls.train.process = timed_process
    t0, u0 = time.perf_counter(), _usage()
    learn.lr_find(num_it=num_it, show_plot=False)
    u1 = _usage()
    return {
        "block_cache": block_cache.installed(),
        "lr_find_s": round(time.perf_counter() - t0, 2),
        "user_s": round(u1[0] - u0[0], 2),
        "sys_s": round(u1[1] - u0[1], 2),
        "minor_faults": u1[2] - u0[2],
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "steps": steps[1:],  # the first record is the loader's first batch, before any step
    }


def markdown(result: dict[str, Any]) -> str:
    """The settings side by side: totals, then the steady steps' medians."""
    lines = [
        f"# The BIWI recipe's lr_find step by step: {result['machine']}, `--isa {result['isa']}`, "
        f"{result['num_it']} steps, {result['workers']} workers, float32",
        "",
        f"Command: `{result['command']}`",
        "",
        "| allocator | lr_find (s) | sys (s) | minor faults | max RSS (MB) | steady step (s) | "
        "sys per step (s) | blocks mapped per step |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in result["settings"].items():
        steady = r["steps"][2:] or r["steps"]
        med = sorted(s["s"] for s in steady)[len(steady) // 2]
        sys_med = sorted(s["sys_s"] for s in steady)[len(steady) // 2]
        if "misses" in steady[-1] and len(steady) > 1:
            per = (steady[-1]["misses"] - steady[0]["misses"]) / (len(steady) - 1)
            mapped = f"{per:.0f}"
        else:
            mapped = "n/a"
        lines.append(
            f"| {name} | {r['lr_find_s']} | {r['sys_s']} | {r['minor_faults']} | "
            f"{r['max_rss_mb']} | {med} | {sys_med} | {mapped} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", choices=sorted(cpu_features.ISA_ENV), default="avx2")
    ap.add_argument("--num-it", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--one", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help="results stem (default: benchmarks/results/...)")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_setting(args.num_it, args.workers, SETTINGS[args.one].lean)))
        return
    result: dict[str, Any] = {
        "machine": cpu_features.machine_name(),
        "cpu": cpu_features.cpu_record(),
        "isa": args.isa,
        "num_it": args.num_it,
        "workers": args.workers,
        "command": "python benchmarks/recipe_steps.py " + " ".join(sys.argv[1:]),
        "settings": {},
    }
    for name in args.settings:
        env = {**cpu_features.isa_env(args.isa), **SETTINGS[name].env}
        cmd = [sys.executable, __file__, "--one", name, "--num-it", str(args.num_it)]
        cmd += ["--workers", str(args.workers)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        result["settings"][name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, {k: v for k, v in result["settings"][name].items() if k != "steps"}, flush=True)
    stem = args.out or ROOT / "results" / f"recipe-steps-{result['machine']}-{args.isa}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
