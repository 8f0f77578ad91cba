"""The `imageblocks-runtime` command: `predict` (and `serve`) on a model folder, no PyTorch.

`imageblocks predict` and `imageblocks serve` call the same functions (`predict_command`) on a
self-contained folder, so both commands behave alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from imageblocks_runtime import __version__
from imageblocks_runtime.errors import ArgumentError, ImageblocksError
from imageblocks_runtime.serve.command import add_serve_arguments, serve_from_args

__all__ = ["build_parser", "main", "predict_command"]


def predict_command(
    model: str | Path,
    images: Sequence[str | Path],
    csv: str | Path | None = None,
    as_json: bool = False,
    thresh: float | None = None,
    int8: bool = False,
    bs: int = 64,
    workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Predict `images` (files or folders) with the model folder `model`: one line (or a JSON
    list) per image on `out`; with `csv`, batch mode: a CSV row per file, unreadable files listed
    on `err`. Returns the exit status (1 when no image at all could be read)."""
    from imageblocks_runtime.batch import collect_sources, predict_files, report
    from imageblocks_runtime.model import RuntimeModel
    from imageblocks_runtime.records import prediction_line

    out, err = out or sys.stdout, err or sys.stderr
    if not images:
        raise ArgumentError("give one or more image files or folders to predict")
    if bs < 1:
        raise ArgumentError(f"--bs must be 1 or more, not {bs}")
    runtime = RuntimeModel.load(model, int8=int8, threads=threads)
    runtime.decision_thresholds(thresh)  # a bad --thresh fails before any image is read
    if csv is not None:
        summary = predict_files(
            runtime, images, csv, bs=bs, workers=workers, progress=progress, thresh=thresh
        )
        report(summary, err)
        return 0 if summary.predicted or not summary.files else 1
    files = collect_sources(images)
    preds = [
        {"image": str(f), **r}
        for f, r in zip(files, runtime.predict_many(files, bs=bs, thresh=thresh))
    ]
    if as_json:
        print(json.dumps(preds, indent=2), file=out)
    else:
        for pred in preds:
            print(prediction_line(pred.pop("image"), pred), file=out)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict images: labels with probabilities, or points in pixels",
        description="Predict image files (or every image in a folder) with a model folder.",
    )
    p.add_argument("model", type=Path, help="model folder written by learn.export()")
    p.add_argument("images", type=Path, nargs="+", help="image files or folders")
    p.add_argument("--csv", type=Path, help="batch mode: write one CSV row per image here")
    p.add_argument("--json", dest="as_json", action="store_true", help="print a JSON list")
    p.add_argument("--thresh", type=float, help="multi-label: one threshold for every class")
    p.add_argument("--int8", action="store_true", help="use the quantised model.int8.onnx")
    p.add_argument("--bs", type=int, default=64, help="images per batch (default 64)")
    p.add_argument(
        "--workers", type=int, help="processes decoding images in batch mode (default: all cores)"
    )
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar in batch mode")
    p.set_defaults(
        run=lambda a: predict_command(
            a.model,
            a.images,
            csv=a.csv,
            as_json=a.as_json,
            thresh=a.thresh,
            int8=a.int8,
            bs=a.bs,
            workers=a.workers,
            threads=a.threads,
            progress=not a.no_progress,
        )
    )


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP: a web page and a JSON API",
        description="Serve a model folder over HTTP (needs imageblocks-runtime[serve]).",
    )
    add_serve_arguments(p)
    p.set_defaults(run=serve_from_args)


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser, one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="imageblocks-runtime",
        description="Run a model folder exported by imageblocks, without PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(sub)
    _add_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `imageblocks-runtime`: errors are one line on stderr, exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
    except ImageblocksError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(status or 0)


if __name__ == "__main__":
    main()
