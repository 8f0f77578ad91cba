"""Batch prediction to CSV: thousands of images decoded in worker processes, run in batches.

`predict_files` reads and pre-processes the images in a pool of worker processes (one per core
by default; each worker gets `bs` files at a time), runs ONNX Runtime on each batch in this
process while the workers prepare the next ones, and writes one CSV row per file as results
come, into a hidden file renamed onto the CSV at the end. A file that cannot be read is a row
with its `error` and is listed in the summary, never the end of the run.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv as csv_format
import io
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from imageblocks_runtime.errors import ArgumentError, ImageblocksError
from imageblocks_runtime.files import image_files
from imageblocks_runtime.model import RuntimeModel
from imageblocks_runtime.preprocess import ItemTransform, prepare
from imageblocks_runtime.tasks import Task
from imageblocks_runtime.utils import atomic_write

__all__ = ["BatchSummary", "collect_sources", "csv_header", "csv_row", "predict_files", "report"]

Prepared = tuple[np.ndarray, tuple[int, int]] | str  # the array and original size, or an error


@dataclass
class BatchSummary:
    """What a batch prediction did: files predicted, files that could not be read, time."""

    csv: Path
    files: int = 0
    predicted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Files handled per second of the whole run."""
        return self.files / self.seconds if self.seconds > 0 else 0.0


def collect_sources(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The files to predict: each file as given, each folder's image files (links followed,
    sorted); an `ArgumentError` for a path that does not exist or a folder with no images."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise ArgumentError(f"no image files in {path} (looked for JPEG, PNG, ... files)")
            out.extend(found)
        elif path.exists() or path.is_symlink():
            out.append(str(path))
        else:
            raise ArgumentError(f"image not found: {path}")
    return out


def csv_header(model: RuntimeModel) -> list[str]:
    """The CSV's columns: `file`, the prediction's columns by task, `error`."""
    if model.task is Task.POINTS:
        n = int(model.config["model"]["n_out"]) // 2
        cols = [f"{axis}{i}" for i in range(n) for axis in ("x", "y")]
    elif model.task is Task.REGRESSION:
        cols = [f"value{i}" for i in range(int(model.config["model"]["n_out"]))]
    else:
        first = "labels" if model.task is Task.MULTILABEL else "label"
        cols = [first, *(model.vocab or [])]
    return ["file", *cols, "error"]


def _number(v: float) -> str:
    return f"{v:.6g}"


def csv_row(model: RuntimeModel, name: str, record: dict[str, Any] | None, error: str = "") -> list:
    """One CSV row: the file, its prediction's values (empty for an unreadable file), the error."""
    width = len(csv_header(model)) - 2
    if record is None:
        return [name, *[""] * width, error]
    if "points" in record:
        values = [_number(c) for xy in record["points"] for c in xy]
    elif "values" in record:
        values = [_number(v) for v in record["values"]]
    else:
        first = " ".join(record["labels"]) if "labels" in record else record["label"]
        values = [first, *(_number(record["probabilities"][c]) for c in model.vocab or ())]
    return [name, *values, ""]


def _prepare_files(
    files: Sequence[str], tfms: Sequence[ItemTransform], draft: tuple[int, int] | None
) -> list[Prepared]:
    """Each file prepared for the graph, or the message of why it cannot be (a worker's job)."""
    out: list[Prepared] = []
    for f in files:
        try:
            out.append(prepare(f, tfms, draft))
        except ImageblocksError as e:
            out.append(str(e))
        except Exception as e:  # an unforeseen decoder failure names the file, never ends the run
            out.append(f"Could not read image {f}: {type(e).__name__}: {e}")
    return out


def _context() -> Any:
    """Worker processes started from a clean server process (forkserver) where there is one:
    no fork of this process's threads (ONNX Runtime's pool), none of spawn's slow start."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _prepared_chunks(
    model: RuntimeModel, chunks: list[list[str]], workers: int
) -> Iterator[list[Prepared]]:
    """The prepared images of each chunk of files, in order; `workers` processes prepare a few
    chunks ahead (0: in this process)."""
    if workers <= 0 or len(chunks) <= 1:
        for chunk in chunks:
            yield _prepare_files(chunk, model.tfms, model.draft)
        return
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["imageblocks_runtime.preprocess"])
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        ahead = 2 * workers
        pending = [pool.submit(_prepare_files, c, model.tfms, model.draft) for c in chunks[:ahead]]
        try:
            for nxt in range(ahead, len(chunks) + ahead):
                done = pending.pop(0)
                if nxt < len(chunks):
                    job = pool.submit(_prepare_files, chunks[nxt], model.tfms, model.draft)
                    pending.append(job)
                yield done.result()
        finally:  # stopped early (Ctrl-C, an error): the queued chunks are not prepared
            for job in pending:
                job.cancel()


def _progress(total: int, enabled: bool) -> Any:
    """A rich progress bar on stderr (or nothing), used as a context manager."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "[progress.percentage]{task.percentage:>3.0f}%",
        TimeRemainingColumn(),
        console=console,
        disable=not enabled or total == 0,
        transient=False,
    )


def predict_files(
    model: RuntimeModel,
    sources: Sequence[str | os.PathLike],
    csv: str | os.PathLike,
    bs: int = 64,
    workers: int | None = None,
    progress: bool = True,
    thresh: float | None = None,
) -> BatchSummary:
    """Predict every file of `sources` (folders are walked for image files) into the CSV
    `csv`: one row per file, in order; unreadable files get an `error` and are listed."""
    if bs < 1:
        raise ArgumentError(f"bs must be 1 or more, not {bs}")
    model.decision_thresholds(thresh)  # a bad threshold fails before any image is read
    started = time.perf_counter()
    files = collect_sources(sources)
    workers = (os.cpu_count() or 1) if workers is None else max(0, int(workers))
    if len(files) < 2 * bs:  # a handful of files: starting workers costs more than it gives
        workers = 0
    chunks = [files[i : i + bs] for i in range(0, len(files), bs)]
    target = Path(csv)
    summary = BatchSummary(csv=target, files=len(files))

    def write(binary: IO[bytes]) -> None:
        f = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        with _progress(len(files), progress) as bar:
            task = bar.add_task("predicting", total=len(files))
            writer = csv_format.writer(f)
            writer.writerow(csv_header(model))
            for chunk, prepared in zip(chunks, _prepared_chunks(model, chunks, workers)):
                good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
                found = model.predict_prepared([prepared[i] for i in good], thresh) if good else []
                records = dict(zip(good, found))
                for i, name in enumerate(chunk):
                    error = prepared[i] if isinstance(prepared[i], str) else ""
                    if error:
                        summary.failed.append((name, error))
                    writer.writerow(csv_row(model, name, records.get(i), error))
                summary.predicted += len(good)
                bar.advance(task, len(chunk))
        f.detach().flush()  # the text layer's buffer into the file atomic_write syncs and renames

    atomic_write(target, write)  # a hidden file renamed onto the CSV at the end
    summary.seconds = time.perf_counter() - started
    return summary


def report(summary: BatchSummary, out: Any = None) -> None:
    """Print the summary of a batch run (and each file that could not be read) to `out`."""
    out = out or sys.stderr
    for name, error in summary.failed:
        print(f"could not read {name}: {error}", file=out)
    print(
        f"{summary.predicted} of {summary.files} images predicted into {summary.csv} "
        f"in {summary.seconds:.1f} s ({summary.images_per_s:.0f} images/s)"
        + (f"; {len(summary.failed)} could not be read" if summary.failed else ""),
        file=out,
    )
