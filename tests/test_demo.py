"""The generated demo datasets: on-disk formats of pascal_2007 and biwi_head_pose, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imageblocks import demodata
from imageblocks.data.sources import get_image_files
from imageblocks.demodata import points as points_module

N_IMAGES, N_PERSONS, N_FRAMES = 40, 14, 3


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    return demodata.make_demo_multilabel(
        tmp_path_factory.mktemp("ml") / "demo_multilabel", N_IMAGES
    )


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    dest = tmp_path_factory.mktemp("pts") / "demo_points"
    return demodata.make_demo_points(dest, n_persons=N_PERSONS, frames_per_person=N_FRAMES)


def test_multilabel_csv_like_pascal_2007(multilabel):
    df = pd.read_csv(multilabel / "train.csv")
    assert list(df.columns) == ["fname", "labels", "is_valid"]
    assert len(df) == N_IMAGES and df.fname.is_unique
    assert df.fname.str.fullmatch(r"\d{6}\.jpg").all() and df.fname.is_monotonic_increasing
    assert df.is_valid.dtype == bool and df.is_valid.any() and not df.is_valid.all()
    labels = df.labels.fillna("")
    assert (labels == "").any(), "some images have no object"
    vocab = {lbl for s in labels for lbl in s.split()}
    assert vocab <= set(demodata.VOC_CLASSES) and "person" in vocab and len(vocab) >= 8
    assert labels.str.split().map(len).max() <= demodata.MAX_OBJECTS
    test = pd.read_csv(multilabel / "test.csv")
    assert list(test.columns) == ["fname", "labels", "is_valid"] and len(test) == N_IMAGES // 10
    assert not set(test.fname) & set(df.fname)
    assert all((multilabel / "test" / f).is_file() for f in test.fname)


def test_multilabel_images_have_voc_sizes(multilabel):
    files = get_image_files(multilabel / "train")
    assert len(files) == N_IMAGES
    sizes = [Image.open(f).size for f in files]
    assert all(Image.open(f).mode == "RGB" for f in files[:5])
    assert all(max(w, h) <= 500 for w, h in sizes)
    landscape = sum(w == 500 and 333 <= h <= 375 for w, h in sizes)
    assert landscape >= N_IMAGES // 2


def test_multilabel_is_deterministic(multilabel, tmp_path):
    again = demodata.make_demo_multilabel(tmp_path / "again", N_IMAGES, seed=0)
    assert (again / "train.csv").read_bytes() == (multilabel / "train.csv").read_bytes()
    name = pd.read_csv(multilabel / "train.csv").fname[3]
    assert (again / "train" / name).read_bytes() == (multilabel / "train" / name).read_bytes()
    other = demodata.make_demo_multilabel(tmp_path / "other", 10, seed=1)
    assert (other / "train.csv").read_bytes() != (multilabel / "train.csv").read_bytes()


def test_never_overwrites_an_existing_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        demodata.make_demo_multilabel(tmp_path / "mine", 2)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left


def test_worker_processes_give_the_same_bytes(tmp_path):
    one = demodata.make_demo_multilabel(tmp_path / "one", 12, seed=3, workers=1)
    two = demodata.make_demo_multilabel(tmp_path / "two", 12, seed=3, workers=2)
    for f in get_image_files(one):
        assert f.read_bytes() == (two / f.relative_to(one)).read_bytes()


def test_every_class_draws(tmp_path):
    rng = np.random.default_rng(0)
    for name in demodata.VOC_CLASSES:
        obj = demodata.render_object(name, 60, rng)
        alpha = np.asarray(obj)[..., 3]
        assert obj.mode == "RGBA" and (alpha > 0).mean() > 0.05, name


def test_points_layout_like_biwi(points):
    persons = [f"{i:02d}" for i in range(1, N_PERSONS + 1)]
    top = sorted(p.name for p in points.ls())
    assert top == sorted(persons + [f"{p}.obj" for p in persons])
    assert (points / "13").is_dir()
    for person in persons:
        names = sorted(p.name for p in (points / person).ls())
        assert names[:2] == ["depth.cal", "frame_" + names[2][6:11] + "_pose.txt"]
        assert "rgb.cal" in names and len(names) == 2 + 2 * N_FRAMES
    frames = sorted(int(p.name[6:11]) for p in (points / "01").ls() if p.name.endswith("rgb.jpg"))
    assert 3 <= frames[0] <= 5
    img = Image.open(points / "01" / f"frame_{frames[0]:05d}_rgb.jpg")
    assert img.size == (640, 480) and img.mode == "RGB"


def test_points_calibration_reads_like_the_book(points):
    cal = np.genfromtxt(points / "01" / "rgb.cal", skip_footer=6)
    assert cal.tolist() == [[517.679, 0, 320], [0, 517.679, 240.5], [0, 0, 1]]
    lines = (points / "01" / "rgb.cal").read_text().split("\n")
    assert lines[3] == "" and lines[4] == "0 0 0 0 " and len(lines[6].split()) == 3


def test_pose_files_and_get_ctr_match_the_drawn_centre(points):
    cal = np.genfromtxt(points / "01" / "rgb.cal", skip_footer=6)

    def get_ctr(f):  # the book's function, verbatim in spirit
        ctr = np.genfromtxt(str(f)[:-7] + "pose.txt", skip_header=3)
        c1 = ctr[0] * cal[0][0] / ctr[2] + cal[0][2]
        c2 = ctr[1] * cal[1][1] / ctr[2] + cal[1][2]
        return np.array([c1, c2])

    for person in (1, 13):
        specs = demodata.frame_specs(0, person, N_FRAMES)
        for spec in specs:
            f = points / f"{person:02d}" / f"frame_{spec.frame:05d}_rgb.jpg"
            assert np.allclose(get_ctr(f), spec.centre, atol=1e-9)
            assert 0 < spec.centre[0] < 640 and 0 < spec.centre[1] < 480
            assert -150 <= spec.x <= 150 and -120 <= spec.y <= 120 and 700 <= spec.z <= 1100
        text = (points / f"{person:02d}" / f"frame_{specs[0].frame:05d}_pose.txt").read_text()
        lines = text.split("\n")
        assert len(lines) == 6 and lines[3] == "" and all(ln.endswith(" ") for ln in lines[:3])
        rot = np.array([[float(v) for v in ln.split()] for ln in lines[:3]])
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-5)


@pytest.mark.parametrize("roll", [0.0, 90.0])
def test_head_is_drawn_centred_on_the_projection(roll):
    # with no turn the head's silhouette is left-right symmetric; a 90 degree roll turns that
    # symmetry into an up-down one, so the silhouette's centroid checks both coordinates
    who = points_module._make_person(0, 1)
    axis = 0 if roll == 0 else 1
    for x, y, z in [(-140.5, 100.25, 712.0), (12.345, -7.5, 905.5), (133.3, -118.0, 1090.0)]:
        spec = demodata.FrameSpec(1, x, y, z, 0.0, 0.0, roll, demodata.project_head(x, y, z))
        patch, ox, oy = points_module._head_patch(spec, who, np.random.default_rng(0))
        alpha = np.asarray(patch)[..., 3].astype(float)
        coords = np.indices(alpha.shape)[1 - axis] + (ox, oy)[axis]
        centroid = (coords * alpha).sum() / alpha.sum()
        assert abs(centroid - spec.centre[axis]) < 0.25


def test_points_are_deterministic(points, tmp_path):
    again = demodata.make_demo_points(tmp_path / "again", n_persons=2, frames_per_person=N_FRAMES)
    frame = sorted((again / "02").ls(file_exts=(".jpg",)))[1]
    assert frame.read_bytes() == (points / "02" / frame.name).read_bytes()
    pose = str(frame)[:-7] + "pose.txt"
    assert open(pose).read() == (points / "02" / (frame.name[:-7] + "pose.txt")).read_text()


def text_digest(root: Path) -> str:
    """sha256 over the relative path and bytes of every file but the JPEGs, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".jpg"):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def test_text_files_match_the_pinned_generator_output(tmp_path):
    # digests of what imageblocks/data/demo.py wrote before it became the demodata package: CSVs,
    # pose, calibration and .obj files depend only on numpy's seeded streams, so any change to the
    # order of random draws shows here (JPEG bytes also depend on the Pillow version: not pinned)
    ml = demodata.make_demo_multilabel(tmp_path / "ml", 12, seed=3)
    pts = demodata.make_demo_points(tmp_path / "pts", n_persons=2, frames_per_person=3, seed=5)
    assert text_digest(ml) == "718c46ef92892fe68ea2248df0ccfe8d3300f32c1afd7e020f01cdba71c9c47f"
    assert text_digest(pts) == "02893c60b9afafdd2f62fefd9defbeb56a32f7807b2cfcb0e3fe2eaa5f2a1fa7"
