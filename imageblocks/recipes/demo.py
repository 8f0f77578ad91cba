"""The demo run: both demo datasets previewed (summaries, batches), both models trained on a CPU.

The demo trains each model to a time budget (`DEMO_BUDGET`, 2 minutes on a CPU; the planner
picks sizes and epochs) on 500 of the 1250 multi-label validation images, and key points from
a quarter of the book's 240x320 (the planner may grow it), where four times more steps fit in
the same time (measured on 2 cores: 120x160 with fine_tune(1) barely beat guessing the centre).
With `budget='none'` it runs the fixed short recipe instead.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from imageblocks.learn.timed import Budget
from imageblocks.recipes.book import demo_dataloaders, multilabel_block, points_block
from imageblocks.recipes.fit import fit_and_export, make_learner, save_figure
from imageblocks.recipes.reports import describe_data, summary_lines
from imageblocks.recipes.train import DEFAULT_ARCH
from imageblocks.seeding import set_seed
from imageblocks.utils import atomic_write

__all__ = [
    "DEMO_ARCH",
    "DEMO_BUDGET",
    "DEMO_POINTS_SIZE",
    "DEMO_VALID_IMAGES",
    "demo_preview",
    "demo_train",
    "first_test_image",
    "next_steps",
    "run_demo",
]

DEMO_ARCH = DEFAULT_ARCH
DEMO_VALID_IMAGES = 500
DEMO_POINTS_SIZE = (60, 80)
DEMO_BUDGET = "2m"  # per model: a convincing model while a new user reads the output


def demo_preview(out: Path, bs: int = 64, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Generate both demo datasets (first use), write each DataBlock's summary and a picture of a
    training batch of each under `out`; the two dataset folders (multi-label, key points)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dls_multi, dls_points, pascal, biwi = demo_dataloaders(bs=bs)
    log(f"demo datasets ready in {time.perf_counter() - t0:.1f}s:\n  {pascal}\n  {biwi}")
    df = pd.read_csv(pascal / "train.csv")
    for name, dblock, source in (
        ("multilabel", multilabel_block(pascal), df),
        ("points", points_block(biwi), biwi),
    ):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            dblock.summary(source)
        atomic_write(out / f"summary_{name}.txt", buf.getvalue())
    xb, yb = dls_multi.one_batch()
    log(
        f"multi-label: {len(dls_multi.train.dataset)} train / {len(dls_multi.valid.dataset)} valid "
        f"images, {len(dls_multi.vocab)} classes {list(dls_multi.vocab)}"
    )
    log(f"  batch: x {tuple(xb.shape)}, y {tuple(yb.shape)}")
    xb, yb = dls_points.one_batch()
    log(
        f"key points: {len(dls_points.train.dataset)} train / "
        f"{len(dls_points.valid.dataset)} valid images"
    )
    log(
        f"  batch: x {tuple(xb.shape)}, y {tuple(yb.shape)}, "
        f"points in [{yb.min():.2f}, {yb.max():.2f}]"
    )
    save_figure(dls_multi.show_batch(nrows=1, ncols=3), out / "show_batch_multilabel.png")
    save_figure(dls_points.show_batch(max_n=9, figsize=(8, 6)), out / "show_batch_points.png")
    log(f"wrote {out}/summary_*.txt and {out}/show_batch_*.png")
    return pascal, biwi


def demo_train(
    task: str,
    out: Path,
    folder: Path,
    log: Callable[[str], None] = print,
    budget: str | None = DEMO_BUDGET,
) -> dict[str, Any]:
    """Train one demo model ('multilabel' from the PASCAL-style `folder`, 'points' from the
    BIWI-style one) to a time `budget` (None or 'none': the fixed reduced recipe) on the CPU,
    export it to `out`; its metrics."""
    timer = Budget(budget).start() if budget and budget.lower() != "none" else None
    set_seed(42)
    if task == "multilabel":
        log(f"\n== training the multi-label model ({DEMO_ARCH}, 128 px) ==")
        df = pd.read_csv(folder / "train.csv")
        valid = df[df["is_valid"]].iloc[:DEMO_VALID_IMAGES]
        df = pd.concat([df[~df["is_valid"]], valid]).reset_index(drop=True)
        dls = multilabel_block(folder, size=128).dataloaders(df, bs=64, num_workers=0)
        epochs, freeze_epochs = 2, 2
    elif task == "points":
        h, w = DEMO_POINTS_SIZE
        log(f"\n== training the key-point model ({DEMO_ARCH}, {h}x{w}) ==")
        dls = points_block(folder, size=DEMO_POINTS_SIZE).dataloaders(folder, bs=32, num_workers=0)
        epochs, freeze_epochs = 4, 1
    else:
        raise ValueError(f"the demo trains 'multilabel' or 'points', not {task!r}")
    log(f"data: {describe_data(dls)}")
    learn = make_learner(dls, DEMO_ARCH)
    lr = None if timer is not None else 1e-2  # a budget runs its own LR range test
    return fit_and_export(learn, out, epochs, freeze_epochs, lr, log=log, budget=timer)


def first_test_image(pascal: Path) -> Path:
    """A demo test image for the suggested `predict` command."""
    files = sorted((pascal / "test").glob("*.jpg"))
    return files[0] if files else pascal / "test" / "IMAGE.jpg"


def next_steps(out: Path, pascal: Path, biwi: Path, trained: bool) -> list[str]:
    """What to look at after the demo, and the commands to try next."""
    lines = [
        "\n== what to look at ==",
        f"  {out}/show_batch_multilabel.png, {out}/show_batch_points.png: training batches",
        f"  {out}/summary_*.txt: every step of the two DataBlocks",
    ]
    if trained:
        test, frame = first_test_image(pascal), sorted((biwi / "13").glob("*_rgb.jpg"))[0]
        lines += [
            f"  {out}/multilabel_model/: results.png (validation: truth vs prediction), loss.png, "
            "thresholds.png, metrics.json",
            f"  {out}/points_model/: results.png (validation: truth vs prediction), loss.png, "
            "metrics.json",
            "\n== next ==",
            f"  imageblocks predict {out}/multilabel_model {test}",
            f"  imageblocks predict {out}/points_model {frame} --json",
            f"  imageblocks evaluate {out}/multilabel_model --csv {pascal}/test.csv "
            f"--images {pascal}/test",
            f"  imageblocks serve {out}/multilabel_model        (then open http://127.0.0.1:8000)",
            f"  imageblocks export-onnx {out}/multilabel_model {out}/multilabel_onnx",
        ]
    return lines + [
        f"  imageblocks train multilabel --csv {pascal}/train.csv --images {pascal}/train "
        "--out my_model",
        f"  imageblocks train points --preset biwi --images {biwi} --size 120x160 --out my_points",
    ]


def run_demo(
    out: Path,
    bs: int = 64,
    train: bool = True,
    log: Callable[[str], None] = print,
    budget: str | None = DEMO_BUDGET,
) -> dict[str, dict[str, Any]]:
    """The whole demo: `demo_preview`, then (with `train`) both models, each with its summary
    (each trained to `budget`: see `demo_train`), and the next steps; the metrics of each."""
    start = time.perf_counter()
    pascal, biwi = demo_preview(out, bs=bs, log=log)
    results = {}
    if train:
        for task, folder in (("multilabel", pascal), ("points", biwi)):
            model_dir = out / f"{task}_model"
            results[task] = demo_train(task, model_dir, folder, log=log, budget=budget)
            for line in summary_lines(results[task], model_dir):
                log(line)
    for line in next_steps(out, pascal, biwi, train):
        log(line)
    log(f"\ndemo done in {time.perf_counter() - start:.0f}s")
    return results
