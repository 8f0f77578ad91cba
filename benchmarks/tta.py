"""What test-time augmentation changes on the demo validation sets, and what it costs.

The book's two chapter-6 recipes (EfficientNet-Lite0, bundled ImageNet weights) are trained
briefly on the demo data (512 training images; multi-label `fine_tune(1, freeze_epochs=1)`, points
`fine_tune(3, 1e-2)`), then the validation set (256 images; person 13's 150) is predicted with `get_preds` and with `learn.tta(n=4)`: mAP for
multi-label, the mean error in pixels of the 640x480 frame for points, and the wall time of each.
For points it also measures fastai's way, the augmented passes averaged where the model put them
in each warped image (not mapped back). Writes benchmarks/results/tta.json and tta.md.

    .venv/bin/python benchmarks/tta.py            # both recipes
    .venv/bin/python benchmarks/tta.py points     # one of them again, the other's result kept
"""

from __future__ import annotations

import datetime
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch
from run import QUICK_TRAIN, QUICK_VALID, log, machine_name, multilabel_metrics, pixel_error

from imageblocks.data.sources import URLs, get_image_files, untar_data
from imageblocks.learn.learner import Learner, vision_learner
from imageblocks.recipes.book import multilabel_block, points_block
from imageblocks.runtime import keep_freed_memory

ROOT = Path(__file__).resolve().parent
N_TTA = 4


def seeded(seed: int = 0) -> None:
    """The same random draws for every run."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def timed(f: Callable[[], Any]) -> tuple[Any, float]:
    """`f()` and its wall time in seconds."""
    t0 = time.perf_counter()
    out = f()
    return out, round(time.perf_counter() - t0, 2)


def costs(learn: Learner) -> tuple[tuple, tuple, dict[str, float]]:
    """The plain and the TTA predictions of the validation set, and their wall times."""
    learn.get_preds()  # warm-up: workers started, validation samples cached
    plain, plain_s = timed(learn.get_preds)
    seeded()
    augmented, tta_s = timed(lambda: learn.tta(n=N_TTA))
    times = {"get_preds_s": plain_s, "tta_s": tta_s, "tta_cost": round(tta_s / plain_s, 2)}
    return plain, augmented, times


def multilabel() -> dict[str, Any]:
    """The PASCAL recipe: mAP with and without TTA."""
    pascal = untar_data(URLs.DEMO_MULTILABEL)
    df = pd.read_csv(pascal / "train.csv")
    train, valid = df[~df["is_valid"]].head(QUICK_TRAIN), df[df["is_valid"]].head(QUICK_VALID)
    df = pd.concat([train, valid]).sort_index().reset_index(drop=True)
    dls = multilabel_block(pascal).dataloaders(df, bs=64)
    learn = vision_learner(dls, "efficientnet_lite0")
    learn.fine_tune(1, base_lr=3e-3, freeze_epochs=1)
    (preds, targs), (tta_preds, _), times = costs(learn)
    return {
        "n_train": len(dls.train.dataset),
        "n_valid": len(dls.valid.dataset),
        "map": multilabel_metrics(preds.cpu(), targs.cpu())["map"],
        "map_tta": multilabel_metrics(tta_preds.cpu(), targs.cpu())["map"],
        **times,
    }


def points() -> dict[str, Any]:
    """The BIWI recipe: pixel error with TTA mapped back, with fastai's unaligned average, and
    without TTA."""
    biwi = untar_data(URLs.DEMO_POINTS)
    block = points_block(biwi)

    def get_items(path: Path) -> list:
        files = sorted(get_image_files(path))
        valid = [f for f in files if f.parent.name == "13"][:QUICK_VALID]
        train = [f for f in files if f.parent.name != "13"]  # every person, not the first few
        return train[:: max(1, len(train) // QUICK_TRAIN)][:QUICK_TRAIN] + valid

    block.get_items = get_items
    dls = block.dataloaders(biwi, bs=64)
    learn = vision_learner(dls, "efficientnet_lite0", y_range=(-1, 1))
    learn.fine_tune(3, base_lr=1e-2, freeze_epochs=1)
    (preds, targs), (tta_preds, _), times = costs(learn)
    centre = torch.zeros_like(targs)  # what a model that always answers "the middle" scores
    seeded()  # the same passes, averaged as fastai does: each in its own warped frame
    with mock.patch("imageblocks.learn.tta.unaugment_points", lambda p, warps, pairs: p):
        unaligned, _ = learn.tta(n=N_TTA)
    return {
        "n_train": len(dls.train.dataset),
        "n_valid": len(dls.valid.dataset),
        "pixel_error_centre": round(pixel_error(centre.cpu(), targs.cpu()), 3),
        "pixel_error": round(pixel_error(preds.cpu(), targs.cpu()), 3),
        "pixel_error_tta": round(pixel_error(tta_preds.cpu(), targs.cpu()), 3),
        "pixel_error_tta_unaligned": round(pixel_error(unaligned.cpu(), targs.cpu()), 3),
        **times,
    }


def markdown(result: dict[str, Any]) -> str:
    """The measurements as a Markdown table."""
    m, p = result["multilabel"], result["points"]
    rows = [
        ("PASCAL mAP", m["map"], m["map_tta"], "higher"),
        ("PASCAL wall time (s)", m["get_preds_s"], m["tta_s"], "lower"),
        ("BIWI mean error (px of 640x480)", p["pixel_error"], p["pixel_error_tta"], "lower"),
        ("BIWI wall time (s)", p["get_preds_s"], p["tta_s"], "lower"),
    ]
    lines = [
        f"{result['machine']}, {result['date']}, command: `{result['command']}`; "
        f"{m['n_train']} training images, {m['n_valid']} (PASCAL) and {p['n_valid']} (BIWI) "
        f"validation images; PASCAL fine_tune(1, freeze_epochs=1), BIWI fine_tune(3, 1e-2); "
        f"tta(n={N_TTA}, beta=0.25)",
        "",
        f"| measure | get_preds | tta(n={N_TTA}) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, plain, tta, better in rows:
        lines.append(f"| {label} | {plain} | {tta} | {tta / plain:.2f}x ({better} is better) |")
    lines += [
        "",
        f"BIWI with the {N_TTA} passes averaged unaligned (as fastai does): "
        f"{p['pixel_error_tta_unaligned']} px; always answering the centre of the frame: "
        f"{p['pixel_error_centre']} px. get_preds is timed warm (the validation loader's "
        "workers hold its finished samples); tta builds a loader of its own and decodes every "
        "image once more. The 2 cores were shared with other work during the "
        "run: the times are indicative, their ratio less so than on an idle machine.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run both recipes (or the one named: `multilabel`, `points`) and write the results."""
    keep_freed_memory()
    only = sys.argv[1:]
    out = ROOT / "results"
    result: dict[str, Any] = json.loads((out / "tta.json").read_text()) if only else {}
    result.update(
        machine=machine_name("cpu"),
        date=datetime.date.today().isoformat(),
        command="python benchmarks/tta.py",
        threads=torch.get_num_threads(),
        n_tta=N_TTA,
    )
    for name, recipe in (("multilabel", multilabel), ("points", points)):
        if not only or name in only:
            seeded()
            result[name] = recipe()
            log(name, result[name])
    (out / "tta.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "tta.md").write_text(markdown(result))
    sys.stdout.write(markdown(result))


if __name__ == "__main__":
    main()
