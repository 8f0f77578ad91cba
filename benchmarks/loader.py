"""Loader throughput, imageblocks against fastai, same data, workers and machine, one run.

Images per second through one training epoch (and one validation epoch) of the book's PASCAL
recipe (RandomResizedCrop(128, min_scale=0.35), bs 64) and BIWI recipe (aug_transforms(size=
(240, 320)) + Normalize), on the demo datasets, on the CPU. Writes
benchmarks/results/loader-<machine>.json and .md.

    make bench-loader            # or: .venv/bin/python benchmarks/loader.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from imageblocks.data.sources import URLs, untar_data
from imageblocks.recipes.book import multilabel_block, points_block
from imageblocks.runtime import keep_freed_memory, sleep_idle_threads

try:
    import cpu_features  # run as a script: this folder is on sys.path
except ImportError:  # imported as benchmarks.loader
    from benchmarks import cpu_features

ROOT = Path(__file__).resolve().parent
FASTAI_PY = ROOT.parent / ".venv-fastai" / "bin" / "python"


def epoch_rate(dl, epochs: int) -> list[float]:
    """Images per second for each of `epochs` passes over `dl`."""
    rates = []
    for _ in range(epochs):
        n, t0 = 0, time.perf_counter()
        for b in dl:
            n += len(b[0])
        rates.append(n / (time.perf_counter() - t0))
    return rates


def imageblocks_rates(pascal: Path, biwi: Path, workers: int, bs: int, epochs: int) -> dict:
    """imageblocks' side: the same recipes through `imageblocks.recipes.book`."""
    df = pd.read_csv(pascal / "train.csv")
    dls = multilabel_block(pascal).dataloaders(df, bs=bs, num_workers=workers, device="cpu")
    out = {
        "multilabel": epoch_rate(dls.train, epochs),
        "multilabel_valid": epoch_rate(dls.valid, epochs),
    }
    dls = points_block(biwi).dataloaders(biwi, bs=bs, num_workers=workers, device="cpu")
    out["points"] = epoch_rate(dls.train, epochs)
    out["points_valid"] = epoch_rate(dls.valid, epochs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument(
        "--epochs", type=int, default=5, help="passes timed over each loader (the first is cold)"
    )
    args = ap.parse_args()
    # the settings training gets (see imageblocks/runtime.py); the OpenMP one reaches only the
    # fastai process (this one imported torch already), as it always did
    keep_freed_memory()
    sleep_idle_threads()
    pascal, biwi = untar_data(URLs.DEMO_MULTILABEL), untar_data(URLs.DEMO_POINTS)
    ours = imageblocks_rates(pascal, biwi, args.workers, args.bs, args.epochs)
    print("imageblocks", json.dumps(ours), flush=True)
    if not FASTAI_PY.exists():
        sys.exit(f"fastai's environment is missing: run `make fastai-env` first ({FASTAI_PY})")
    cmd = [
        str(FASTAI_PY),
        str(ROOT / "fastai_loader.py"),
        str(pascal),
        str(biwi),
        str(args.workers),
        str(args.bs),
        str(args.epochs),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    print("fastai", json.dumps(theirs), flush=True)

    rows = []
    for key, label in (
        ("multilabel", "PASCAL recipe, train epoch"),
        ("multilabel_valid", "PASCAL recipe, valid epoch"),
        ("points", "BIWI recipe, train epoch"),
        ("points_valid", "BIWI recipe, valid epoch"),
    ):
        a, b = max(ours[key]), max(theirs[key])
        a0, b0 = ours[key][0], theirs[key][0]
        rows.append(
            {
                "recipe": label,
                "imageblocks_img_s": round(a, 1),
                "fastai_img_s": round(b, 1),
                "speedup": round(a / b, 2),
                "first_epoch_imageblocks_img_s": round(a0, 1),
                "first_epoch_fastai_img_s": round(b0, 1),
                "first_epoch_speedup": round(a0 / b0, 2),
            }
        )
    name = cpu_features.machine_name()
    result = {
        "machine": name,
        "workers": args.workers,
        "bs": args.bs,
        "epochs": args.epochs,
        "torch": torch.__version__,
        "rows": rows,
        "raw": {"imageblocks": ours, "fastai": theirs},
    }
    out_dir = ROOT / "results"
    out_dir.mkdir(exist_ok=True)
    slug = "loader-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")[:60]
    (out_dir / f"{slug}.json").write_text(json.dumps(result, indent=2))
    md = [
        f"Loader throughput on {name}, {args.workers} workers, bs {args.bs}, {args.epochs} "
        "passes over each loader (images/s): the best pass (decoded images are cached after the "
        "first), and the first pass alone:",
        "",
        "| recipe | imageblocks | fastai | speed-up | first pass: imageblocks | fastai | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    md += [
        f"| {r['recipe']} | {r['imageblocks_img_s']} | {r['fastai_img_s']} | {r['speedup']}x "
        f"| {r['first_epoch_imageblocks_img_s']} | {r['first_epoch_fastai_img_s']} "
        f"| {r['first_epoch_speedup']}x |"
        for r in rows
    ]
    (out_dir / f"{slug}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
