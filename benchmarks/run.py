"""Side-by-side benchmark: fastai and imageblocks through the book's two chapter-6 recipes.

Same machine, data (the demo datasets), backbone and weights (EfficientNet-Lite0, bundled
ImageNet weights), image sizes, batch size, epochs and learning rates; each library runs in its
own process (fastai in its own virtualenv, `make fastai-env`), one after the other. Measures
loader throughput, fine_tune wall time and training throughput, final quality, single-image
predict latency, batch inference throughput and peak memory. Writes
`benchmarks/results/<machine>.json` and `.md`.

    .venv/bin/python benchmarks/run.py            # full recipes (about 40 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/run.py --quick    # 512/256 items, 1+1 epochs: a regression check
    .venv/bin/python benchmarks/run.py --isa avx2 # an AVX2-only CPU's code paths, in float32
    .venv/bin/python benchmarks/run.py --tiny     # 64/32 items: the benchmark runs (numbers mean nothing)

Every result records the CPU (model, class, AVX2 / AVX-512 / BF16 / AMX flags), the instruction
set ATen and oneDNN actually used in each side's process, and the precision each library
computed in. `--isa avx2` runs both sides with PyTorch capped to AVX2 (`ATEN_CPU_CAPABILITY`,
`ONEDNN_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`; see `cpu_features.py`) and imageblocks in float32,
as on a laptop without AVX-512; its results go to `<machine>-avx2[-quick].json`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from imageblocks.runtime import keep_freed_memory, sleep_idle_threads

try:
    import cpu_features  # run as a script: this folder is on sys.path
    import memwatch
except ImportError:  # imported as benchmarks.run (the tests)
    from benchmarks import cpu_features, memwatch

ROOT = Path(__file__).resolve().parent
FASTAI_PY = ROOT.parent / ".venv-fastai" / "bin" / "python"
QUICK_TRAIN, QUICK_VALID = 512, 256
TINY_TRAIN, TINY_VALID = 64, 32  # --tiny: checks that the benchmark runs (gpu_check's dry run)
BIWI_FRAME = (640, 480)


def log(*args: Any) -> None:
    """Progress on stderr (stdout carries the JSON result)."""
    print(*args, file=sys.stderr, flush=True)


def loader_rate(dl: Any) -> float:
    """Images per second through one pass over a loader."""
    n, t0 = 0, time.perf_counter()
    for b in dl:
        n += len(b[0])
    return n / (time.perf_counter() - t0)


def multilabel_metrics(preds: Any, targs: Any) -> dict[str, float]:
    """accuracy_multi at 0.2 and at the best of 29 thresholds, macro F1 at 0.5, mAP (sklearn)."""
    import numpy as np
    import torch
    from sklearn.metrics import average_precision_score, f1_score

    from imageblocks.learn.metrics import accuracy_multi

    acc_02 = accuracy_multi(preds, targs, thresh=0.2, sigmoid=False).item()
    xs = torch.linspace(0.05, 0.95, 29)
    accs = [accuracy_multi(preds, targs, thresh=float(x), sigmoid=False).item() for x in xs]
    best = int(np.argmax(accs))
    y, p = targs.numpy().astype(int), preds.numpy()
    f1 = f1_score(y, (p > 0.5).astype(int), average="macro", zero_division=0)
    present = y.sum(0) > 0
    m_ap = average_precision_score(y[:, present], p[:, present], average="macro")
    return {
        "acc_multi_0_2": round(acc_02, 5),
        "best_thresh": round(float(xs[best]), 4),
        "acc_multi_best": round(accs[best], 5),
        "f1_macro": round(float(f1), 5),
        "map": round(float(m_ap), 5),
        "map_classes": int(present.sum()),
    }


def pixel_error(preds: Any, targs: Any) -> float:
    """Mean distance in pixels of the 640x480 frame between points in [-1, 1]."""
    import torch

    size = torch.tensor(BIWI_FRAME, dtype=torch.float32)
    p = (preds.reshape(-1, 2).float() + 1) / 2 * size
    t = (targs.reshape(-1, 2).float() + 1) / 2 * size
    return (p - t).norm(dim=1).mean().item()


def peak_memory_mb(device: str) -> dict[str, float]:
    """Peak resident memory of this process and its finished children (and CUDA)."""
    import torch

    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = {
        "rss_self": round(self_mb, 1),
        "rss_children": round(kids_mb, 1),
        "rss_total": round(self_mb + kids_mb, 1),
    }
    if device.startswith("cuda"):
        out["cuda_max_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def timed_fine_tune(learn: Any, epochs: int, base_lr: float, freeze_epochs: int) -> dict[str, Any]:
    """`fine_tune` with its wall time, training-only time and epoch rows."""
    from imageblocks.learn.callbacks import Callback

    class TrainTimer(Callback):
        """Seconds spent in training passes (validation excluded) and the images they saw."""

        def __init__(self) -> None:
            self.seconds, self.images, self.rows, self.t0 = 0.0, 0, [], 0.0

        def before_epoch(self, learn: Any) -> None:
            self.t0 = time.perf_counter()

        def after_batch(self, learn: Any) -> None:
            self.images += learn.dls.train.bs

        def after_train(self, learn: Any) -> None:
            self.seconds += time.perf_counter() - self.t0

        def after_epoch(self, learn: Any) -> None:
            self.rows.append(
                [round(v, 5) if v is not None else None for v in learn.recorder.values[-1]]
            )

    tt = TrainTimer()
    learn.cbs.append(tt)
    t0 = time.perf_counter()
    learn.fine_tune(epochs, base_lr=base_lr, freeze_epochs=freeze_epochs)
    total = time.perf_counter() - t0
    learn.cbs.remove(tt)
    return {
        "fine_tune_s": round(total, 2),
        "train_img_s": round(tt.images / total, 2),
        "history": tt.rows,
    }


def measure_inference(learn: Any, files: list, n_predict: int) -> dict[str, float]:
    """Median `learn.predict(path)` latency after 3 warm-ups; `get_preds` images/s on `files`."""
    times = []
    for i in range(3 + n_predict):
        t0 = time.perf_counter()
        learn.predict(files[i % len(files)])
        if i >= 3:
            times.append(time.perf_counter() - t0)
    dl = learn.dls.test_dl(files)
    t0 = time.perf_counter()
    preds, _ = learn.get_preds(dl=dl)
    return {
        "latency_ms_median": round(statistics.median(times) * 1000, 2),
        "n_calls": n_predict,
        "batch_img_s": round(len(preds) / (time.perf_counter() - t0), 2),
        "batch_images": len(preds),
    }


def dtype_name(dtype: Any) -> str:
    """'bfloat16', 'float16' or 'float32' (None: no autocast)."""
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def warm_page_cache(*folders: Path) -> int:
    """Read every file under `folders` once, untimed, so each side's first pass starts with the
    same files in the page cache (the host may evict cold pages between sides: the first side
    would read from disk, the second from memory); returns the bytes read."""
    n = 0
    for folder in folders:
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                n += len(f.read_bytes())
    return n


def split_sizes(args: argparse.Namespace) -> tuple[int, int]:
    """(train, valid) items per recipe with --quick or --tiny."""
    return (TINY_TRAIN, TINY_VALID) if args.tiny else (QUICK_TRAIN, QUICK_VALID)


def imageblocks_side(args: argparse.Namespace) -> dict[str, Any]:
    """Run both recipes with imageblocks; the same measurements as fastai_run.py."""
    keep_freed_memory()  # as the first fit would, but before the loaders' workers are forked
    import numpy as np
    import torch

    import imageblocks
    from imageblocks.learn.precision import autocast_dtype

    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    result: dict[str, Any] = {
        "library": "imageblocks",
        "version": imageblocks.__version__,
        "torch": torch.__version__,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "arch": "efficientnet_lite0",
        "quick": args.quick,
        "precision": args.precision,
        "compute_dtype": dtype_name(autocast_dtype(args.precision, torch.device(args.device))),
        "channels_last": args.channels_last,
        "cpu": cpu_features.cpu_record(),
        "loader": {},
    }
    opts = {"precision": args.precision, "channels_last": args.channels_last}
    pascal, biwi = Path(args.pascal), Path(args.biwi)

    watch = memwatch.MemoryWatch().start()
    if "multilabel" in args.recipes:
        with watch.phase("multilabel"):
            multilabel_side(args, result, pascal, opts)
    if "points" in args.recipes:
        points_side(args, result, biwi, opts, watch)
    result["memory_mb"] = {**peak_memory_mb(args.device), **watch.stop()}
    return result


def multilabel_side(
    args: argparse.Namespace, result: dict[str, Any], pascal: Path, opts: dict[str, Any]
) -> None:
    """The PASCAL recipe: loader, fine_tune, quality, predict latency and batch inference."""
    import pandas as pd

    from imageblocks.learn.learner import vision_learner
    from imageblocks.learn.metrics import accuracy_multi
    from imageblocks.recipes.book import multilabel_block

    log("== multi-label")
    df = pd.read_csv(pascal / "train.csv")
    if args.quick:
        n_train, n_valid = split_sizes(args)
        train, valid = df[~df["is_valid"]].head(n_train), df[df["is_valid"]].head(n_valid)
        df = pd.concat([train, valid]).sort_index().reset_index(drop=True)
    dls = multilabel_block(pascal).dataloaders(
        df, bs=64, num_workers=args.workers, device=args.device
    )
    result["loader"]["multilabel_train_img_s"] = round(loader_rate(dls.train), 2)
    result["loader"]["multilabel_valid_img_s"] = round(loader_rate(dls.valid), 2)
    learn = vision_learner(
        dls, "efficientnet_lite0", metrics=partial(accuracy_multi, thresh=0.2), **opts
    )
    freeze_epochs, epochs = (1, 1) if args.quick else (4, 3)
    out: dict[str, Any] = {
        "n_train": len(dls.train.dataset),
        "n_valid": len(dls.valid.dataset),
        "epochs": {"freeze_epochs": freeze_epochs, "epochs": epochs},
    }
    out.update(timed_fine_tune(learn, epochs, 3e-3, freeze_epochs))
    preds, targs = learn.get_preds()
    out.update(multilabel_metrics(preds.cpu(), targs.cpu()))
    result["multilabel"] = out
    log("multilabel", {k: v for k, v in out.items() if k != "history"})
    files = [pascal / "train" / f for f in df[df["is_valid"]]["fname"]]
    n_predict = 3 if args.tiny else 10 if args.quick else 20
    result["predict"] = measure_inference(learn, files, n_predict)
    log("predict", result["predict"])


def points_side(
    args: argparse.Namespace,
    result: dict[str, Any],
    biwi: Path,
    opts: dict[str, Any],
    watch: memwatch.MemoryWatch,
) -> None:
    """The BIWI recipe: loader, lr_find, fine_tune and quality."""
    from imageblocks.data.sources import get_image_files
    from imageblocks.learn.learner import vision_learner
    from imageblocks.recipes.book import points_block

    log("== key points")
    block = points_block(biwi)
    if args.quick:
        n_train, n_valid = split_sizes(args)

        def get_items(path: Path) -> list:
            files = sorted(get_image_files(path))
            valid = [f for f in files if f.parent.name == "13"][:n_valid]
            return [f for f in files if f.parent.name != "13"][:n_train] + valid

        block.get_items = get_items
    dls = block.dataloaders(biwi, bs=64, num_workers=args.workers, device=args.device)
    result["loader"]["points_train_img_s"] = round(loader_rate(dls.train), 2)
    result["loader"]["points_valid_img_s"] = round(loader_rate(dls.valid), 2)
    learn = vision_learner(dls, "efficientnet_lite0", y_range=(-1, 1), **opts)
    t0 = time.perf_counter()
    num_it = 5 if args.tiny else 20 if args.quick else 100
    with watch.phase("points_lr_find"):
        suggestion = learn.lr_find(num_it=num_it, show_plot=False)
    out = {
        "n_train": len(dls.train.dataset),
        "n_valid": len(dls.valid.dataset),
        "lr_find_s": round(time.perf_counter() - t0, 2),
        "lr_valley": float(f"{suggestion.valley:.3g}"),
    }
    freeze_epochs, epochs = 1, (1 if args.quick else 3)
    out["epochs"] = {"freeze_epochs": freeze_epochs, "epochs": epochs}
    with watch.phase("points_fine_tune"):
        out.update(timed_fine_tune(learn, epochs, 1e-2, freeze_epochs))
        out["valid_mse"] = round(float(learn.validate()[0]), 6)
        preds, targs = learn.get_preds()
    out["pixel_error"] = round(pixel_error(preds.cpu(), targs.cpu()), 3)
    result["points"] = out
    log("points", {k: v for k, v in out.items() if k != "history"})


def machine_name(device: str) -> str:
    """cpu<cores>-<model>-<CPU class> (as `cpu_features.machine_name`), or the GPU's name."""
    if device.startswith("cuda"):
        import torch

        return "gpu-" + torch.cuda.get_device_name()
    return cpu_features.machine_name()


ROWS = [
    ("loader", "multilabel_train_img_s", "loader, PASCAL recipe, train epoch (img/s)", "higher"),
    ("loader", "multilabel_valid_img_s", "loader, PASCAL recipe, valid epoch (img/s)", "higher"),
    ("loader", "points_train_img_s", "loader, BIWI recipe, train epoch (img/s)", "higher"),
    ("loader", "points_valid_img_s", "loader, BIWI recipe, valid epoch (img/s)", "higher"),
    ("multilabel", "fine_tune_s", "PASCAL fine_tune(3, freeze_epochs=4) wall time (s)", "lower"),
    ("multilabel", "train_img_s", "PASCAL training throughput (img/s)", "higher"),
    ("multilabel", "acc_multi_0_2", "PASCAL accuracy_multi at 0.2", "higher"),
    ("multilabel", "acc_multi_best", "PASCAL accuracy_multi at the best threshold", "higher"),
    ("multilabel", "f1_macro", "PASCAL macro F1 at 0.5", "higher"),
    ("multilabel", "map", "PASCAL mAP", "higher"),
    ("points", "lr_find_s", "BIWI lr_find wall time (s)", "lower"),
    ("points", "fine_tune_s", "BIWI fine_tune(3, 1e-2) wall time (s)", "lower"),
    ("points", "train_img_s", "BIWI training throughput (img/s)", "higher"),
    ("points", "valid_mse", "BIWI validation MSE", "lower"),
    ("points", "pixel_error", "BIWI mean error (pixels of 640x480)", "lower"),
    ("predict", "latency_ms_median", "predict() latency, one image (ms)", "lower"),
    ("predict", "batch_img_s", "batch inference (img/s)", "higher"),
    ("memory_mb", "rss_total", "peak RSS, process + workers (MB)", "lower"),
    ("memory_mb", "multilabel_pss_mb", "peak PSS, process + workers, PASCAL recipe (MB)", "lower"),
    (
        "memory_mb",
        "points_lr_find_pss_mb",
        "peak PSS, process + workers, BIWI lr_find (MB)",
        "lower",
    ),
    (
        "memory_mb",
        "points_fine_tune_pss_mb",
        "peak PSS, process + workers, BIWI fine_tune (MB)",
        "lower",
    ),
]


def precision_label(side: dict[str, Any]) -> str:
    """'float32', or 'bfloat16 (auto)': the dtype a side computed in and what it was asked for."""
    dtype, asked = side.get("compute_dtype", "?"), side.get("precision")
    same = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(asked) == dtype
    return f"{dtype} ({asked})" if asked and not same else dtype


def markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table: imageblocks / fastai ratio per row, after the CPU and
    code path each side ran on and the precision it computed in."""
    ours, theirs = result["imageblocks"], result["fastai"]
    cpu = ours.get("cpu") or theirs.get("cpu") or {}
    flags = ", ".join(f for f, on in cpu.get("flags", {}).items() if on) or "unknown"
    lines = [
        f"{result['machine']}, {result['mode']} run, {result['date']}, command: `{result['command']}`",
        "",
        f"CPU: {cpu.get('model', '?')}, class {cpu.get('class', '?')} (flags: {flags}); "
        f"ISA setting `--isa {result.get('isa', 'native')}`",
        "",
        "| measure | imageblocks | fastai | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| code path (ATen / oneDNN) | {path_cell(ours)} | {path_cell(theirs)} | |",
        f"| precision | {precision_label(ours)} | {precision_label(theirs)} | |",
    ]
    for section, key, label, better in ROWS:
        a, b = ours.get(section, {}).get(key), theirs.get(section, {}).get(key)
        if a is None:
            continue
        ratio = f"{a / b:.2f}x ({better} is better)" if b else "n/a"
        lines.append(f"| {label} | {a} | {'n/a' if b is None else b} | {ratio} |")
    if theirs.get("skipped"):
        lines += ["", f"fastai's side did not run: {theirs['skipped']}"]
    return "\n".join(lines) + "\n"


def path_cell(side: dict[str, Any]) -> str:
    """'AVX2 / Intel AVX2': the instruction sets a side's process used (from its `cpu` record)."""
    cpu = side.get("cpu") or {}
    return f"{cpu.get('aten_capability', '?')} / {cpu.get('onednn_isa') or '?'}"


def side_env(isa: str) -> dict[str, str]:
    """The environment of both sides' processes for `--isa isa` (see cpu_features.ISA_ENV)."""
    return cpu_features.isa_env(isa)


def side_precision(isa: str, precision: str) -> str:
    """imageblocks' precision for `--isa`: a capped ISA has no native bfloat16, so 'auto' means
    float32 there (the Learner would pick the same from the capped capability)."""
    if precision == "auto":
        return cpu_features.ISA_PRECISION.get(isa, precision)
    return precision


def main() -> None:
    sleep_idle_threads()  # as the CLI does, before torch is imported; both sides inherit it
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512/256 items per recipe, 1+1 epochs")
    ap.add_argument(
        "--tiny", action="store_true", help="64/32 items, 1+1 epochs: the benchmark runs (smoke)"
    )
    ap.add_argument("--results", default=str(ROOT / "results"), help="folder for the results")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="imageblocks' precision (auto: bf16 where the hardware has it, as the Learner does)",
    )
    ap.add_argument(
        "--isa",
        default="native",
        choices=list(cpu_features.ISA_ENV),
        help="run both sides on this CPU class's code paths (avx2: an AVX2-only CPU's, float32)",
    )
    ap.add_argument(
        "--fastai-precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16"],
        help="fastai's precision (fp32: its default, the book's; fp16/bf16: to_fp16/to_bf16)",
    )
    ap.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="imageblocks' memory format (the Learner's default: on)",
    )
    ap.add_argument(
        "--fastai-result",
        help="reuse fastai's side from this JSON (written by an earlier run on this machine)",
    )
    ap.add_argument(
        "--recipes",
        nargs="+",
        choices=["multilabel", "points"],
        default=["multilabel", "points"],
        help="run only these recipes (multilabel includes predict)",
    )
    ap.add_argument("--side", choices=["imageblocks", "fastai", "both"], default="both")
    ap.add_argument("--fastai-python", default=str(FASTAI_PY), help="fastai's virtualenv's Python")
    ap.add_argument(
        "--fastai-optional",
        action="store_true",
        help="without fastai's environment, write imageblocks' side alone (fastai: n/a)",
    )
    ap.add_argument(
        "--side-timeout", type=float, help="seconds each side may run (a side over it fails)"
    )
    ap.add_argument("--pascal")
    ap.add_argument("--biwi")
    ap.add_argument("--out", help="write this side's JSON here (with --side)")
    args = ap.parse_args()
    args.quick = args.quick or args.tiny
    if args.side == "imageblocks" and args.out:
        res = imageblocks_side(args)
        Path(args.out).write_text(json.dumps(res, indent=2))
        return
    from imageblocks.data.sources import URLs, untar_data

    pascal, biwi = untar_data(URLs.DEMO_MULTILABEL), untar_data(URLs.DEMO_POINTS)
    work = ROOT / ".work"
    work.mkdir(exist_ok=True)
    common = [
        "--pascal",
        str(pascal),
        "--biwi",
        str(biwi),
        "--device",
        args.device,
        "--workers",
        str(args.workers),
    ] + (["--tiny"] if args.tiny else ["--quick"] if args.quick else [])
    results: dict[str, Any] = {}
    env = side_env(args.isa)
    precision = side_precision(args.isa, args.precision)
    if args.isa != "native":
        log(f"== --isa {args.isa}: {cpu_features.ISA_ENV[args.isa]}, imageblocks in {precision}")
    for side in ("imageblocks", "fastai") if args.side == "both" else (args.side,):
        out = work / f"{side}.json"
        if side == "imageblocks":
            extra = [
                "--precision",
                precision,
                "--channels-last" if args.channels_last else "--no-channels-last",
                "--recipes",
                *args.recipes,
            ]
            cmd = [
                sys.executable,
                __file__,
                "--side",
                "imageblocks",
                "--out",
                str(out),
                *common,
                *extra,
            ]
        else:
            if not Path(args.fastai_python).exists():
                missing = f"fastai's environment is missing: run `make fastai-env` first ({args.fastai_python})"
                if not args.fastai_optional:
                    sys.exit(missing)
                log(f"== fastai: skipped, {missing}")
                results[side] = {"library": "fastai", "skipped": missing}
                continue
            cmd = [
                args.fastai_python,
                str(ROOT / "fastai_run.py"),
                "--arch",
                "tf_efficientnet_lite0",
                "--precision",
                args.fastai_precision,
                "--recipes",
                *args.recipes,
                "--out",
                str(out),
                *common,
            ]
        if side == "fastai" and args.fastai_result:
            results[side] = json.loads(Path(args.fastai_result).read_text())
            log(f"== fastai: reusing {args.fastai_result}")
            continue
        log(f"== {side}: {' '.join(cmd)} ({warm_page_cache(pascal, biwi) / 2**20:.0f} MB read)")
        t0 = time.perf_counter()
        subprocess.run(
            cmd, check=True, stdout=subprocess.DEVNULL, env=env, timeout=args.side_timeout
        )
        results[side] = json.loads(out.read_text())
        results[side]["total_s"] = round(time.perf_counter() - t0, 1)
    if args.side != "both":
        print(json.dumps(results, indent=2))
        return
    name = machine_name(args.device) + ("" if args.isa == "native" else f"-{args.isa}")
    name += "-tiny" if args.tiny else ""
    result = {
        "machine": name,
        "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
        "isa": args.isa,
        "isa_env": cpu_features.ISA_ENV[args.isa],
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        **results,
    }
    md = markdown(result)
    quick = args.quick and not args.tiny
    print(
        write_results("", run_file_name(name, args.recipes), quick, result, md, Path(args.results))
    )


def run_file_name(machine: str, recipes: list[str]) -> str:
    """The results' name: the machine's, and the recipes' where a run left one out (so a run of
    one recipe does not overwrite a whole run's results)."""
    recipes = sorted(set(recipes))
    return machine if recipes == ["multilabel", "points"] else "-".join([machine, *recipes])


def results_file(
    prefix: str, name: str, quick: bool, suffix: str, folder: Path | None = None
) -> Path:
    """<folder>/<prefix><machine>[-quick]<suffix> (folder: results/)."""
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")[:60]
    folder = ROOT / "results" if folder is None else folder
    return folder / (prefix + slug + ("-quick" if quick else "") + suffix)


def write_results(
    prefix: str, name: str, quick: bool, result: dict[str, Any], md: str, folder: Path | None = None
) -> str:
    """Write <folder>/<prefix><machine>[-quick].json and .md (folder: results/); returns the
    Markdown."""
    json_file = results_file(prefix, name, quick, ".json", folder)
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(result, indent=2))
    results_file(prefix, name, quick, ".md", folder).write_text(md)
    return md


if __name__ == "__main__":
    main()
