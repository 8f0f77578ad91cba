"""The `imageblocks` command: demo, train, predict, evaluate, lr-find, export-onnx, serve (Typer).

Heavy imports (torch, pandas, matplotlib) happen inside the commands, so `--help` is instant.
Bad input (a missing file, column or model folder, an unreadable image) ends with a one-line
`error: ...` on stderr and exit code 1; set IMAGEBLOCKS_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from imageblocks.runtime import sleep_idle_threads

app = typer.Typer(
    help="imageblocks: multi-label classification and key points, the fastai book's way.",
    no_args_is_help=True,
    add_completion=False,
)
train_app = typer.Typer(
    help="Train a model from a CSV and a folder of images, and export it.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

DEMO_ARCH = "efficientnet_lite0"
# The demo trains on a CPU in a few minutes: 500 of the 1250 multi-label validation images, and
# key points at a quarter of the book's 240x320, where four times more steps fit in the same time
# (measured on 2 cores: 120x160 with fine_tune(1) barely beat always guessing the centre).
DEMO_VALID_IMAGES = 500
DEMO_POINTS_SIZE = (60, 80)
CHECKPOINT = "checkpoint.pt"


@app.callback()
def _root() -> None:
    """imageblocks: train, check, export and serve image models from the command line."""


# --- errors ---------------------------------------------------------------------------------


class CliError(Exception):
    """Bad input found by the command itself."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from imageblocks.errors import CollateError
    from imageblocks.learn.checkpoint import CheckpointError
    from imageblocks.models.backbones import WeightsUnavailableError

    return (
        CliError,
        ValueError,
        FileNotFoundError,
        CollateError,
        WeightsUnavailableError,
        CheckpointError,
    )


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    return text or type(e).__name__


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn bad-input exceptions into `error: <message>` and exit code 1."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as e:
        if os.environ.get("IMAGEBLOCKS_DEBUG") or not isinstance(e, _user_error_types()):
            raise
        typer.echo(f"error: {_one_line(e)}", err=True)
        raise typer.Exit(1) from None


# --- small helpers --------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '120x160' or '120,160' -> (120, 160) as (height, width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise CliError(
            f"--size must be N or HEIGHTxWIDTH (e.g. 128 or 120x160), not {text!r}"
        ) from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 8:
        raise CliError(
            f"--size must be N or HEIGHTxWIDTH with sides of 8 pixels or more, not {text!r}"
        )
    return values[0], values[1]


def _check_training_args(bs: int, epochs: int, freeze_epochs: int) -> None:
    if bs < 1:
        raise CliError(f"--bs must be at least 1, not {bs}")
    if epochs < 0 or freeze_epochs < 0 or epochs + freeze_epochs == 0:
        raise CliError("--epochs and --freeze-epochs must be 0 or more, and not both 0")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from imageblocks.learn import distributed

    if distributed.is_main():  # under torchrun only rank 0 writes
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


@contextlib.contextmanager
def _distributed_run() -> Iterator[None]:
    """Under torchrun: join the process group, silence ranks other than 0, leave at the end."""
    from imageblocks.learn import distributed

    if not distributed.launched():
        yield
        return
    distributed.setup()
    quiet = None if distributed.is_main() else open(os.devnull, "w")
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield
    finally:
        if quiet:
            quiet.close()
        distributed.cleanup()


def _use_agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _seed(seed: int) -> None:
    from imageblocks.seeding import set_seed

    set_seed(seed)


def _r(x: Any, digits: int = 6) -> float:
    return round(float(x), digits)


# --- metrics --------------------------------------------------------------------------------


def _raw_preds(learn: Any, dl: Any = None) -> tuple[Any, Any]:
    """Raw outputs (logits, values) and targets on the CPU, in one pass."""
    raw, targs = learn.get_preds(dl=dl, act=lambda x: x)
    return raw.float().cpu(), targs.float().cpu()


def multilabel_metrics(learn: Any, dl: Any = None, preds: Any = None) -> dict[str, Any]:
    """Loss, accuracy_multi, F1 (macro, micro) at the learner's thresholds (0.5 if none), mAP.

    `preds`: (raw outputs, targets) already computed on `dl`."""
    import torch

    from imageblocks.learn.metrics import F1ScoreMulti, accuracy_multi, mean_average_precision

    raw, targs = _raw_preds(learn, dl) if preds is None else preds
    thresh = (
        torch.as_tensor(learn.thresholds, dtype=torch.float32).cpu()
        if learn.thresholds is not None
        else torch.tensor(0.5)
    )
    return {
        "valid_loss": _r(learn.loss_func(raw, targs)),
        "accuracy_multi": _r(accuracy_multi(raw, targs, thresh=thresh)),
        "f1_macro": _r(F1ScoreMulti(thresh=thresh, average="macro")(raw, targs)),
        "f1_micro": _r(F1ScoreMulti(thresh=thresh, average="micro")(raw, targs)),
        "mAP": _r(mean_average_precision(raw, targs)),
        "n_images": len(raw),
    }


def _source_half_sizes(dl: Any) -> Any:
    """Half the width and height, in pixels of the original image, of the region each item of
    `dl` shows the model (the scale of [-1, 1] coordinates); None when unknown."""
    import torch

    from imageblocks.image import decode_image
    from imageblocks.transforms.item import source_region

    ds = getattr(dl, "dataset", None)
    dsets, idxs = getattr(ds, "dsets", None), getattr(ds, "idxs", None)
    if dsets is None or idxs is None:
        return None
    pipe = next((p for p in dsets.pipelines if p.kind == "image"), None)
    if pipe is None:
        return None
    tfms = list(getattr(ds, "item_tfms", []))
    halves = []
    for i in idxs:
        _, (w, h) = decode_image(pipe.get(dsets.items[i]), draft=(1, 1))
        x0, y0, x1, y1 = source_region(tfms, w, h)
        halves.append(((x1 - x0) / 2, (y1 - y0) / 2))
    return torch.tensor(halves, dtype=torch.float32)


def points_metrics(learn: Any, dl: Any = None) -> dict[str, Any]:
    """MSE in [-1, 1] coordinates; mean distance in pixels of the original images (and of the
    model's input), next to what always guessing the centre would give."""
    import torch

    from imageblocks.learn.metrics import mse, pixel_error
    from imageblocks.learn.onnx_export import input_size

    raw, targs = _raw_preds(learn, dl)
    preds = raw.reshape(targs.shape)
    out: dict[str, Any] = {
        "valid_loss": _r(learn.loss_func(raw, targs)),
        "mse": _r(mse(preds, targs)),
    }
    halves = _source_half_sizes(dl if dl is not None else learn.dls.valid)
    if halves is not None and len(halves) == len(targs):

        def dist(p: Any) -> float:
            diff = (p - targs).reshape(len(targs), -1, 2) * halves[:, None, :]
            return _r(diff.norm(dim=-1).mean(), 3)

        out["pixel_error"] = dist(preds)
        out["pixel_error_if_always_centre"] = dist(torch.zeros_like(targs))
    h, w = input_size(learn) or (0, 0)
    if h and w:
        out["input_pixel_error"] = _r(pixel_error(preds, targs, (w, h)), 3)
        out["input_size"] = [h, w]
    out["n_images"] = len(raw)
    return out


def _thresholds_json(learn: Any) -> dict[str, Any]:
    """The thresholds `predict` uses: one global value, or one per class."""
    vocab = [str(v) for v in learn.dls.vocab]
    if learn.thresholds is None:
        return {"global": 0.5, "per_class": None}
    values = [round(float(t), 4) for t in learn.thresholds]
    return {
        "global": values[0] if len(set(values)) == 1 else None,
        "per_class": dict(zip(vocab, values)),
    }


# --- training -------------------------------------------------------------------------------


def _history_callback() -> Any:
    """A callback keeping the losses of every fit (the recorder keeps only the last one)."""
    from imageblocks.learn.callbacks import Callback

    class LossHistory(Callback):
        def __init__(self) -> None:
            self.train: list[float] = []
            self.valid: list[tuple[int, float]] = []

        def after_batch(self, learn: Any) -> None:
            self.train.append(learn.recorder.smooth_loss)

        def after_epoch(self, learn: Any) -> None:
            values = learn.recorder.values[-1]
            if len(values) > 1 and values[1] is not None:
                self.valid.append((len(self.train), values[1]))

        def plot(self) -> Any:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(range(1, len(self.train) + 1), self.train, label="train (smoothed)")
            if self.valid:
                ax.plot(*zip(*self.valid), marker="o", label="valid")
            ax.set_xlabel("batch")
            ax.set_ylabel("loss")
            ax.set_title("loss during fine_tune (frozen, then unfrozen)")
            ax.legend()
            return fig

    return LossHistory()


def _describe_data(dls: Any) -> str:
    n_train, n_valid = len(dls.train.dataset), len(dls.valid.dataset)
    text = f"{n_train} training / {n_valid} validation images"
    if dls.vocab is not None:
        text += f", {len(dls.vocab)} classes: {' '.join(map(str, dls.vocab))}"
    return text


def fit_and_export(
    learn: Any,
    out: Path,
    epochs: int,
    freeze_epochs: int,
    lr: float | None,
    tune: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """lr_find (when `lr` is None), fine_tune, threshold tuning, export, metrics.json, plots.

    Every epoch is checkpointed to `out/checkpoint.pt` (removed once the model is exported);
    `resume` continues a killed run from it, with the learning rate that run used."""
    from imageblocks.data.blocks import task_of
    from imageblocks.learn import distributed
    from imageblocks.learn.thresholds import tune_thresholds

    out.mkdir(parents=True, exist_ok=True)
    task = task_of(learn.dls.target_block)
    checkpoint, run_file = out / CHECKPOINT, out / ".run.json"
    if resume:
        if not checkpoint.is_file():
            raise CliError(
                f"--resume: no checkpoint in {out} (a run writes {CHECKPOINT} after each epoch): "
                "run without --resume to start afresh"
            )
        if lr is None and run_file.is_file():
            lr = json.loads(run_file.read_text())["lr"]
            typer.echo(f"resuming from {checkpoint} with the killed run's learning rate {lr:.2e}")
    if lr is None:
        suggestion = learn.lr_find(show_plot=True)
        lr = float(suggestion.valley)
        typer.echo(f"lr_find: valley {lr:.2e} (used as the learning rate)")
        _save(learn.lr_find_figure, out / "lr_find.png")
    if distributed.is_main():
        run_file.write_text(json.dumps({"lr": lr}))
    history = _history_callback()
    learn.cbs.append(history)
    t0 = time.perf_counter()
    try:
        learn.fine_tune(
            epochs,
            base_lr=lr,
            freeze_epochs=freeze_epochs,
            checkpoint=checkpoint,
            resume=checkpoint if resume else None,
        )
    except KeyboardInterrupt:
        if checkpoint.is_file():
            typer.echo(
                f"interrupted: {checkpoint} holds the last completed epoch; run the same "
                "command with --resume to continue",
                err=True,
            )
        raise
    finally:
        learn.cbs.remove(history)
    train_s = time.perf_counter() - t0
    _save(history.plot(), out / "loss.png")

    metrics: dict[str, Any] = {"task": task}
    if task == "multilabel":
        raw, targs = _raw_preds(learn)
        at_half = multilabel_metrics(learn, preds=(raw, targs))
        if tune:
            report = tune_thresholds(learn, preds=(raw.sigmoid(), targs))
            _save(report.plot(), out / "thresholds.png")
            typer.echo(
                f"thresholds: global {report.global_thresh:.2f}, micro F1 {report.score_at_0_5:.4f} "
                f"at 0.5 -> {report.best_score:.4f} tuned (on the validation set)"
            )
            metrics.update(multilabel_metrics(learn, preds=(raw, targs)))
            metrics["at_0.5"] = at_half
            metrics["thresholds"] = report.as_dict()
        else:
            metrics.update(at_half)
            metrics["thresholds"] = _thresholds_json(learn)
    else:
        metrics.update(points_metrics(learn) if task == "points" else {})
    _save(learn.show_results(), out / "results.png")
    learn.export(out)
    metrics.update(
        {
            "arch": learn.model.config.get("arch"),
            "n_train": len(learn.dls.train.dataset),
            "n_valid": len(learn.dls.valid.dataset),
            "vocab": [str(v) for v in learn.dls.vocab] if learn.dls.vocab is not None else None,
            "lr": lr,
            "epochs": epochs,
            "freeze_epochs": freeze_epochs,
            "train_time_s": round(train_s, 1),
        }
    )
    if distributed.is_main():
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        checkpoint.unlink(missing_ok=True)
        run_file.unlink(missing_ok=True)
    return metrics


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    keys = ("valid_loss", "accuracy_multi", "f1_macro", "f1_micro", "mAP", "mse")
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
    typer.echo(f"validation: {shown}")
    if "pixel_error" in metrics:
        typer.echo(
            f"  points are {metrics['pixel_error']:.1f} pixels off on average, in the original "
            f"images (always guessing the centre: {metrics['pixel_error_if_always_centre']:.1f})"
        )
    typer.echo(
        f"model, metrics.json and pictures in {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}"
    )


def _learner(dls: Any, arch: str, pretrained: bool, task: str) -> Any:
    from imageblocks.learn.learner import vision_learner

    metrics: list[Any] = []
    kwargs: dict[str, Any] = {}
    if task == "multilabel":
        from functools import partial

        from imageblocks.learn.metrics import APScoreMulti, F1ScoreMulti, accuracy_multi

        metrics = [
            partial(accuracy_multi, thresh=0.5),
            F1ScoreMulti(average="macro"),
            APScoreMulti(),
        ]
    else:
        kwargs["y_range"] = (-1, 1)
    return vision_learner(dls, arch, pretrained=pretrained, metrics=metrics, **kwargs)


CsvOpt = typer.Option(..., "--csv", help="CSV file, one row per image.")
ImagesOpt = typer.Option(..., "--images", help="Folder the CSV's file names are relative to.")
FnameColOpt = typer.Option("fname", help="Column of image file names.")
LabelColOpt = typer.Option("labels", help="Column of space-separated labels (empty: no object).")
SplitColOpt = typer.Option(
    None, help="Boolean column: true rows are validation (default: is_valid when present)."
)
ValidPctOpt = typer.Option(
    None, help="Random validation share when there is no split column (default: 0.2)."
)
ArchOpt = typer.Option(
    DEMO_ARCH, help="Architecture (efficientnet_lite0's weights ship with imageblocks)."
)
PretrainedOpt = typer.Option(
    True, "--pretrained/--no-pretrained", help="Start from ImageNet weights."
)
BsOpt = typer.Option(64, help="Batch size.")
EpochsOpt = typer.Option(3, help="Epochs with the whole model training (after the frozen ones).")
FreezeOpt = typer.Option(1, help="Epochs with the pretrained body frozen, first.")
LrOpt = typer.Option(None, help="Learning rate (default: lr_find's valley suggestion).")
WorkersOpt = typer.Option(None, help="Loader worker processes (default: one per core, at most 8).")
DeviceOpt = typer.Option(None, help="cpu, cuda, cuda:1, mps (default: the best available).")
SeedOpt = typer.Option(42, help="Random seed (split, initialisation, augmentation).")
OutOpt = typer.Option(..., "--out", help="Folder for the exported model, metrics.json and plots.")
ResumeOpt = typer.Option(
    False, "--resume", help="Continue a killed run from OUT/checkpoint.pt (same arguments)."
)
PresetOpt = typer.Option(
    None, help="'biwi': a biwi_head_pose-style folder in --images (the book's get_ctr), no CSV."
)
PointColsOpt = typer.Option(
    None, help="Point columns, comma-separated (default: x,y or x0,y0,x1,y1,...)."
)


@train_app.command("multilabel")
def train_multilabel(
    csv: Path = CsvOpt,
    images: Path = ImagesOpt,
    out: Path = OutOpt,
    fname_col: str = FnameColOpt,
    label_col: str = LabelColOpt,
    split_col: str | None = SplitColOpt,
    valid_pct: float | None = ValidPctOpt,
    arch: str = ArchOpt,
    pretrained: bool = PretrainedOpt,
    size: int = typer.Option(128, help="Image side: RandomResizedCrop(size, min_scale=0.35)."),
    bs: int = BsOpt,
    epochs: int = EpochsOpt,
    freeze_epochs: int = FreezeOpt,
    lr: float | None = LrOpt,
    tune_thresholds: bool = typer.Option(
        True,
        "--tune-thresholds/--no-tune-thresholds",
        help="Pick per-class thresholds on validation.",
    ),
    workers: int | None = WorkersOpt,
    device: str | None = DeviceOpt,
    seed: int = SeedOpt,
    resume: bool = ResumeOpt,
) -> None:
    """Multi-label classification (PASCAL-style CSV): fine_tune, tune thresholds, export."""
    with _user_errors(), _distributed_run():
        _check_training_args(bs, epochs, freeze_epochs)
        _use_agg()
        _seed(seed)
        from imageblocks.csv_data import multilabel_from_csv

        dls = multilabel_from_csv(
            csv, images, fname_col=fname_col, label_col=label_col, split_col=split_col,
            valid_pct=valid_pct, size=_parse_size(str(size)), bs=bs, seed=seed,
            num_workers=workers, device=device,
        )  # fmt: skip
        typer.echo(f"data: {_describe_data(dls)}")
        learn = _learner(dls, arch, pretrained, "multilabel")
        metrics = fit_and_export(
            learn, out, epochs, freeze_epochs, lr, tune=tune_thresholds, resume=resume
        )
        _print_summary(metrics, out)
        typer.echo(f"next: imageblocks predict {out} IMAGE...   |   imageblocks serve {out}")


def _points_dls(
    csv: Path | None,
    images: Path,
    preset: str | None,
    fname_col: str,
    point_cols: str | None,
    split_col: str | None,
    valid_pct: float | None,
    size: tuple[int, int],
    bs: int,
    seed: int,
    workers: int | None,
    device: str | None,
) -> Any:
    from imageblocks.csv_data import biwi_dataloaders, points_from_csv

    if preset is not None:
        if preset.lower() != "biwi":
            raise CliError(f"unknown --preset {preset!r}: the one preset is 'biwi'")
        if csv is not None:
            raise CliError("give --csv or --preset biwi, not both")
        return biwi_dataloaders(images, size=size, bs=bs, num_workers=workers, device=device)
    if csv is None:
        raise CliError(
            "give --csv FILE (columns fname,x,y or fname,x0,y0,x1,y1,...) or --preset biwi"
        )
    cols = [c.strip() for c in point_cols.split(",") if c.strip()] if point_cols else None
    return points_from_csv(
        csv, images, fname_col=fname_col, point_cols=cols, split_col=split_col,
        valid_pct=valid_pct, size=size, bs=bs, seed=seed, num_workers=workers, device=device,
    )  # fmt: skip


@train_app.command("points")
def train_points(
    images: Path = ImagesOpt,
    out: Path = OutOpt,
    csv: Path | None = typer.Option(
        None, "--csv", help="CSV with fname and x,y (or x0,y0,x1,y1,...) in pixels."
    ),
    preset: str | None = PresetOpt,
    fname_col: str = FnameColOpt,
    point_cols: str | None = PointColsOpt,
    split_col: str | None = SplitColOpt,
    valid_pct: float | None = ValidPctOpt,
    arch: str = ArchOpt,
    pretrained: bool = PretrainedOpt,
    size: str = typer.Option(
        "240x320", help="Model input HEIGHTxWIDTH (images are squished to it)."
    ),
    bs: int = BsOpt,
    epochs: int = EpochsOpt,
    freeze_epochs: int = FreezeOpt,
    lr: float | None = LrOpt,
    workers: int | None = WorkersOpt,
    device: str | None = DeviceOpt,
    seed: int = SeedOpt,
    resume: bool = ResumeOpt,
) -> None:
    """Key points (image regression): from a CSV of pixel coordinates, or --preset biwi."""
    with _user_errors(), _distributed_run():
        _check_training_args(bs, epochs, freeze_epochs)
        _use_agg()
        _seed(seed)
        dls = _points_dls(
            csv, images, preset, fname_col, point_cols, split_col, valid_pct, _parse_size(size),
            bs, seed, workers, device,
        )  # fmt: skip
        typer.echo(f"data: {_describe_data(dls)}")
        learn = _learner(dls, arch, pretrained, "points")
        metrics = fit_and_export(learn, out, epochs, freeze_epochs, lr, resume=resume)
        _print_summary(metrics, out)
        typer.echo(f"next: imageblocks predict {out} IMAGE...   |   imageblocks serve {out}")


# --- using a model --------------------------------------------------------------------------


def _load(model: Path, device: str | None = None) -> Any:
    from imageblocks.learn.export import load_learner

    return load_learner(model, device=device)


def _prediction(learn: Any, task: str, image: Path) -> dict[str, Any]:
    """One image's prediction as JSON-able values."""
    result = learn.predict(image)
    if task == "points":
        return {
            "image": str(image),
            "points": [[_r(x, 2), _r(y, 2)] for x, y in result[0].tolist()],
        }
    vocab = [str(v) for v in learn.dls.vocab]
    probs = result[2].tolist()
    if task == "multilabel":
        labels = [str(v) for v in result[0]]
        return {
            "image": str(image),
            "labels": labels,
            "probabilities": {c: _r(p, 4) for c, p in zip(vocab, probs)},
        }
    return {
        "image": str(image),
        "label": str(result[0]),
        "probabilities": {c: _r(p, 4) for c, p in zip(vocab, probs)},
    }


def _prediction_line(pred: dict[str, Any]) -> str:
    if "points" in pred:
        pts = "; ".join(f"({x:.1f}, {y:.1f})" for x, y in pred["points"])
        return f"{pred['image']}: {pts} px"
    probs = pred["probabilities"]
    if "label" in pred:
        return f"{pred['image']}: {pred['label']} {probs[pred['label']]:.2f}"
    if not pred["labels"]:
        best = max(probs, key=probs.get)
        return f"{pred['image']}: no known object (most likely {best} {probs[best]:.2f})"
    ranked = sorted(pred["labels"], key=lambda c: -probs[c])
    return f"{pred['image']}: " + ", ".join(f"{c} {probs[c]:.2f}" for c in ranked)


@app.command()
def predict(
    model: Path = typer.Argument(
        ..., help="Model folder written by `imageblocks train` or learn.export()."
    ),
    images: list[Path] = typer.Argument(..., help="One or more image files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of lines."),
    thresh: float | None = typer.Option(
        None, help="Multi-label: one threshold for every class instead of the model's own."
    ),
    device: str | None = DeviceOpt,
) -> None:
    """Predict images: labels with probabilities, or points in pixels; one line per image."""
    with _user_errors():
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise CliError(
                f"image not found: {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        learn = _load(model, device)
        task = learn.config["task"]
        if thresh is not None:
            if task != "multilabel":
                raise CliError("--thresh applies to multi-label models only")
            if not 0 < thresh < 1:
                raise CliError(f"--thresh must be between 0 and 1, not {thresh}")
            import torch

            learn.thresholds = torch.full((len(learn.dls.vocab),), float(thresh))
        preds = [_prediction(learn, task, p) for p in images]
    if as_json:
        typer.echo(json.dumps(preds, indent=2))
    else:
        for pred in preds:
            typer.echo(_prediction_line(pred))


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model folder."),
    csv: Path = CsvOpt,
    images: Path = ImagesOpt,
    fname_col: str = FnameColOpt,
    label_col: str = LabelColOpt,
    point_cols: str | None = PointColsOpt,
    bs: int = BsOpt,
    workers: int = typer.Option(0, help="Loader worker processes."),
    device: str | None = DeviceOpt,
) -> None:
    """Metrics of a model on every row of a CSV, as JSON on stdout."""
    with _user_errors():
        from imageblocks.csv_data import eval_dataloader

        learn = _load(model, device)
        cols = [c.strip() for c in point_cols.split(",") if c.strip()] if point_cols else None
        dl = eval_dataloader(
            learn, csv, images, fname_col=fname_col, label_col=label_col, point_cols=cols,
            bs=bs, num_workers=workers,
        )  # fmt: skip
        task = learn.config["task"]
        found = multilabel_metrics(learn, dl) if task == "multilabel" else points_metrics(learn, dl)
        metrics: dict[str, Any] = {
            "task": task,
            "model": str(model),
            "csv": str(csv),
            "loss": found.pop("valid_loss"),
            **found,
        }
        if task == "multilabel":
            metrics["thresholds"] = _thresholds_json(learn)
    typer.echo(json.dumps(metrics, indent=2))


@app.command("lr-find")
def lr_find(
    images: Path = ImagesOpt,
    out: Path = typer.Option(..., "--out", help="PNG file for the loss/learning-rate plot."),
    csv: Path | None = typer.Option(None, "--csv", help="CSV file, one row per image."),
    task: str = typer.Option("multilabel", help="multilabel or points."),
    preset: str | None = PresetOpt,
    fname_col: str = FnameColOpt,
    label_col: str = LabelColOpt,
    point_cols: str | None = PointColsOpt,
    split_col: str | None = SplitColOpt,
    valid_pct: float | None = ValidPctOpt,
    arch: str = ArchOpt,
    pretrained: bool = PretrainedOpt,
    size: str = typer.Option("128", help="N (multilabel crop) or HEIGHTxWIDTH (points)."),
    bs: int = BsOpt,
    num_it: int = typer.Option(100, help="Mini-batches to try at most."),
    workers: int | None = WorkersOpt,
    device: str | None = DeviceOpt,
    seed: int = SeedOpt,
) -> None:
    """Run the learning-rate finder on a fresh model; print the suggestions, save the plot."""
    with _user_errors():
        if task not in ("multilabel", "points"):
            raise CliError(f"--task must be multilabel or points, not {task!r}")
        if bs < 1 or num_it < 2:
            raise CliError("--bs must be at least 1 and --num-it at least 2")
        _use_agg()
        _seed(seed)
        from imageblocks.learn.lr_find import minimum, slide, steep, valley

        if task == "multilabel":
            if csv is None:
                raise CliError("--csv is required for --task multilabel")
            from imageblocks.csv_data import multilabel_from_csv

            dls = multilabel_from_csv(
                csv, images, fname_col=fname_col, label_col=label_col, split_col=split_col,
                valid_pct=valid_pct, size=_parse_size(size), bs=bs, seed=seed,
                num_workers=workers, device=device,
            )  # fmt: skip
        else:
            dls = _points_dls(
                csv, images, preset, fname_col, point_cols, split_col, valid_pct,
                _parse_size(size), bs, seed, workers, device,
            )  # fmt: skip
        learn = _learner(dls, arch, pretrained, task)
        suggestions = learn.lr_find(
            num_it=num_it, show_plot=True, suggest_funcs=(minimum, steep, valley, slide)
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        _save(learn.lr_find_figure, out)
    for name, value in suggestions._asdict().items():
        typer.echo(f"{name}: {value:.2e}")
    typer.echo(f"wrote {out} (valley is the usual pick: --lr {suggestions.valley:.1e})")


@app.command()
def check(
    images: Path = ImagesOpt,
    csv: Path | None = typer.Option(None, "--csv", help="Check only the images this CSV names."),
    fname_col: str = FnameColOpt,
    point_cols: str | None = PointColsOpt,
    label_col: str = LabelColOpt,
    model: Path | None = typer.Option(
        None, "--model", help="Also check the CSV's labels against this model's classes."
    ),
) -> None:
    """Scan a dataset once and list every problem item with its reason (exit code 1 if any):
    missing or unreadable images, bad points, labels a model does not know."""
    with _user_errors():
        from imageblocks.data.sources import get_image_files
        from imageblocks.errors import ItemError
        from imageblocks.image import decode_image

        if not images.is_dir():
            raise CliError(f"images folder not found: {images}")
        if csv is not None:
            from imageblocks.csv_data import check_csv, read_csv

            cols = [c.strip() for c in point_cols.split(",") if c.strip()] if point_cols else None
            vocab = [str(v) for v in _load(model).dls.vocab] if model is not None else None
            n = len(read_csv(csv))
            bad = check_csv(
                csv, images, fname_col=fname_col, point_cols=cols,
                label_col=label_col if vocab is not None else None, vocab=vocab,
            )  # fmt: skip
        else:
            files = list(get_image_files(images))
            if not files:
                raise CliError(
                    f"no images in {images} or its subfolders (none has an image extension: "
                    ".jpg, .png, .webp, ...); check the --images folder"
                )
            n, bad = len(files), []
            for f in files:
                try:
                    decode_image(f, draft=(64, 64))
                except ItemError as e:
                    bad.append((f, str(e)))
    for f, reason in bad:
        typer.echo(f"{f}: {_one_line(reason)}")
    typer.echo(f"checked {n} images: {len(bad) or 'no'} problem{'s' if len(bad) != 1 else ''}")
    if bad:
        raise typer.Exit(1)


@app.command("export-onnx")
def export_onnx_cmd(
    model: Path = typer.Argument(..., help="Model folder."),
    out: Path = typer.Argument(..., help="A .onnx file, or a folder for model.onnx + config.json."),
    opset: int = typer.Option(17, help="ONNX opset version."),
) -> None:
    """Export a model to ONNX (normalised image batch in, raw outputs out) with its config.json."""
    with _user_errors():
        from imageblocks.learn.onnx_export import export_onnx

        learn = _load(model, "cpu")
        file = export_onnx(learn, out, opset=opset)
        spec = json.loads((file.parent / "config.json").read_text())["onnx"]
    shape = ", ".join(map(str, spec["input"]["shape"]))
    typer.echo(f"wrote {file} and {file.parent / 'config.json'}")
    typer.echo(
        f"input '{spec['input']['name']}': float32 ({shape}), RGB in [0, 1] normalised with "
        f"mean {spec['input']['mean']} std {spec['input']['std']}"
    )
    typer.echo(
        f"output '{spec['output']['name']}': ({', '.join(map(str, spec['output']['shape']))}), "
        f"activation to apply: {spec['output']['activation']}"
    )


@app.command()
def serve(
    model: Path = typer.Argument(..., help="Model folder."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port."),
    allowed_host: list[str] | None = typer.Option(
        None,
        "--allowed-host",
        help="Also answer requests for this Host name (repeatable; '*': any). Loopback allows "
        "127.0.0.1, localhost, [::1]; 0.0.0.0 allows any name unless some are given.",
    ),
    max_upload_mb: float | None = typer.Option(None, help="Largest upload in MB (default 10)."),
    max_pixels: int | None = typer.Option(
        None,
        help="Most pixels decoded per image; JPEGs count at their reduced decode scale "
        "(default 16000000). Larger: 413 from the header.",
    ),
    max_concurrency: int | None = typer.Option(
        None, help="Predictions running at once (default 4)."
    ),
    max_requests: int | None = typer.Option(
        None,
        help="Predictions in progress (uploading, waiting, running) (default 64); 503 beyond.",
    ),
    body_timeout: float | None = typer.Option(
        None, help="Seconds for a whole upload to arrive (default 60); 408 after."
    ),
    header_timeout: float | None = typer.Option(
        None, help="Seconds for a request's headers to arrive (default 10); closed after."
    ),
) -> None:
    """Serve a model over HTTP: a web page and a JSON API."""
    with _user_errors():
        from imageblocks.learn.export import read_config

        if not model.exists():
            raise CliError(f"model folder not found: {model}")
        read_config(model)
        try:
            from imageblocks.serve.app import serve as serve_model
        except ImportError as e:
            raise CliError(
                f"the web service needs its extras ({e.name or e}): pip install 'imageblocks[serve]'"
            ) from None
        limits = {
            "max_upload_mb": max_upload_mb,
            "max_pixels": max_pixels,
            "max_concurrency": max_concurrency,
            "max_requests": max_requests,
            "body_timeout": body_timeout,
            "header_timeout": header_timeout,
        }
        typer.echo(f"serving {model} on http://{host}:{port}  (Ctrl+C stops)")
        serve_model(
            model,
            host,
            port,
            allowed_hosts=allowed_host or (),
            **{k: v for k, v in limits.items() if v is not None},
        )


# --- demo -----------------------------------------------------------------------------------


def _demo_train(out: Path, pascal: Path, biwi: Path) -> dict[str, dict[str, Any]]:
    """Train both demo models with reduced recipes on the CPU; export them under `out`."""
    import pandas as pd

    from imageblocks.demo_recipes import multilabel_block, points_block

    results = {}
    typer.echo("\n== training the multi-label model (efficientnet_lite0, 128 px) ==")
    df = pd.read_csv(pascal / "train.csv")
    valid = df[df["is_valid"]].iloc[:DEMO_VALID_IMAGES]
    df = pd.concat([df[~df["is_valid"]], valid]).reset_index(drop=True)
    _seed(42)
    dls = multilabel_block(pascal, size=128).dataloaders(df, bs=64, num_workers=0)
    typer.echo(f"data: {_describe_data(dls)}")
    learn = _learner(dls, DEMO_ARCH, True, "multilabel")
    results["multilabel"] = fit_and_export(learn, out / "multilabel_model", 2, 2, 1e-2)
    _print_summary(results["multilabel"], out / "multilabel_model")

    h, w = DEMO_POINTS_SIZE
    typer.echo(f"\n== training the key-point model (efficientnet_lite0, {h}x{w}) ==")
    _seed(42)
    dls = points_block(biwi, size=DEMO_POINTS_SIZE).dataloaders(biwi, bs=32, num_workers=0)
    typer.echo(f"data: {_describe_data(dls)}")
    learn = _learner(dls, DEMO_ARCH, True, "points")
    results["points"] = fit_and_export(learn, out / "points_model", 4, 1, 1e-2)
    _print_summary(results["points"], out / "points_model")
    return results


def _demo_next_steps(out: Path, pascal: Path, biwi: Path, trained: bool) -> None:
    test = _first_test_image(pascal)
    frame = sorted((biwi / "13").glob("*_rgb.jpg"))[0]
    typer.echo("\n== what to look at ==")
    typer.echo(f"  {out}/show_batch_multilabel.png, {out}/show_batch_points.png: training batches")
    typer.echo(f"  {out}/summary_*.txt: every step of the two DataBlocks")
    if trained:
        for name in ("multilabel_model", "points_model"):
            typer.echo(
                f"  {out}/{name}/: results.png (validation: truth vs prediction), loss.png, "
                f"{'thresholds.png, ' if name.startswith('multi') else ''}metrics.json"
            )
        typer.echo("\n== next ==")
        typer.echo(f"  imageblocks predict {out}/multilabel_model {test}")
        typer.echo(f"  imageblocks predict {out}/points_model {frame} --json")
        typer.echo(
            f"  imageblocks evaluate {out}/multilabel_model --csv {pascal}/test.csv --images {pascal}/test"
        )
        typer.echo(
            f"  imageblocks serve {out}/multilabel_model        (then open http://127.0.0.1:8000)"
        )
        typer.echo(f"  imageblocks export-onnx {out}/multilabel_model {out}/multilabel_onnx")
    typer.echo(
        f"  imageblocks train multilabel --csv {pascal}/train.csv --images {pascal}/train --out my_model"
    )
    typer.echo(
        f"  imageblocks train points --preset biwi --images {biwi} --size 120x160 --out my_points"
    )


def _first_test_image(pascal: Path) -> Path:
    """A demo test image for the suggested `predict` command."""
    files = sorted((pascal / "test").glob("*.jpg"))
    return files[0] if files else pascal / "test" / "IMAGE.jpg"


@app.command()
def demo(
    out: Path = typer.Option(
        Path("demo-output"), help="Folder for pictures, summaries and models."
    ),
    bs: int = typer.Option(64, help="Batch size of the DataLoaders shown."),
    train: bool = typer.Option(
        True,
        "--train/--no-train",
        help="Also train and export both demo models (a few minutes on a CPU).",
    ),
) -> None:
    """Generate both demo datasets, show their DataLoaders, then train and export two models."""
    _use_agg()
    import pandas as pd

    from imageblocks.demo_recipes import demo_dataloaders, multilabel_block, points_block

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dls_multi, dls_points, pascal, biwi = demo_dataloaders(bs=bs)
    typer.echo(f"demo datasets ready in {time.perf_counter() - t0:.1f}s:\n  {pascal}\n  {biwi}")
    df = pd.read_csv(pascal / "train.csv")
    for name, dblock, source in (
        ("multilabel", multilabel_block(pascal), df),
        ("points", points_block(biwi), biwi),
    ):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            dblock.summary(source)
        (out / f"summary_{name}.txt").write_text(buf.getvalue())
    xb, yb = dls_multi.one_batch()
    typer.echo(
        f"multi-label: {len(dls_multi.train.dataset)} train / {len(dls_multi.valid.dataset)} valid "
        f"images, {len(dls_multi.vocab)} classes {list(dls_multi.vocab)}"
    )
    typer.echo(f"  batch: x {tuple(xb.shape)}, y {tuple(yb.shape)}")
    xb, yb = dls_points.one_batch()
    typer.echo(
        f"key points: {len(dls_points.train.dataset)} train / {len(dls_points.valid.dataset)} valid images"
    )
    typer.echo(
        f"  batch: x {tuple(xb.shape)}, y {tuple(yb.shape)}, points in [{yb.min():.2f}, {yb.max():.2f}]"
    )
    _save(dls_multi.show_batch(nrows=1, ncols=3), out / "show_batch_multilabel.png")
    _save(dls_points.show_batch(max_n=9, figsize=(8, 6)), out / "show_batch_points.png")
    typer.echo(f"wrote {out}/summary_*.txt and {out}/show_batch_*.png")
    del dls_multi, dls_points
    if train:
        with _user_errors():
            _demo_train(out, pascal, biwi)
    _demo_next_steps(out, pascal, biwi, train)
    typer.echo(f"\ndemo done in {time.perf_counter() - start:.0f}s")


def main() -> None:
    """Entry point of the `imageblocks` console script.

    Before any command imports torch, idle OpenMP threads are told to sleep rather than spin
    (`OMP_WAIT_POLICY=PASSIVE` unless set; see `imageblocks.runtime`); training commands also
    keep freed memory for reuse, applied by `Learner.fit`."""
    sleep_idle_threads()
    app()


if __name__ == "__main__":
    main()
