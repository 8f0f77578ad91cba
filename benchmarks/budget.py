"""What a time budget buys: fastai's book recipe against `fine_tune_budget` at equal wall time.

On both demo datasets: fastai's chapter-6 recipe (benchmarks/fastai_run.py, in .venv-fastai:
`make fastai-env`), its wall time and quality; then imageblocks' budgeted run with exactly that
wall time as its budget, and with 2, 5 and 10 minutes. Each budget counts from before the data
is loaded to after the validation predictions are scored. Reported: the budget, the planned and
actual wall time, the plan, mAP / accuracy_multi / macro F1 (multi-label), mean and
90th-percentile error in pixels of the 640x480 frame (key points). Writes
`benchmarks/results/budget-<machine>.json` and `.md`.

    .venv/bin/python benchmarks/budget.py                 # fastai's run, then 4 budgets a task
    .venv/bin/python benchmarks/budget.py --fastai-result benchmarks/results/fastai-side-cpu2-AMD-EPYC-avx512-bf16.json
    .venv/bin/python benchmarks/budget.py --tasks points --merge   # one task, the other kept
    .venv/bin/python benchmarks/budget.py --quick         # 512/256 items, one 60 s budget a task
    .venv/bin/python benchmarks/budget.py --isa avx2      # an AVX2-only CPU's code paths (float32)

The result records the CPU, the ISA PyTorch used and the precision (see `run.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import cpu_features  # noqa: E402
import run as side  # noqa: E402 (the side-by-side benchmark's helpers)

from imageblocks.runtime import keep_freed_memory, sleep_idle_threads  # noqa: E402

TASKS = ("multilabel", "points")
FULL_BUDGETS = ("fastai", "2m", "5m", "10m")
QUICK_BUDGETS = ("60s",)


def fastai_result(args: argparse.Namespace, pascal: Path, biwi: Path) -> dict[str, Any]:
    """fastai's side: read from --fastai-result, or run fastai_run.py in .venv-fastai."""
    if args.fastai_result:
        return json.loads(Path(args.fastai_result).read_text())
    if not side.FASTAI_PY.is_file():
        raise SystemExit("fastai is not installed: run `make fastai-env`, or pass --fastai-result")
    out = ROOT / "results" / ".budget-fastai.json"
    cmd = [str(side.FASTAI_PY), str(ROOT / "fastai_run.py"), "--pascal", str(pascal)]
    cmd += ["--biwi", str(biwi), "--workers", str(args.workers), "--out", str(out)]
    cmd += ["--device", args.device] + (["--quick"] if args.quick else [])
    side.log("== fastai's book recipes:", " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def fastai_summary(task: str, result: dict[str, Any]) -> dict[str, Any]:
    """fastai's wall time (lr_find included where the recipe runs it) and quality."""
    r = result[task]
    wall = r["fine_tune_s"] + r.get("lr_find_s", 0.0)
    keys = ("map", "acc_multi_0_2", "acc_multi_best", "f1_macro", "pixel_error")
    return {"wall_s": round(wall, 1), **{k: r[k] for k in keys if k in r}}


def dataloaders(task: str, folder: Path, args: argparse.Namespace) -> Any:
    """The book's DataLoaders of `task` (the --quick subsets as benchmarks/run.py takes them)."""
    import pandas as pd

    from imageblocks.data.sources import get_image_files
    from imageblocks.recipes.book import multilabel_block, points_block

    opts = {"bs": 64, "num_workers": args.workers, "device": args.device}
    if task == "multilabel":
        df = pd.read_csv(folder / "train.csv")
        if args.quick:
            train = df[~df["is_valid"]].head(side.QUICK_TRAIN)
            df = pd.concat([train, df[df["is_valid"]].head(side.QUICK_VALID)])
            df = df.sort_index().reset_index(drop=True)
        return multilabel_block(folder).dataloaders(df, **opts)
    block = points_block(folder)
    if args.quick:

        def get_items(path: Path) -> list:
            files = sorted(get_image_files(path))
            valid = [f for f in files if f.parent.name == "13"][: side.QUICK_VALID]
            return [f for f in files if f.parent.name != "13"][: side.QUICK_TRAIN] + valid

        block.get_items = get_items
    return block.dataloaders(folder, **opts)


def point_errors(preds: Any, targs: Any) -> dict[str, float]:
    """Mean and 90th-percentile distance in pixels of the 640x480 frame."""
    import torch

    half = torch.tensor(side.BIWI_FRAME, dtype=torch.float32) / 2
    d = ((preds.reshape(-1, 2).float() - targs.reshape(-1, 2).float()) * half).norm(dim=1)
    return {
        "pixel_error": round(d.mean().item(), 3),
        "pixel_error_p90": round(d.quantile(0.9).item(), 3),
    }


def budget_run(task: str, seconds: float, folder: Path, args: argparse.Namespace) -> dict:
    """One budgeted run: data, learner, fine_tune_budget, scored predictions and the export, all
    in the budget."""
    import torch

    from imageblocks.learn.budget import BudgetError
    from imageblocks.learn.timed import Budget
    from imageblocks.recipes.fit import make_learner

    torch.manual_seed(0)
    budget = Budget(seconds).start()
    learn = make_learner(dataloaders(task, folder, args), "efficientnet_lite0")
    try:
        report = learn.fine_tune_budget(budget, report_passes=1, log=side.log)
    except BudgetError as e:
        return {"budget_s": seconds, "error": str(e)}
    preds, targs = learn.get_preds()
    preds, targs = preds.cpu(), targs.cpu()
    if task == "multilabel":
        quality = side.multilabel_metrics(preds, targs)
    else:
        quality = point_errors(preds, targs)
    with tempfile.TemporaryDirectory() as tmp:  # the export is part of the budget, as in the CLI
        learn.export(Path(tmp) / "model")
        actual = budget.used()
    plan = report["plan"]
    planned = plan["measured_s"] + sum(p["planned_s"] for p in plan["phases"]) + plan["reserve_s"]
    return {
        "budget_s": seconds,
        "planned_s": round(planned, 1),
        "actual_s": round(actual, 1),
        "off_pct": round(100 * (actual - seconds) / seconds, 2),
        "plan": plan,
        "phases": report["phases"],
        **quality,
    }


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables, one a task."""
    lines = [
        f"# What a time budget buys ({result['machine']}, {result['date']})",
        "",
        f"`{result['command']}`"
        + (" — QUICK: 512/256 items, short budgets" if result["quick"] else ""),
    ]
    if result.get("cpu"):
        cpu = result["cpu"]
        lines += [
            "",
            f"CPU: {cpu['model']}, {cpu_features.code_path(cpu)}; imageblocks computes in "
            f"{result['compute_dtype']}, fastai in float32",
        ]
    for task in TASKS:
        rows = result["runs"].get(task, [])
        fa = result["fastai"].get(task)
        lines += ["", f"## {task}", ""]
        if fa:
            lines.append(
                f"fastai's book recipe: {fa['wall_s']} s, "
                + ", ".join(f"{k} {v}" for k, v in fa.items() if k != "wall_s")
            )
            lines.append("")
        cols = (
            ("map", "acc_multi_best", "f1_macro")
            if task == "multilabel"
            else ("pixel_error", "pixel_error_p90")
        )
        lines.append(
            "| budget (s) | planned (s) | actual (s) | off | final size | "
            + " | ".join(cols)
            + " |"
        )
        lines.append("|" + " --- |" * (5 + len(cols)))
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['budget_s']:.0f} | - | - | - | {r['error']} |")
                continue
            size = "x".join(map(str, r["plan"]["phases"][-1]["size"]))
            lines.append(
                f"| {r['budget_s']:.0f} | {r['planned_s']} | {r['actual_s']} | {r['off_pct']:+.1f}% "
                f"| {size} | " + " | ".join(str(r.get(c)) for c in cols) + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    sleep_idle_threads()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512/256 items a task, a 60 s budget")
    ap.add_argument("--budgets", nargs="+", help="durations (90s, 2m); 'fastai': its wall time")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--fastai-result", help="fastai_run.py's JSON instead of running it")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--merge", action="store_true", help="keep earlier runs of other budgets")
    ap.add_argument("--isa", default="native", choices=list(cpu_features.ISA_ENV))
    args = ap.parse_args()
    env = cpu_features.isa_env(args.isa)
    if env != dict(os.environ):  # the caps are read once, when torch starts: start again with them
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    keep_freed_memory()

    from imageblocks.data.sources import URLs, untar_data
    from imageblocks.utils import parse_duration

    folders = {
        "multilabel": untar_data(URLs.DEMO_MULTILABEL),
        "points": untar_data(URLs.DEMO_POINTS),
    }
    budgets = args.budgets or (QUICK_BUDGETS if args.quick else FULL_BUDGETS)
    fastai = {}
    if "fastai" in budgets or args.fastai_result:
        found = fastai_result(args, folders["multilabel"], folders["points"])
        fastai = {t: fastai_summary(t, found) for t in args.tasks if found.get(t)}
    import torch

    from imageblocks.learn.precision import autocast_dtype

    name = side.machine_name(args.device) + ("" if args.isa == "native" else f"-{args.isa}")
    result = {
        "machine": name,
        "isa": args.isa,
        "cpu": cpu_features.cpu_record(),
        "compute_dtype": side.dtype_name(autocast_dtype("auto", torch.device(args.device))),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/budget.py " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "fastai": fastai,
        "runs": {},
    }
    seconds_of = {
        task: [fastai[task]["wall_s"] if b == "fastai" else parse_duration(b) for b in budgets]
        for task in args.tasks
    }
    if args.merge:  # keep an earlier result's runs, but for the budgets run again now
        earlier = side.results_file("budget-", name, args.quick, ".json")
        if earlier.is_file():
            old = json.loads(earlier.read_text())
            result["runs"] = {
                t: [r for r in runs if r["budget_s"] not in seconds_of.get(t, ())]
                for t, runs in old.get("runs", {}).items()
            }
            result["fastai"] = {**old.get("fastai", {}), **fastai}
            result["command"] = old.get("command", "") + " ; " + result["command"]
    for task in args.tasks:
        runs = result["runs"].setdefault(task, [])
        for seconds in seconds_of[task]:
            side.log(f"== {task}: budget {seconds:.0f} s")
            runs.append(budget_run(task, seconds, folders[task], args))
            runs.sort(key=lambda r: r["budget_s"])
            side.log(
                json.dumps(
                    {
                        k: v
                        for k, v in next(r for r in runs if r["budget_s"] == seconds).items()
                        if k not in ("plan", "phases")
                    }
                )
            )
            md = side.write_results("budget-", name, args.quick, result, markdown(result))
    print(md)


if __name__ == "__main__":
    main()
