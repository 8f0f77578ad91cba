"""Single-image `learn.predict` latency, imageblocks against fastai, on the CPU.

Both build the book's PASCAL learner on the demo data (EfficientNet-Lite0, untrained head: the
latency does not depend on the weights) and time `learn.predict(path)` 20 times after 3
warm-ups. Writes benchmarks/results/predict-latency.json.

    .venv/bin/python benchmarks/predict_latency.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
FASTAI_PY = ROOT.parent / ".venv-fastai" / "bin" / "python"

FASTAI_CODE = r"""
import json, statistics, sys, time
import pandas as pd
from fastai.vision.all import *
path = Path(sys.argv[1]); df = pd.read_csv(path/'train.csv'); df['labels'] = df['labels'].fillna('')
def get_x(r): return path/'train'/r['fname']
def get_y(r): return [l for l in r['labels'].split(' ') if l]
def splitter(df): return df.index[~df['is_valid']].tolist(), df.index[df['is_valid']].tolist()
dls = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), splitter=splitter, get_x=get_x, get_y=get_y,
                item_tfms=RandomResizedCrop(128, min_scale=0.35),
                batch_tfms=Normalize.from_stats([0.5]*3, [0.5]*3)).dataloaders(df, bs=64)
learn = vision_learner(dls, 'tf_efficientnet_lite0', pretrained=False, normalize=False)
files = [get_x(r) for _, r in df[df['is_valid']].head(23).iterrows()]
times = []
with learn.no_bar():
    for i, f in enumerate(files):
        t0 = time.perf_counter(); learn.predict(f); dt = time.perf_counter() - t0
        if i >= 3: times.append(dt)
print(json.dumps({"median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000}))
"""


def imageblocks_latency(pascal: Path) -> dict:
    """imageblocks' `predict` on the same learner and files."""
    import pandas as pd

    from imageblocks.learn.learner import vision_learner
    from imageblocks.recipes.book import multilabel_block

    df = pd.read_csv(pascal / "train.csv")
    dls = multilabel_block(pascal).dataloaders(df, bs=64)
    learn = vision_learner(dls, "efficientnet_lite0")
    files = [pascal / "train" / f for f in df[df["is_valid"]]["fname"].head(23)]
    times = []
    for i, f in enumerate(files):
        t0 = time.perf_counter()
        learn.predict(f)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000}


def main() -> None:
    from imageblocks.runtime import sleep_idle_threads

    sleep_idle_threads()  # as the CLI does (both sides' OpenMP threads): see imageblocks/runtime.py
    from imageblocks.data.sources import URLs, untar_data

    pascal = untar_data(URLs.DEMO_MULTILABEL)
    ours = imageblocks_latency(pascal)
    res = subprocess.run(
        [str(FASTAI_PY), "-c", FASTAI_CODE, str(pascal)], capture_output=True, text=True, check=True
    )
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    out = {
        "imageblocks": ours,
        "fastai": theirs,
        "ratio": round(ours["median_ms"] / theirs["median_ms"], 3),
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "predict-latency.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
