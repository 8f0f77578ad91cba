"""PointBlock(flip_pairs=...): a mirror swaps the identities of paired landmarks, numerically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import ImageBlock, PointBlock
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.model_config import ExportError, validate_config
from imageblocks.transforms.batch import aug_transforms
from imageblocks.transforms.geometry import (
    AffineWarp,
    Flip,
    dihedral_mat,
    warp_batch,
    warp_points,
)
from imageblocks.transforms.item import FlipItem
from imageblocks.transforms.pairs import check_flip_pairs, pair_permutation

PAIRS = ((0, 1), (3, 4))  # point 2 has no partner (the nose)
KINDS = ("image", "points")


def _batch(b: int = 6, n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 16, 20, generator=g), torch.rand(b, n, 2, generator=g) * 1.6 - 0.8


def _mirror(points: torch.Tensor, pairs=PAIRS) -> torch.Tensor:
    """What a horizontal mirror does to points: x negated, each pair's identities swapped."""
    out = points.clone()
    out[..., 0] = -out[..., 0]
    return out[:, pair_permutation(pairs, points.shape[1])]


def test_a_flipped_batch_swaps_paired_points():
    img, pts = _batch()
    out_img, out_pts = Flip(p=1.0, flip_pairs=PAIRS)((img, pts), KINDS)
    assert torch.allclose(out_img, img.flip(-1), atol=1e-6)
    # point 0 of the flipped image is the mirror of point 1 of the original, and so on
    assert torch.allclose(out_pts[:, 0], pts[:, 1] * torch.tensor([-1.0, 1.0]), atol=1e-6)
    assert torch.allclose(out_pts[:, 1], pts[:, 0] * torch.tensor([-1.0, 1.0]), atol=1e-6)
    assert torch.allclose(out_pts[:, 2], pts[:, 2] * torch.tensor([-1.0, 1.0]), atol=1e-6)
    assert torch.allclose(out_pts, _mirror(pts), atol=1e-6)
    # without pairs a flip moves the points and keeps their order (the old behaviour)
    _, plain = Flip(p=1.0)((img, pts), KINDS)
    assert torch.allclose(plain, pts * torch.tensor([-1.0, 1.0]), atol=1e-6)


def test_only_mirrored_samples_swap():
    img, pts = _batch(b=64)
    torch.manual_seed(0)
    (_, out), mats = Flip(p=0.5, flip_pairs=PAIRS).warp((img, pts), KINDS)
    flipped = mats[:, 0, 0] < 0
    assert 0 < int(flipped.sum()) < 64
    expected = torch.where(flipped[:, None, None], _mirror(pts), pts)
    assert torch.allclose(out, expected, atol=1e-6)


def test_a_vertical_flip_is_a_mirror_too_and_a_half_turn_is_not():
    img, pts = _batch(b=2)
    vflip, half_turn = dihedral_mat(torch.tensor([2, 2])), dihedral_mat(torch.tensor([3, 3]))
    _, out = warp_batch((img, pts), KINDS, vflip, flip_pairs=PAIRS)
    swapped = pts[:, pair_permutation(PAIRS, 5)]
    assert torch.allclose(out, swapped * torch.tensor([1.0, -1.0]), atol=1e-6)
    _, out = warp_batch((img, pts), KINDS, half_turn, flip_pairs=PAIRS)
    assert torch.allclose(out, -pts, atol=1e-6)  # rotated 180 degrees: left stays left


def random_warp(size: tuple[int, int], align_corners: bool, **kwargs) -> AffineWarp:
    """Every random part on: dihedral flips (mirrors among them), rotation, zoom, perspective."""
    return AffineWarp(
        size,
        do_flip=True,
        flip_vert=True,
        max_rotate=kwargs.pop("max_rotate", 30),
        max_zoom=kwargs.pop("max_zoom", 1.5),
        max_warp=kwargs.pop("max_warp", 0.3),
        p_affine=1.0,
        align_corners=align_corners,
        **kwargs,
    )


@pytest.mark.parametrize("align_corners", [False, True])
def test_the_inverse_warp_puts_points_back(align_corners):
    img, pts = _batch(b=32)
    tfm = random_warp((12, 24), align_corners, flip_pairs=PAIRS)
    torch.manual_seed(1)
    (out_img, out_pts), mats = tfm.warp((img, pts), KINDS)
    assert bool((torch.linalg.det(mats) < 0).any()) and bool((torch.linalg.det(mats) > 0).any())
    out_hw = tuple(out_img.shape[-2:])
    back = warp_points(out_pts, mats, (16, 20), out_hw, align_corners, PAIRS, inverse=True)
    assert torch.allclose(back, pts, atol=1e-4)
    assert torch.allclose(warp_points(pts, mats, (16, 20), out_hw, align_corners, PAIRS), out_pts)


def test_item_flip_swaps_paired_points():
    img = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    pts = np.array([[-0.5, 0.1], [0.5, 0.2], [0.0, 0.3], [-0.2, -0.4], [0.3, -0.6]], np.float32)
    out_img, out_pts = FlipItem(p=1.0, flip_pairs=PAIRS)(img, pts, train=True)
    assert np.array_equal(np.asarray(out_img), np.asarray(img)[:, ::-1])
    expected = _mirror(torch.from_numpy(pts)[None])[0].numpy()
    assert np.allclose(out_pts, expected)
    assert "flip_pairs" not in FlipItem(flip_pairs=PAIRS).config()  # config.json has the target's


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([(0, 0)], "two different point indices"),
        ([(0, 1), (1, 2)], "point 1 is in two flip pairs"),
        ([(0, -1)], "two different point indices"),
        ([(0, 1.5)], "two different point indices"),
        ([(0, 1, 2)], "two different point indices"),
        (["ab"], "two different point indices"),
    ],
)
def test_bad_flip_pairs_are_refused(pairs, message):
    with pytest.raises(ValueError, match=message):
        PointBlock(flip_pairs=pairs)
    assert check_flip_pairs([[2, 0]]) == ((2, 0),)


def test_a_pair_beyond_the_points_says_so():
    img, pts = _batch(n=2)
    with pytest.raises(ValueError, match=r"names point 4, but the targets have 2 points"):
        Flip(p=1.0, flip_pairs=((0, 4),))((img, pts), KINDS)


def _faces(root, n: int = 12) -> list:
    """Upright "faces" seen from the front: the person's left eye (point 0, a red dot) on the
    image's right, the right eye (point 1, blue) on its left, the mouth (point 2, green) below."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        arr = np.zeros((40, 40, 3), np.uint8)
        eye_y, dx = rng.integers(6, 14), rng.integers(5, 12)
        pts = [(20 + dx, eye_y), (20 - dx, eye_y + rng.integers(-3, 4)), (20, 30)]
        for c, (x, y) in enumerate(pts):
            arr[y - 2 : y + 2, x - 2 : x + 2, (0, 2, 1)[c]] = 255
        Image.fromarray(arr).save(root / f"{i}.png")
        items.append((root / f"{i}.png", [(x, y) for x, y in pts], i % 4 == 0))
    return items


def _face_block(pairs=((0, 1),), **kwargs) -> DataBlock:
    return DataBlock(
        blocks=(ImageBlock, PointBlock(flip_pairs=pairs)),
        get_x=lambda o: o[0],
        get_y=lambda o: o[1],
        splitter=lambda its: ([i for i, o in enumerate(its) if not o[2]], [0, 4, 8]),
        **kwargs,
    )


def _handedness(pts: torch.Tensor) -> torch.Tensor:
    """The sign of the (left eye, right eye, mouth) triangle per sample: a mirror flips it."""
    a, b = pts[:, 1] - pts[:, 0], pts[:, 2] - pts[:, 0]
    return torch.sign(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])


def _colour_at(img: torch.Tensor, pt: torch.Tensor) -> str:
    """The colour of the dot at the point (x, y in [-1, 1]) of a (3, H, W) image."""
    h, w = img.shape[-2:]
    x, y = int((pt[0] + 1) / 2 * w), int((pt[1] + 1) / 2 * h)
    return "rgb"[int(img[:, y, x].argmax())]


@pytest.mark.parametrize("where", ["batch", "item"])
def test_a_data_block_gives_its_transforms_the_pairs(tmp_path, where):
    """Through the whole loader: after a mirror, the "left eye" is the dot that was the right
    eye (blue), now on the image's right where a left eye is; without pairs it stays red."""
    tfms = {"batch_tfms": [Flip(p=1.0)]} if where == "batch" else {"item_tfms": FlipItem(p=1.0)}
    items = _faces(tmp_path)
    dls = _face_block(**tfms).dataloaders(items, bs=8, num_workers=0, device="cpu")
    kept = dls.train.after_batch if where == "batch" else dls.train.dataset.item_tfms
    assert kept[0].flip_pairs == ((0, 1),)
    given = tfms.get("batch_tfms", [tfms.get("item_tfms")])[0]
    assert given.flip_pairs is None  # the user's transform is not changed: the loader has a copy
    img, pts = dls.one_batch()
    assert [_colour_at(im, p[0]) + _colour_at(im, p[1]) for im, p in zip(img, pts)] == ["br"] * 8
    assert bool((pts[:, 0, 0] > pts[:, 1, 0]).all())  # the left eye on the image's right
    assert bool((_handedness(pts) == _handedness(dls.valid.one_batch()[1])[0]).all())
    unpaired = _face_block(pairs=None, **tfms).dataloaders(items, bs=8, num_workers=0)
    img, pts = unpaired.one_batch()
    assert [_colour_at(im, p[0]) for im, p in zip(img, pts)] == ["r"] * 8
    assert bool((pts[:, 0, 0] < pts[:, 1, 0]).all())


def test_every_mirror_of_aug_transforms_keeps_the_handedness(tmp_path):
    """Dihedral flips (vertical flips, transposes), rotation, zoom, warp: with the pairs every
    sample's landmark triangle keeps its handedness; without them the mirrored ones flip it."""
    items = _faces(tmp_path)
    tfms = aug_transforms(flip_vert=True, max_rotate=20, max_warp=0.2, p_affine=1.0)
    paired = _face_block(batch_tfms=tfms).dataloaders(items, bs=8, num_workers=0, device="cpu")
    unpaired = _face_block(pairs=None, batch_tfms=tfms).dataloaders(items, bs=8, num_workers=0)
    upright = _handedness(paired.valid.one_batch()[1])[0]
    torch.manual_seed(3)
    assert bool((_handedness(paired.one_batch()[1]) == upright).all())
    torch.manual_seed(3)
    assert bool((_handedness(unpaired.one_batch()[1]) == -upright).any())


def test_export_carries_the_pairs(tmp_path):
    dls = _face_block(batch_tfms=aug_transforms(size=32)).dataloaders(
        _faces(tmp_path), bs=4, num_workers=0, device="cpu"
    )
    learn = vision_learner(dls, "resnet18", pretrained=False)
    folder = learn.export(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["flip_pairs"] == [[0, 1]]
    loaded = load_learner(folder, device="cpu")
    assert loaded.dls.target_block.flip_pairs == ((0, 1),)
    assert loaded.dls.valid.after_batch[0].flip_pairs == ((0, 1),)

    for bad, field in [
        ([[0, 3]], "flip_pairs[0][1]"),  # the model has 3 points
        ([[0, 0]], "flip_pairs"),
        ("01", "flip_pairs"),
    ]:
        with pytest.raises(ExportError, match=field.replace("[", r"\[")):
            validate_config({**config, "flip_pairs": bad})
    multilabel = {**config, "task": "multilabel", "vocab": list("abcdef"), "loss": None}
    with pytest.raises(ExportError, match="flip_pairs must be null for a multilabel model"):
        validate_config(multilabel)
