"""Bad input (issue 6): every kind of broken item gets an error naming it and saying what to do,
or a documented handling, never a silent wrong result. One test per kind of bad input.

Covered elsewhere, not repeated here: a non-image file with an image extension, the missing-file
and header-cut JPEG messages (test_image_and_item_transforms::test_bad_files_get_clear_errors);
image modes from memory and EXIF decoding (test_any_mode_becomes_rgb, test_exif_rotation_is_applied);
empty label strings in a mixed column (test_data_block::
test_multicategory_sorted_vocab_one_hot_and_empty_labels); a validation label outside the vocab
(test_label_outside_vocab_names_item); an empty training split
(test_plain_function_splitter_and_empty_training_split) and a CSV split with no validation row
(test_cli::test_multilabel_csv_vocab_split_and_errors); the CLI's missing --label-col and
evaluate's missing 'labels' column (test_errors_are_one_line_with_exit_code_1); config.json newer
than this version and unexpected tensors (test_export::test_bad_export_folders_get_clear_errors);
`imageblocks check` on missing and broken files (test_cli::test_check_lists_unreadable_images).
"""

from __future__ import annotations

import io
import json
import re
import tracemalloc
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import simplejpeg
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from imageblocks.cli import app
from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, MultiCategoryBlock, PointBlock
from imageblocks.errors import ItemError
from imageblocks.image import decode_image
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.model_config import ExportError
from imageblocks.paths import Path
from imageblocks.recipes.csv_data import (
    CsvDataError,
    check_csv,
    eval_dataloader,
    multilabel_from_csv,
    points_from_csv,
)
from imageblocks.transforms.item import RandomResizedCrop, Resize
from tests.conftest import blob_image


def _png(path: Path, w: int = 40, h: int = 30, value: int = 90) -> Path:
    Image.new("RGB", (w, h), (value, value, value)).save(path)
    return path


def _labelled(tmp_path: Path, labels: list[str]) -> tuple[pd.DataFrame, Path]:
    """One small PNG per label string, in a DataFrame `fname, labels, is_valid` (last row valid)."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for i in range(len(labels)):
        _png(images / f"{i}.png", value=20 * i)
    df = pd.DataFrame(
        {
            "fname": [f"{i}.png" for i in range(len(labels))],
            "labels": labels,
            "is_valid": [i == len(labels) - 1 for i in range(len(labels))],
        }
    )
    return df, images


def _by_is_valid(df: pd.DataFrame) -> tuple[list[int], list[int]]:
    return df.index[~df["is_valid"]].tolist(), df.index[df["is_valid"]].tolist()


def _book_block(images: Path, splitter=_by_is_valid) -> DataBlock:
    """The book's multi-label DataBlock: lambdas, `split(' ')`, a column splitter."""
    return DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        get_x=lambda r: images / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
        splitter=splitter,
        item_tfms=Resize(16),
    )


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_missing_image_file_names_the_row_even_from_a_worker(tmp_path):
    df, images = _labelled(tmp_path, ["cat", "dog", "cat", "dog"])
    (images / "1.png").unlink()
    dls = _book_block(images).dataloaders(df, bs=4, num_workers=1, device="cpu")
    with pytest.raises(ItemError, match=r"^row 1 \(fname='1.png'.*Image file not found: .*1.png"):
        list(dls.train)  # the error crosses the worker process and keeps only our message


def test_truncated_or_corrupt_jpeg_and_png(tmp_path):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    jpeg = _jpeg_bytes(photo, quality=90)
    (tmp_path / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # cut inside the pixel data
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    png = buf.getvalue()
    (tmp_path / "half.png").write_bytes(png[: len(png) // 2])
    idat = png.index(b"IDAT") + 40
    (tmp_path / "flipped.png").write_bytes(png[:idat] + bytes(b ^ 0xFF for b in png[idat:]))
    for name in ("half.jpg", "half.png", "flipped.png"):
        for draft in (None, (32, 32)):
            with pytest.raises(ItemError, match=rf"{name}.*truncated or corrupt.*remove it"):
                decode_image(tmp_path / name, draft=draft)


@pytest.mark.parametrize(
    "mode,value,rgb",
    [
        ("L", 200, (200, 200, 200)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # transparent: on white
        ("P", None, (255, 255, 255)),  # palette with a transparent colour
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535 // 2, (128, 128, 128)),
    ],
)
def test_grayscale_rgba_palette_cmyk_and_16_bit_files_load_as_rgb(tmp_path, mode, value, rgb):
    if mode == "P":
        img = Image.new("P", (20, 16), 1)
        img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        img.info["transparency"] = 1
        file = tmp_path / "img.png"
        img.save(file, transparency=1)
    elif mode == "CMYK":
        file = tmp_path / "img.jpg"
        file.write_bytes(_jpeg_bytes(Image.new(mode, (20, 16), value), quality=100))
    else:
        file = tmp_path / "img.png"
        Image.new(mode, (20, 16), value).save(file)
    dblock = DataBlock(blocks=(ImageBlock,), splitter=lambda items: ([0], [0]), item_tfms=Resize(8))
    (xb,) = dblock.dataloaders([file], bs=1, num_workers=0, device="cpu").valid.one_batch()
    assert xb.shape == (1, 3, 8, 8)
    pixel = (xb[0, :, 4, 4] * 255).round().tolist()
    assert np.allclose(pixel, rgb, atol=2), (mode, pixel)


def test_exif_rotated_photo_is_turned_and_its_points_follow(tmp_path):
    # stored 80 wide x 60 high; EXIF 6 shows it rotated 90 degrees clockwise: 60 wide x 80 high
    stored = blob_image(80, 60, cx=20, cy=15, r=6)
    exif = stored.getexif()
    exif[0x0112] = 6
    file = tmp_path / "turned.jpg"
    file.write_bytes(_jpeg_bytes(stored, exif=exif, quality=95))
    # where the blob is on the displayed image: stored (x, y) -> displayed (h - y, x)
    shown = (60 - 15, 20)
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_y=lambda f: [shown],
        splitter=lambda items: ([0], [0]),
        item_tfms=Resize((40, 30), method="squish"),
    )
    xb, yb = dblock.dataloaders([file], bs=1, num_workers=0, device="cpu").valid.one_batch()
    assert xb.shape == (1, 3, 40, 30)  # portrait, as displayed
    img = xb[0].mean(0)
    ys, xs = torch.nonzero(img > 0.5, as_tuple=True)
    blob = torch.tensor([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
    point = (yb[0, 0] + 1) / 2 * torch.tensor([30.0, 40.0])
    assert torch.allclose(blob, point, atol=1.5), (blob, point)


def test_very_large_jpeg_decodes_downscaled(tmp_path):
    # 12000x9000: 324 MB as RGB. np.zeros touches no memory, so writing the test file is cheap.
    file = tmp_path / "huge.jpg"
    file.write_bytes(simplejpeg.encode_jpeg(np.zeros((9000, 12000, 3), np.uint8), quality=30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning: it decodes at 1/8 scale
        tracemalloc.start()
        try:
            img, full = decode_image(file, draft=(128, 128))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert full == (12000, 9000) and img.size == (1500, 1125)
        assert peak < 20e6, f"decoding allocated {peak / 1e6:.0f} MB"
        for tfm in (RandomResizedCrop(128, min_scale=0.35), Resize(128)):
            dblock = DataBlock(
                blocks=(ImageBlock, PointBlock),
                get_y=lambda f: [(6000.0, 4500.0)],  # the centre, in full-size pixels
                splitter=lambda items: ([0], [0]),
                item_tfms=tfm,
            )
            dls = dblock.dataloaders([file], bs=1, num_workers=0, device="cpu")
            xb, yb = dls.train.one_batch()
            assert xb.shape == (1, 3, 128, 128)
            xb, yb = dls.valid.one_batch()
            assert xb.shape == (1, 3, 128, 128) and yb.abs().max() < 0.02


def test_decompression_bomb_limit_applies_to_the_decoded_size(tmp_path, monkeypatch):
    """Pillow's MAX_IMAGE_PIXELS is kept, but counts what is decoded: a JPEG with a draft
    (EXIF or not) loads at reduced scale; a full-size decode over twice the limit is an error."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    big = Image.new("RGB", (2400, 1800), (0, 90, 0))  # 4.3 M pixels > 2 x 1 M
    exif = big.getexif()
    exif[0x0112] = 1
    (tmp_path / "plain.jpg").write_bytes(_jpeg_bytes(big))
    (tmp_path / "exif.jpg").write_bytes(_jpeg_bytes(big, exif=exif))
    big.save(tmp_path / "big.png")
    for name in ("plain.jpg", "exif.jpg"):
        img, full = decode_image(tmp_path / name, draft=(128, 128))
        assert full == (2400, 1800) and img.size == (300, 225)
    for name, draft in (("plain.jpg", None), ("exif.jpg", None), ("big.png", (128, 128))):
        with pytest.raises(ItemError, match=rf"{name} is too large to decode.*MAX_IMAGE_PIXELS"):
            decode_image(tmp_path / name, draft=draft)


def test_empty_label_string_even_in_an_all_empty_column(tmp_path):
    """Empty label strings in a mixed column are covered by test_data_block; here every label is
    empty, which pandas reads as a float column of NaN: still '' and an all-zero target."""
    df, images = _labelled(tmp_path, ["", "", ""])
    df.to_csv(tmp_path / "unlabelled.csv", index=False)
    df = pd.read_csv(tmp_path / "unlabelled.csv")
    assert df["labels"].isna().all()
    dsets = _book_block(images, splitter=lambda d: ([0, 1], [2])).datasets(df)
    assert len(dsets.vocab) == 0 and dsets.train[0][1].tolist() == []
    known = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock(vocab=["cat", "dog"])),
        get_x=lambda r: images / r["fname"],
        get_y=lambda r: r["labels"].split(" "),
        splitter=lambda d: ([0, 1], [2]),
    )
    assert known.datasets(df).valid[0][1].tolist() == [0.0, 0.0]


def test_labels_with_repeated_or_extra_spaces(tmp_path):
    df, images = _labelled(tmp_path, ["cat  dog ", " cat", "dog", "   ", "cat dog"])
    dsets = _book_block(images).datasets(df)  # the book's r['labels'].split(' ')
    assert list(dsets.vocab) == ["cat", "dog"]  # no '' class
    assert dsets.train[0][1].tolist() == [1.0, 1.0]
    assert dsets.train[1][1].tolist() == [1.0, 0.0]
    assert dsets.train[3][1].tolist() == [0.0, 0.0]  # only spaces: no label
    df.to_csv(tmp_path / "labels.csv", index=False)  # the CLI's CSV loader agrees
    dls = multilabel_from_csv(tmp_path / "labels.csv", images, size=16, bs=2, num_workers=0)
    assert list(dls.vocab) == ["cat", "dog"]


def test_label_not_in_vocab_at_test_time(tmp_path):
    df, images = _labelled(tmp_path, ["cat", "dog", "cat dog", "dog"])
    dls = _book_block(images).dataloaders(df, bs=2, num_workers=0, device="cpu")
    test = df.assign(labels=["cat", "unicorn", "dog", ""])
    with pytest.raises(ItemError, match=r"row 1 .*'unicorn' is not in the vocab.*vocab=\["):
        list(dls.test_dl(test, with_labels=True))
    assert list(dls.vocab) == ["cat", "dog"]  # the test set did not rebuild the vocab
    test.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(CsvDataError, match=r"labels the model does not know: unicorn"):
        eval_dataloader(SimpleNamespace(dls=dls), tmp_path / "test.csv", images)


def _points_dls(file: Path, point, block=PointBlock):
    dblock = DataBlock(
        blocks=(ImageBlock, block),
        get_y=lambda f: [point],
        splitter=lambda items: ([0], [0]),
        item_tfms=Resize(8, method="squish"),
    )
    return dblock.dataloaders([file], bs=1, num_workers=0, device="cpu")


def test_nan_infinite_or_out_of_image_point(tmp_path):
    file = _png(tmp_path / "a.png", w=40, h=30)
    for bad in ((float("nan"), 3.0), (5.0, float("inf"))):
        with pytest.raises(ItemError, match=r"a.png.*not finite.*drop"):
            _points_dls(file, bad).valid.one_batch()
    for outside in ((50.0, 10.0), (10.0, -4.0), (30.0, 40.0)):  # the last: x and y swapped?
        with pytest.raises(ItemError, match=r"a.png.*outside the 40x30 image.*outside='clamp'"):
            _points_dls(file, outside).valid.one_batch()
    _, yb = _points_dls(file, (43.0, -1.5)).valid.one_batch()  # < 10% outside: kept as it is
    assert torch.allclose(yb, torch.tensor([[[1.15, -1.1]]]))
    _, yb = _points_dls(file, (50.0, 10.0), PointBlock(outside="clamp")).valid.one_batch()
    assert torch.allclose(yb, torch.tensor([[[1.0, 10 / 15 - 1]]]))
    _, yb = _points_dls(file, (50.0, 10.0), PointBlock(outside="keep")).valid.one_batch()
    assert torch.allclose(yb, torch.tensor([[[1.5, 10 / 15 - 1]]]))
    # in a CSV, a non-finite value is found before any image is read
    pd.DataFrame({"fname": ["a.png"] * 2, "x": [1.0, np.inf], "y": [2.0, 3.0]}).to_csv(
        tmp_path / "p.csv", index=False
    )
    with pytest.raises(CsvDataError, match=r"'x' .* infinite value at row 3"):
        points_from_csv(tmp_path / "p.csv", tmp_path, valid_pct=0.5)


def test_csv_missing_named_column(tmp_path):
    df, images = _labelled(tmp_path, ["cat", "dog", "cat dog", "dog"])
    csv = tmp_path / "labels.csv"
    df.to_csv(csv, index=False)
    cases = [
        (lambda: multilabel_from_csv(csv, images, fname_col="file"), "'file' (the file name"),
        (lambda: multilabel_from_csv(csv, images, label_col="tags"), "'tags' (the label"),
        (lambda: multilabel_from_csv(csv, images, split_col="valid"), "'valid' (the split"),
        (lambda: points_from_csv(csv, images, point_cols=["px", "py"]), "'px' (the point px"),
        (lambda: points_from_csv(csv, images), "no point columns"),
        (lambda: check_csv(csv, images, fname_col="file"), "'file' (the file name"),
    ]
    for call, message in cases:
        pattern = rf"labels.csv.*{re.escape(message)}.*fname, labels, is_valid"
        with pytest.raises(CsvDataError, match=pattern):
            call()
    dls = _book_block(images).dataloaders(df, bs=2, num_workers=0, device="cpu")
    with pytest.raises(CsvDataError, match=r"no column 'name' \(the file name column\)"):
        eval_dataloader(SimpleNamespace(dls=dls), csv, images, fname_col="name")
    # the CLI turns them into one line and exit code 1
    result = CliRunner().invoke(
        app,
        ["train", "points", "--csv", str(csv), "--images", str(images), "--out",
         str(tmp_path / "m"), "--point-cols", "px,py", "--no-pretrained"],
    )  # fmt: skip
    assert result.exit_code == 1 and "error: " in result.stderr and "'px'" in result.stderr
    # the book's getters on a DataFrame without the column: the row and the columns are named
    with pytest.raises(ItemError, match=r"row 0 .*looked up 'labels', which is not a column"):
        _book_block(images).datasets(df.rename(columns={"labels": "tags"}))


def test_empty_training_or_validation_split(tmp_path):
    df, images = _labelled(tmp_path, ["cat", "dog", "cat dog", "dog"])
    with pytest.raises(ValueError, match="no item in the training set"):
        _book_block(images, splitter=lambda d: ([], list(range(4)))).datasets(df)
    dblock = _book_block(images, splitter=lambda d: (list(range(4)), []))
    with pytest.warns(UserWarning, match="none in the validation set"):
        dls = dblock.dataloaders(df, bs=2, num_workers=0, device="cpu")
    with pytest.raises(ValueError, match="dataset is empty"):
        dls.valid.one_batch()
    learn = vision_learner(dls, "resnet18", pretrained=False)
    learn.fit(1, 1e-3)  # trains; reports no validation loss
    train_loss, valid_loss = learn.recorder.values[-1]
    assert np.isfinite(train_loss) and valid_loss is None


def test_batch_size_larger_than_dataset(tmp_path):
    df, images = _labelled(tmp_path, ["cat", "dog", "cat dog", "dog", "", "cat"])
    dls = _book_block(images).dataloaders(df, bs=64, num_workers=0, device="cpu")
    assert len(dls.train) == 1 and len(dls.valid) == 1  # the only batch is never dropped
    assert [len(b[0]) for b in dls.train] == [5] and [len(b[0]) for b in dls.valid] == [1]
    learn = vision_learner(dls, "resnet18", pretrained=False)
    learn.fit(1, 1e-3)
    assert all(np.isfinite(v) for v in learn.recorder.values[-1])


def test_model_folder_from_newer_version_or_mismatched_tensors(tmp_path):
    df, images = _labelled(tmp_path, ["cat", "dog", "cat dog", "dog"])
    dls = _book_block(images).dataloaders(df, bs=2, num_workers=0, device="cpu")
    folder = vision_learner(dls, "resnet18", pretrained=False).export(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    newer = {**config, "format_version": 99, "library_version": "9.0.0"}
    (folder / "config.json").write_text(json.dumps(newer))
    with pytest.raises(ExportError, match=r"written by imageblocks 9.0.0.*upgrade imageblocks"):
        load_learner(folder)
    # weights of a 3-class model under the config of a 2-class one: same names, other shapes
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(str(folder / "model.safetensors"))
    head = [k for k, v in state.items() if v.shape[:1] == (2,)]
    save_file(
        {**state, **{k: torch.zeros(3, *state[k].shape[1:]) for k in head}},
        str(folder / "model.safetensors"),
    )
    with pytest.raises(ExportError, match=r"do not match .*wrong shape.*export the model again"):
        load_learner(folder)


def test_check_lists_every_bad_item_in_one_scan(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("ok.png", "ok2.png", "far.png", "nan.png", "new.png"):
        _png(images / name, w=40, h=30)
    (images / "text.png").write_text("not a picture")
    (images / "empty.jpg").write_bytes(b"")
    cut = _jpeg_bytes(Image.new("RGB", (64, 64), (9, 9, 9)))
    (images / "cut.jpg").write_bytes(cut[: len(cut) // 2])
    rows = [
        ("ok.png", 10, 10, "cat", False),
        ("gone.png", 10, 10, "cat", False),  # missing
        ("text.png", 10, 10, "dog", False),  # not an image
        ("empty.jpg", 10, 10, "dog", False),  # empty file
        ("cut.jpg", 10, 10, "dog", False),  # truncated
        ("far.png", 400, 10, "dog", False),  # point outside the image
        ("nan.png", None, 10, "cat", False),  # no point
        ("ok2.png", 20, 20, "cat dog", True),
        ("new.png", 20, 20, "unicorn", True),  # label not in the (training) vocab
    ]
    df = pd.DataFrame(rows, columns=["fname", "x", "y", "labels", "is_valid"])
    dblock = DataBlock(
        blocks=(ImageBlock, PointBlock, MultiCategoryBlock),
        n_inp=1,
        get_x=lambda r: images / r["fname"],
        get_y=[lambda r: [(r["x"], r["y"])], lambda r: r["labels"].split(" ")],
        splitter=_by_is_valid,
        item_tfms=Resize(16),
    )
    problems = dblock.check(df)
    expected = {
        "gone.png": "Image file not found",
        "text.png": "Not a readable image",
        "empty.jpg": "Not a readable image",
        "cut.jpg": "truncated or corrupt",
        "far.png": "outside the 40x30 image",
        "nan.png": "not finite",
        "new.png": "'unicorn' is not in the vocab",
    }
    found = {item["fname"]: reason for item, reason in problems}
    assert set(found) == set(expected)
    for name, reason in expected.items():
        assert reason in found[name] and f"fname='{name}'" in found[name], found[name]
    # the same scan from a CSV, as `imageblocks check` needs: paths with reasons
    df.to_csv(tmp_path / "rows.csv", index=False)
    listed = check_csv(tmp_path / "rows.csv", images, label_col="labels", vocab=["cat", "dog"])
    assert {p.name for p, _ in listed} == set(expected)
    assert all(expected[p.name] in reason for p, reason in listed)
