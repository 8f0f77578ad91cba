"""DataLoaders from a CSV and a folder of images: what the `imageblocks` command trains on.

Multi-label: one row per image, a file-name column and a column of space-separated labels
(empty: no object), as in PASCAL's `train.csv`. Key points: a file-name column and `x, y`
(one point) or `x0, y0, x1, y1, ...` (several), in pixels of the original image. The split
comes from a boolean column (`is_valid`) or is random. Every problem with the CSV or the files
raises `CsvDataError` with a message that names the file, column or rows and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import (
    ImageBlock,
    MultiCategoryBlock,
    PointBlock,
    Task,
    split_labels,
    task_of,
)
from imageblocks.data.loaders import DataLoader, DataLoaders
from imageblocks.data.sources import get_image_files
from imageblocks.data.splitters import ColSplitter, RandomSplitter, Splitter
from imageblocks.errors import ImageblocksError, ItemError
from imageblocks.image import decode_image
from imageblocks.paths import Path
from imageblocks.recipes.book import points_block
from imageblocks.transforms.batch import aug_transforms
from imageblocks.transforms.item import RandomResizedCrop, Resize
from imageblocks.utils import parse_size

__all__ = [
    "CsvDataError",
    "ImageFromCol",
    "LabelsFromCol",
    "PointsFromCols",
    "biwi_dataloaders",
    "check_csv",
    "check_dataset",
    "check_folder",
    "eval_dataloader",
    "multilabel_from_csv",
    "point_columns",
    "points_from_csv",
    "read_csv",
    "validation_files",
]

DEFAULT_SPLIT_COL = "is_valid"


class CsvDataError(ImageblocksError, ValueError):
    """A CSV, a column or an images folder that cannot be used as it is."""


# --- getters (picklable classes, so worker processes can use them) --------------------------


class ImageFromCol:
    """The image path of a row: `folder / row[col]`."""

    def __init__(self, folder: str | os.PathLike, col: str):
        self.folder, self.col = Path(folder), col

    def __call__(self, row: pd.Series) -> Path:
        return self.folder / str(row[self.col])


class LabelsFromCol:
    """The labels of a row: `row[col]` split on spaces (empty or missing: no label)."""

    def __init__(self, col: str):
        self.col = col

    def __call__(self, row: pd.Series) -> list[str]:
        return split_labels(row[self.col])


class PointsFromCols:
    """The points of a row, (n, 2) pixels, from columns `x0, y0, x1, y1, ...`."""

    def __init__(self, cols: Sequence[str]):
        self.cols = list(cols)

    def __call__(self, row: pd.Series) -> np.ndarray:
        values = pd.to_numeric(row[self.cols], errors="coerce").to_numpy(dtype=np.float32)
        return values.reshape(-1, 2)


# --- checks ---------------------------------------------------------------------------------


def read_csv(csv: str | os.PathLike) -> pd.DataFrame:
    """The CSV as a DataFrame (only empty cells are missing values); errors for no file/rows."""
    csv = Path(csv)
    if not csv.is_file():
        raise CsvDataError(f"CSV file not found: {csv}")
    try:
        df = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise CsvDataError(
            f"{csv} is empty: it needs a header line and one row per image"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CsvDataError(f"{csv} is not a readable CSV file ({first})") from None
    if len(df) == 0:
        raise CsvDataError(f"{csv} has a header but no rows: add one row per image")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def require_columns(df: pd.DataFrame, csv: Any, columns: dict[str, str]) -> None:
    """Raise if a column is missing; `columns` maps each role (e.g. 'label') to its name."""
    for role, col in columns.items():
        if col not in df.columns:
            present = ", ".join(map(str, df.columns))
            raise CsvDataError(
                f"{csv}: no column {col!r} (the {role} column); columns present: {present}"
            )


def check_images(df: pd.DataFrame, images: str | os.PathLike, fname_col: str, csv: Any) -> Path:
    """The images folder, checked to exist and to hold every file the CSV names."""
    folder = Path(images)
    if not folder.is_dir():
        raise CsvDataError(f"images folder not found: {folder}")
    names = df[fname_col].astype(str)
    missing = [(i, n) for i, n in zip(df.index, names) if not (folder / n).is_file()]
    if missing:
        shown = ", ".join(f"{n!r} (row {i + 2})" for i, n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CsvDataError(
            f"{len(missing)} of the {len(df)} images named in column {fname_col!r} of {csv} are "
            f"not in {folder}: {shown}{more}. Check --images (the folder the names are relative "
            "to) and the file names"
        )
    return folder


def choose_splitter(
    df: pd.DataFrame,
    csv: Any,
    split_col: str | None = None,
    valid_pct: float | None = None,
    seed: int = 42,
) -> Splitter:
    """`split_col` if given; else `valid_pct` at random if given; else an `is_valid` column if
    the CSV has one; else 20% at random. The split must leave images on both sides."""
    if split_col is not None and valid_pct is not None:
        raise CsvDataError("give a split column or a validation percentage, not both")
    if split_col is None and valid_pct is None and DEFAULT_SPLIT_COL in df.columns:
        split_col = DEFAULT_SPLIT_COL
    if split_col is not None:
        require_columns(df, csv, {"split": split_col})
        splitter = ColSplitter(split_col)
        how = f"column {split_col!r}"
    else:
        valid_pct = 0.2 if valid_pct is None else valid_pct
        if not 0 < valid_pct < 1:
            raise CsvDataError(
                f"the validation percentage must be between 0 and 1, not {valid_pct}"
            )
        splitter = RandomSplitter(valid_pct, seed=seed)
        how = f"a random {valid_pct:.0%}"
    train, valid = splitter(df)
    if not train or not valid:
        side = "training" if not train else "validation"
        raise CsvDataError(
            f"splitting {csv} by {how} leaves no {side} image ({len(train)} training, "
            f"{len(valid)} validation): mark some rows as validation (true) and some not, "
            "or use a validation percentage"
        )
    return splitter


def point_columns(
    df: pd.DataFrame,
    csv: Any,
    point_cols: Sequence[str] | None = None,
    check_values: bool = True,
) -> list[str]:
    """The point columns: given, or `x, y`, or `x0, y0, x1, y1, ...` found in the CSV; with
    `check_values`, every value checked to be a finite number (the first bad row named)."""
    if point_cols:
        cols = list(point_cols)
        require_columns(df, csv, {f"point {c}": c for c in cols})
        if len(cols) % 2:
            raise CsvDataError(f"point columns come in x, y pairs; got {len(cols)}: {cols}")
    elif "x" in df.columns and "y" in df.columns:
        cols = ["x", "y"]
    else:
        cols = []
        while f"x{len(cols) // 2}" in df.columns and f"y{len(cols) // 2}" in df.columns:
            k = len(cols) // 2
            cols += [f"x{k}", f"y{k}"]
    if not cols:
        present = ", ".join(map(str, df.columns))
        raise CsvDataError(
            f"{csv}: no point columns (expected 'x' and 'y', or 'x0', 'y0', 'x1', 'y1', ...); "
            f"columns present: {present}"
        )
    for c in cols if check_values else ():
        values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CsvDataError(
                f"{csv}: column {c!r} holds a missing, non-numeric or infinite value at row "
                f"{row + 2} ({df[c].iloc[row]!r}): every point needs finite numbers, in pixels "
                "(`imageblocks check` lists every such row)"
            )
    return cols


def check_csv(
    csv: str | os.PathLike, images: str | os.PathLike, fname_col: str = "fname",
    point_cols: Sequence[str] | None = None,
    label_col: str | None = None, vocab: Sequence[str] | None = None,
) -> list[tuple[Path, str]]:  # fmt: skip
    """Every problem of the rows of `csv` in one scan, as `(image path, reason)`: missing,
    unreadable or non-image files; with `point_cols` (or `x, y` / `x0, y0, ...` columns present)
    missing, non-numeric, infinite or out-of-image points; with `label_col` and `vocab`
    (a model's classes), labels outside the vocab. The CSV's own problems (no such column)
    raise `CsvDataError`."""
    df = read_csv(csv)
    require_columns(df, csv, {"file name": fname_col})
    has_points = bool(point_cols) or {"x", "y"} <= set(df.columns) or "x0" in df.columns
    cols = point_columns(df, csv, point_cols, check_values=False) if has_points else []
    blocks: list[Any] = [ImageBlock]
    getters: list[Any] = [ImageFromCol(images, fname_col)]
    if cols:
        blocks.append(PointBlock)
        getters.append(PointsFromCols(cols))
    if label_col is not None and vocab is not None:
        require_columns(df, csv, {"label": label_col})
        blocks.append(MultiCategoryBlock(vocab=list(vocab)))
        getters.append(LabelsFromCol(label_col))
    dblock = DataBlock(
        blocks=blocks,
        getters=getters,
        n_inp=1,
        splitter=lambda items: (list(range(len(items))), []),
        item_tfms=Resize(64),  # lets JPEGs decode at reduced scale: a check needs no pixels
    )
    get_path = ImageFromCol(images, fname_col)
    return [(get_path(row), reason) for row, reason in dblock.check(df)]


def validation_files(
    images: str | os.PathLike,
    csv: str | os.PathLike | None = None,
    fname_col: str = "fname",
    split_col: str | None = None,
    seed: int = 42,
) -> list[Path]:
    """The validation images of a dataset: with `csv`, the rows training puts on the
    validation side (`choose_splitter`: an `is_valid` column, else the seeded 20%), as files
    of `images`; without, every image under the folder `images`."""
    if csv is None:
        if not Path(images).is_dir():
            raise CsvDataError(f"images folder not found: {images}")
        return list(get_image_files(images))
    df = read_csv(csv)
    require_columns(df, csv, {"file name": fname_col})
    folder = check_images(df, images, fname_col, csv)
    _, valid = choose_splitter(df, csv, split_col, seed=seed)(df)
    return [folder / str(df[fname_col].iloc[i]) for i in valid]


def check_folder(images: str | os.PathLike) -> tuple[int, list[tuple[Path, str]]]:
    """Every image file under `images` decoded once: how many, and `(path, reason)` for each
    one that cannot be read."""
    folder = Path(images)
    if not folder.is_dir():
        raise CsvDataError(f"images folder not found: {folder}")
    files = list(get_image_files(folder))
    if not files:
        raise CsvDataError(
            f"no images in {folder} or its subfolders (none has an image extension: "
            ".jpg, .png, .webp, ...); check the --images folder"
        )
    bad = []
    for f in files:
        try:
            decode_image(f, draft=(64, 64))
        except ItemError as e:
            bad.append((f, str(e)))
    return len(files), bad


def check_dataset(
    images: str | os.PathLike,
    csv: str | os.PathLike | None = None,
    fname_col: str = "fname",
    point_cols: Sequence[str] | None = None,
    label_col: str = "labels",
    vocab: Sequence[str] | None = None,
) -> tuple[int, list[tuple[Path, str]]]:
    """How many images, and every problem with its reason: the rows of `csv` (`check_csv`,
    labels checked against `vocab` when given) or, with no CSV, every image under `images`."""
    if not Path(images).is_dir():
        raise CsvDataError(f"images folder not found: {images}")
    if csv is None:
        return check_folder(images)
    bad = check_csv(
        csv, images, fname_col=fname_col, point_cols=point_cols,
        label_col=label_col if vocab is not None else None, vocab=vocab,
    )  # fmt: skip
    return len(read_csv(csv)), bad


# --- DataLoaders ----------------------------------------------------------------------------


def multilabel_from_csv(
    csv: str | os.PathLike,
    images: str | os.PathLike,
    fname_col: str = "fname",
    label_col: str = "labels",
    split_col: str | None = None,
    valid_pct: float | None = None,
    size: int = 128,
    min_scale: float = 0.35,
    bs: int = 64,
    seed: int = 42,
    num_workers: int | None = None,
    device: Any = None,
) -> DataLoaders:
    """The book's PASCAL recipe on any CSV: RandomResizedCrop(size, min_scale) per image.

    The vocab is every label of the CSV (sorted), so a label seen only in validation is no error."""
    df = read_csv(csv)
    require_columns(df, csv, {"file name": fname_col, "label": label_col})
    check_images(df, images, fname_col, csv)
    splitter = choose_splitter(df, csv, split_col, valid_pct, seed)
    vocab = sorted({label for v in df[label_col] for label in split_labels(v)})
    if not vocab:
        raise CsvDataError(f"{csv}: column {label_col!r} holds no label at all")
    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock(vocab=vocab)),
        get_x=ImageFromCol(images, fname_col),
        get_y=LabelsFromCol(label_col),
        splitter=splitter,
        item_tfms=RandomResizedCrop(size, min_scale=min_scale),
    )
    return dblock.dataloaders(df, bs=bs, num_workers=num_workers, device=device)


def points_from_csv(
    csv: str | os.PathLike,
    images: str | os.PathLike,
    fname_col: str = "fname",
    point_cols: Sequence[str] | None = None,
    split_col: str | None = None,
    valid_pct: float | None = None,
    size: int | Sequence[int] = (240, 320),
    bs: int = 64,
    seed: int = 42,
    num_workers: int | None = None,
    device: Any = None,
) -> DataLoaders:
    """Key points from a CSV: each image squished to `size` (h, w), then `aug_transforms()`."""
    df = read_csv(csv)
    require_columns(df, csv, {"file name": fname_col})
    cols = point_columns(df, csv, point_cols)
    check_images(df, images, fname_col, csv)
    splitter = choose_splitter(df, csv, split_col, valid_pct, seed)
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_x=ImageFromCol(images, fname_col),
        get_y=PointsFromCols(cols),
        splitter=splitter,
        item_tfms=Resize(size, method="squish"),
        batch_tfms=aug_transforms(),
    )
    return dblock.dataloaders(df, bs=bs, num_workers=num_workers, device=device)


def biwi_dataloaders(
    images: str | os.PathLike,
    size: int | Sequence[int] = (240, 320),
    bs: int = 64,
    num_workers: int | None = None,
    device: Any = None,
) -> DataLoaders:
    """The book's BIWI recipe on a biwi_head_pose-style folder (person 13 is validation)."""
    folder = Path(images)
    if not folder.is_dir():
        raise CsvDataError(f"images folder not found: {folder}")
    if not (folder / "01" / "rgb.cal").is_file():
        raise CsvDataError(
            f"{folder} is not a biwi_head_pose-style folder: no 01/rgb.cal (expected one "
            "folder per person, 01 .. 24, each with rgb.cal and frame_*_rgb.jpg/_pose.txt)"
        )
    dblock = points_block(folder, size=parse_size(size))
    return dblock.dataloaders(folder, bs=bs, num_workers=num_workers, device=device)


class _EveryRow:
    """A splitter putting every item in both splits (only the validation loader is used)."""

    def __call__(self, items: Any) -> tuple[list[int], list[int]]:
        idx = list(range(len(items)))
        return idx, idx


def eval_dataloader(
    learn: Any,
    csv: str | os.PathLike,
    images: str | os.PathLike,
    fname_col: str = "fname",
    label_col: str = "labels",
    point_cols: Sequence[str] | None = None,
    bs: int = 64,
    num_workers: int | None = 0,
) -> DataLoader:
    """Every row of the CSV with its targets, through `learn`'s validation transforms."""
    target = learn.dls.target_block
    task, vocab = task_of(target), getattr(target, "vocab", None)
    df = read_csv(csv)
    require_columns(df, csv, {"file name": fname_col})
    if task is Task.POINTS:
        block: Any = PointBlock()
        get_y: Any = PointsFromCols(point_columns(df, csv, point_cols))
    elif task is Task.MULTILABEL and vocab is not None:
        require_columns(df, csv, {"label": label_col})
        known = set(map(str, vocab))
        unknown = sorted({lb for v in df[label_col] for lb in split_labels(v)} - known)
        if unknown:
            raise CsvDataError(
                f"{csv}: labels the model does not know: {', '.join(unknown[:10])}"
                f"{' ...' if len(unknown) > 10 else ''} (it knows: {', '.join(sorted(known))})"
            )
        block, get_y = MultiCategoryBlock(vocab=list(vocab)), LabelsFromCol(label_col)
    else:
        raise CsvDataError("evaluate supports multi-label and key-point models")
    check_images(df, images, fname_col, csv)
    dblock = DataBlock(
        blocks=(ImageBlock, block),
        get_x=ImageFromCol(images, fname_col),
        get_y=get_y,
        splitter=_EveryRow(),
        item_tfms=learn.dls.item_tfms,
        batch_tfms=learn.dls.valid.after_batch,
    )
    dls = dblock.dataloaders(
        df, bs=bs, num_workers=num_workers, device=learn.dls.device, shuffle=False
    )
    return dls.valid
