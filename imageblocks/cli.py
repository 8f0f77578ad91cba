"""The `imageblocks` command: demo, train, predict, evaluate, lr-find, export-onnx, serve (Typer).

Heavy imports (torch, pandas, matplotlib) happen inside the commands, so `--help` is instant.
Bad input (a missing file, column or model folder, an unreadable image) ends with a one-line
`error: ...` on stderr and exit code 1; set IMAGEBLOCKS_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from imageblocks.cli_options import (
    ArchOpt,
    BatchCsvOpt,
    BsOpt,
    CsvOpt,
    DecodeWorkersOpt,
    DeviceOpt,
    FnameColOpt,
    ImagesArg,
    ImagesOpt,
    Int8Opt,
    LabelColOpt,
    OutOpt,
    PointColsOpt,
    PredictBsOpt,
    PresetOpt,
    PretrainedOpt,
    SeedOpt,
    SplitColOpt,
    TrainOptions,
    ValidPctOpt,
    WorkersOpt,
    with_train_options,
)
from imageblocks.errors import ImageblocksError
from imageblocks.runtime import sleep_idle_threads
from imageblocks.utils import parse_size
from imageblocks_runtime.serve import command as serve_command

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


@app.callback()
def _root() -> None:
    """imageblocks: train, check, export and serve image models from the command line."""


# --- errors ---------------------------------------------------------------------------------


class CliError(ImageblocksError):
    """Bad input found by the command itself."""


# ours, a missing file, and the plain ValueErrors that still report a bad argument
USER_ERRORS = (ImageblocksError, ValueError, FileNotFoundError)


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
        if os.environ.get("IMAGEBLOCKS_DEBUG") or not isinstance(e, USER_ERRORS):
            raise
        typer.echo(f"error: {_one_line(e)}", err=True)
        raise typer.Exit(1) from None


# --- small helpers --------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '120x160' or '120,160' -> (120, 160) as (height, width)."""
    return parse_size(text, name="--size", min_side=8)


def _use_agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _columns(text: str | None) -> list[str] | None:
    """'x0, y0,x1' -> ['x0', 'y0', 'x1']; None or empty -> None."""
    cols = [c.strip() for c in text.split(",") if c.strip()] if text else []
    return cols or None


def _train(task: str, out: Path, source: dict[str, Any], opts: TrainOptions, **kwargs: Any) -> None:
    """Check the arguments, train from `source` (the CsvSource fields a command has of its own)
    and `opts`, export to `out` and print the summary; under torchrun every rank trains, rank 0
    prints."""
    if opts.bs < 1:
        raise CliError(f"--bs must be at least 1, not {opts.bs}")
    epochs, freeze_epochs = opts.epochs, opts.freeze_epochs
    if epochs is not None and (epochs < 0 or freeze_epochs < 0 or epochs + freeze_epochs == 0):
        raise CliError("--epochs and --freeze-epochs must be 0 or more, and not both 0")
    _use_agg()
    from imageblocks.recipes.reports import summary_lines
    from imageblocks.recipes.train import CsvSource, distributed_run, train

    with distributed_run():
        source = CsvSource(
            **source, fname_col=opts.fname_col, split_col=opts.split_col,
            valid_pct=opts.valid_pct, bs=opts.bs, seed=opts.seed, num_workers=opts.workers,
            device=opts.device,
        )  # fmt: skip
        metrics = train(
            task, source, out, log=typer.echo, epochs=epochs, freeze_epochs=freeze_epochs,
            lr=opts.lr, resume=opts.resume, arch=opts.arch, pretrained=opts.pretrained,
            early_stop=opts.early_stop, save_best=opts.save_best, budget=opts.budget, **kwargs,
        )  # fmt: skip
        typer.echo("\n".join(summary_lines(metrics, out)))
        typer.echo(f"next: imageblocks predict {out} IMAGE...   |   imageblocks serve {out}")


@train_app.command("multilabel")
@with_train_options
def train_multilabel(
    csv: Path = CsvOpt,
    images: Path = ImagesOpt,
    out: Path = OutOpt,
    label_col: str = LabelColOpt,
    size: int = typer.Option(128, help="Image side: RandomResizedCrop(size, min_scale=0.35)."),
    tune_thresholds: bool = typer.Option(
        True,
        "--tune-thresholds/--no-tune-thresholds",
        help="Pick per-class thresholds on validation.",
    ),
    *,
    opts: TrainOptions,
) -> None:
    """Multi-label classification (PASCAL-style CSV): fine_tune, tune thresholds, export."""
    with _user_errors():
        source = dict(images=images, csv=csv, label_col=label_col, size=_parse_size(str(size)))
        _train("multilabel", out, source, opts, tune=tune_thresholds)


@train_app.command("points")
@with_train_options
def train_points(
    images: Path = ImagesOpt,
    out: Path = OutOpt,
    csv: Path | None = typer.Option(
        None, "--csv", help="CSV with fname and x,y (or x0,y0,x1,y1,...) in pixels."
    ),
    preset: str | None = PresetOpt,
    point_cols: str | None = PointColsOpt,
    size: str = typer.Option(
        "240x320", help="Model input HEIGHTxWIDTH (images are squished to it)."
    ),
    *,
    opts: TrainOptions,
) -> None:
    """Key points (image regression): from a CSV of pixel coordinates, or --preset biwi."""
    with _user_errors():
        source = dict(
            images=images, csv=csv, preset=preset, point_cols=_columns(point_cols),
            size=_parse_size(size),
        )  # fmt: skip
        _train("points", out, source, opts)


# --- using a model --------------------------------------------------------------------------


def _load(model: Path, device: str | None = None) -> Any:
    from imageblocks.learn.loading import load_learner

    return load_learner(model, device=device)


@app.command()
def predict(
    model: Path = typer.Argument(
        ..., help="Model folder written by `imageblocks train` or learn.export()."
    ),
    images: list[Path] = ImagesArg,
    csv: Path | None = BatchCsvOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of lines."),
    thresh: float | None = typer.Option(
        None, help="Multi-label: one threshold for every class instead of the model's own."
    ),
    int8: bool = Int8Opt,
    bs: int = PredictBsOpt,
    workers: int | None = DecodeWorkersOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Predict images: labels with probabilities, or points in pixels; one line per image.

    A folder with a self-contained model.onnx runs on ONNX Runtime without importing PyTorch
    (unless --device is given); an older folder runs through PyTorch."""
    with _user_errors():
        missing = [p for p in images if not p.exists()]
        if missing:
            raise CliError(
                f"image not found: {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        from imageblocks_runtime.model import self_contained

        contained = self_contained(model)
        if device is None and contained:
            from imageblocks_runtime.cli import predict_command

            status = predict_command(
                model, images, csv=csv, as_json=as_json, thresh=thresh, int8=int8, bs=bs,
                workers=workers,
            )  # fmt: skip
            if status:
                raise typer.Exit(status)
            return
        hint = f"`imageblocks export-onnx {model}` writes a self-contained model.onnx"
        if csv is not None or int8:
            option = "--csv" if csv is not None else "--int8"
            fix = "leave out --device" if contained else hint
            raise CliError(f"{option} runs on ONNX Runtime, not PyTorch: {fix}")
        from imageblocks.learn.predict import prediction_line, prediction_records
        from imageblocks_runtime.batch import collect_sources

        learn = _load(model, device)
        if not contained:
            typer.echo(f"note: {model} runs through PyTorch (slower to start); {hint}", err=True)
        preds = prediction_records(learn, collect_sources(images), thresh)
    if as_json:
        typer.echo(json.dumps(preds, indent=2))
    else:
        for pred in preds:
            typer.echo(prediction_line(pred.pop("image"), pred))


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
        from imageblocks.recipes.reports import evaluate_csv

        learn = _load(model, device)
        found = evaluate_csv(
            learn, csv, images, fname_col=fname_col, label_col=label_col,
            point_cols=_columns(point_cols), bs=bs, num_workers=workers,
        )  # fmt: skip
        metrics = {"model": str(model), **found}
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
        if bs < 1 or num_it < 2:
            raise CliError("--bs must be at least 1 and --num-it at least 2")
        _use_agg()
        from imageblocks.recipes.train import CsvSource, find_lr

        source = CsvSource(
            images, csv, preset, fname_col=fname_col, label_col=label_col,
            point_cols=_columns(point_cols), split_col=split_col, valid_pct=valid_pct,
            size=_parse_size(size), bs=bs, seed=seed, num_workers=workers, device=device,
        )  # fmt: skip
        suggestions = find_lr(task, source, out, num_it=num_it, arch=arch, pretrained=pretrained)
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
        from imageblocks.recipes.csv_data import check_dataset

        vocab = [str(v) for v in _load(model).dls.vocab] if model is not None else None
        n, bad = check_dataset(
            images, csv, fname_col=fname_col, point_cols=_columns(point_cols),
            label_col=label_col, vocab=vocab,
        )  # fmt: skip
    for f, reason in bad:
        typer.echo(f"{f}: {_one_line(reason)}")
    typer.echo(f"checked {n} images: {len(bad) or 'no'} problem{'s' if len(bad) != 1 else ''}")
    if bad:
        raise typer.Exit(1)


@app.command("export-onnx")
def export_onnx_cmd(
    model: Path = typer.Argument(..., help="Model folder."),
    out: Path | None = typer.Argument(
        None, help="A .onnx file, or a folder for model.onnx + config.json (default: MODEL)."
    ),
    opset: int = typer.Option(17, help="ONNX opset version."),
    int8: bool = typer.Option(
        False, "--int8", help="Also write model.int8.onnx (static int8), calibrated on --images."
    ),
    images: Path | None = typer.Option(
        None, help="Validation images to calibrate --int8 on (with --csv: the folder of its files)."
    ),
    csv: Path | None = typer.Option(
        None, help="Calibrate on this CSV's validation rows (is_valid, else training's 20% split)."
    ),
    fname_col: str = FnameColOpt,
) -> None:
    """Write the self-contained ONNX graph into the model folder (--int8: a quantised copy too).

    The graph takes uint8 images and returns probabilities and decisions, or points."""
    with _user_errors():
        if (images is not None or csv is not None) and not int8:
            raise CliError("--images and --csv choose the images --int8 calibrates on: add --int8")
        if int8 and images is None:
            raise CliError(
                "--int8 needs --images DIR: validation images to calibrate on (a folder, or with "
                "--csv F the folder of the CSV's files)"
            )
        from imageblocks.learn.onnx_export import export_onnx

        learn = _load(model, "cpu")
        calibration = None
        if int8:
            from imageblocks.learn.export import learner_config
            from imageblocks.learn.quantize import calibration_images
            from imageblocks.recipes.csv_data import validation_files

            files = validation_files(images, csv, fname_col)
            calibration = calibration_images(learner_config(learn), files)
        file = export_onnx(learn, out or model, opset=opset, int8=int8, calibration=calibration)
        spec = json.loads((file.parent / "config.json").read_text())["onnx"]
    typer.echo(f"wrote {file} and {file.parent / 'config.json'}")
    for line in _graph_lines(spec, file.parent):
        typer.echo(line)


def _graph_lines(spec: dict[str, Any], folder: Path) -> list[str]:
    """What the graph of an `onnx` section takes and gives, in words."""
    shape = ", ".join(map(str, spec["input"]["shape"]))
    outputs = ", ".join(
        f"{name} {o['dtype']} ({', '.join(map(str, o['shape']))})"
        for name, o in spec["outputs"].items()
    )
    lines = [
        f"input '{spec['input']['name']}': uint8 ({shape}), RGB images after the validation "
        "item transforms (resize/crop/pad); normalisation and activation are inside",
        f"outputs: {outputs}",
    ]
    if "int8" in spec:
        q = spec["int8"]
        mb = [(folder / f).stat().st_size / 2**20 for f in (q["file"], spec["file"])]
        lines.append(
            f"int8: {folder / q['file']} ({mb[0]:.1f} MB against {mb[1]:.1f} MB), calibrated on "
            f"{q['calibration_images']} images"
        )
    return lines


@app.command()
def serve(
    model: Path = typer.Argument(..., help="Model folder."),
    host: str = typer.Option("127.0.0.1", help=serve_command.HOST_HELP),
    port: int = typer.Option(8000, help="Port."),
    allowed_host: list[str] | None = typer.Option(
        None, "--allowed-host", help=serve_command.ALLOWED_HOST_HELP
    ),
    max_upload_mb: float | None = typer.Option(None, help=serve_command.LIMITS["max_upload_mb"]),
    max_pixels: int | None = typer.Option(None, help=serve_command.LIMITS["max_pixels"]),
    max_concurrency: int | None = typer.Option(None, help=serve_command.LIMITS["max_concurrency"]),
    max_requests: int | None = typer.Option(None, help=serve_command.LIMITS["max_requests"]),
    body_timeout: float | None = typer.Option(None, help=serve_command.LIMITS["body_timeout"]),
    header_timeout: float | None = typer.Option(None, help=serve_command.LIMITS["header_timeout"]),
    int8: bool = typer.Option(False, "--int8", help=serve_command.INT8_HELP),
    threads: int = typer.Option(1, min=1, help=serve_command.THREADS_HELP),
    cam: bool = typer.Option(
        False,
        "--cam",
        help="Also answer ?cam=1 with class activation maps (loads the PyTorch model too).",
    ),
) -> None:
    """Serve a model over HTTP: a web page and a JSON API, run by ONNX Runtime (PyTorch is
    imported only for --cam)."""
    with _user_errors():
        if not model.exists():
            raise CliError(f"model folder not found: {model}")
        provider = None
        if cam:
            from imageblocks.serve.cam import learner_cams

            provider = learner_cams(model)
        limits = {
            "max_upload_mb": max_upload_mb,
            "max_pixels": max_pixels,
            "max_concurrency": max_concurrency,
            "max_requests": max_requests,
            "body_timeout": body_timeout,
            "header_timeout": header_timeout,
        }
        serve_command.run_serve(
            model, host, port, allowed_host or (), limits, int8=int8, threads=threads,
            cam=provider, echo=typer.echo, extra_hint="pip install 'imageblocks[serve]'",
        )  # fmt: skip


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
    budget: str = typer.Option("2m", help="Time to train each model; 'none': the short recipe."),
) -> None:
    """Generate both demo datasets, show their DataLoaders, then train and export two models."""
    _use_agg()
    with _user_errors():
        from imageblocks.recipes.demo import run_demo

        run_demo(out, bs=bs, train=train, log=typer.echo, budget=budget)


def main() -> None:
    """Entry point of the `imageblocks` console script.

    Before any command imports torch, idle OpenMP threads are told to sleep rather than spin
    (`OMP_WAIT_POLICY=PASSIVE` unless set; see `imageblocks.runtime`); training commands also
    keep freed memory for reuse, applied by `Learner.fit`."""
    sleep_idle_threads()
    app()


if __name__ == "__main__":
    main()
