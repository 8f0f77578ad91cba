"""learn.tta: fastai's averaging and blending, and key points mapped back before averaging."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from imageblocks.data.blocks import PointBlock
from imageblocks.data.loaders import DataLoader, DataLoaders
from imageblocks.learn.learner import Learner, vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.tta import augment
from imageblocks.transforms.geometry import AffineWarp
from imageblocks.transforms.item import RandomResizedCrop
from imageblocks.transforms.normalize import Normalize
from imageblocks.transforms.pairs import pair_permutation
from tests.conftest import voc_block
from tests.test_flip_pairs import _face_block, _faces, random_warp

# the points every image holds, in [-1, 1] of the plain image; 0/1 and 3/4 are mirror pairs
POINTS = torch.tensor([[-0.3, -0.2], [0.3, -0.25], [0.05, 0.1], [-0.2, 0.3], [0.25, 0.35]])
PAIRS = ((0, 1), (3, 4))


def _coordinate_image(h: int, w: int) -> torch.Tensor:
    """A (3, h, w) float image whose channels 0 and 1 hold each pixel centre's own x and y."""
    xs = (torch.arange(w) * 2 + 1) / w - 1
    ys = (torch.arange(h) * 2 + 1) / h - 1
    return torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.zeros(h, w)])


class ReadsPoints(nn.Module):
    """An ideal key-point "model": it reads from the pixels how its input was warped (the
    homography from output pixels to the plain image's coordinates, fitted on the central
    pixels) and answers where `POINTS` are in that input, mirrored pairs swapped as a model
    trained with `PointBlock(flip_pairs=PAIRS)` would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = x.double()
        us = ((torch.arange(w) * 2 + 1) / w - 1).double()
        vs = ((torch.arange(h) * 2 + 1) / h - 1).double()
        v, u = torch.meshgrid(vs, us, indexing="ij")
        centre = (u.abs() < 0.4) & (v.abs() < 0.4)
        u, v = u[centre], v[centre]
        out = []
        for i in range(b):
            X, Y = x[i, 0][centre], x[i, 1][centre]
            one, zero = torch.ones_like(u), torch.zeros_like(u)
            rows = torch.cat(
                [
                    torch.stack([u, v, one, zero, zero, zero, -X * u, -X * v], 1),
                    torch.stack([zero, zero, zero, u, v, one, -Y * u, -Y * v], 1),
                ]
            )
            h8 = torch.linalg.lstsq(rows, torch.cat([X, Y])[:, None]).solution[:, 0]
            hom = torch.cat([h8, torch.ones(1, dtype=h8.dtype)]).view(3, 3)
            pts = (
                torch.cat([POINTS.double(), torch.ones(len(POINTS), 1)], 1)
                @ torch.linalg.inv(hom).T
            )
            pts = pts[:, :2] / pts[:, 2:]
            if torch.linalg.det(hom) < 0:  # a mirrored input: the pairs trade names
                pts = pts[pair_permutation(PAIRS, len(pts))]
            out.append(pts.reshape(-1))
        return torch.stack(out).float()


def _points_learner(tfm: AffineWarp, n: int = 12) -> Learner:
    items = [(_coordinate_image(30, 40), POINTS.clone()) for _ in range(n)]
    kinds = ("image", "points")
    loaders = [
        DataLoader(items, bs=5, after_batch=[tfm], kinds=kinds, train=train)
        for train in (True, False)
    ]
    dls = DataLoaders(*loaders, target_block=PointBlock(flip_pairs=PAIRS), c=10)
    return Learner(dls, ReadsPoints(), precision="fp32", channels_last=False)


@pytest.mark.parametrize("align_corners", [False, True])
def test_tta_puts_points_back_in_place(align_corners):
    tfm = random_warp((24, 36), align_corners, max_rotate=20, max_zoom=1.3, max_warp=0.15)
    learn = _points_learner(tfm)
    torch.manual_seed(0)
    preds, targs = learn.get_preds()
    assert torch.allclose(preds, targs, atol=1e-4)  # the "model" reads the plain images right

    # on an augmented batch its answers are far from POINTS: they are in the warped frame
    torch.manual_seed(0)
    xs, warps = augment((torch.stack([_coordinate_image(30, 40)] * 8),), ("image",), [tfm])
    warped = learn.model(*xs).view(8, -1, 2)
    assert (warped - POINTS).abs().amax() > 0.1
    assert len(warps) == 1 and bool((torch.linalg.det(warps[0][0]) < 0).any())

    torch.manual_seed(0)
    (aug, plain), targs = learn.tta(n=4, beta=None)
    assert aug.shape == targs.shape == (12, 5, 2)
    assert torch.allclose(aug, targs, atol=1e-4)  # every pass mapped back before averaging
    assert torch.allclose(plain, targs, atol=1e-4)
    blended, _ = learn.tta(n=2)
    assert torch.allclose(blended, targs, atol=1e-4)


def _voc_learner(voc, item_tfms):
    df, dblock = voc_block(voc, item_tfms)
    dls = dblock.dataloaders(df, bs=4, num_workers=0, device="cpu")
    return vision_learner(dls, "resnet18", pretrained=False, normalize=False)


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def test_tta_for_labels_averages_and_blends_as_fastai(voc):
    learn = _voc_learner(voc, RandomResizedCrop(32, min_scale=0.35))
    plain, targs = learn.get_preds()
    _seeded()
    (aug, plain_again), targs_again = learn.tta(n=3, beta=None)
    assert torch.equal(plain_again, plain) and torch.equal(targs_again, targs)
    assert not torch.allclose(aug, plain, atol=1e-4)  # random crops as in training
    assert aug.min() >= 0 and aug.max() <= 1  # averaged probabilities (after the sigmoid)
    _seeded()
    blended, _ = learn.tta(n=3)
    assert torch.allclose(blended, 0.75 * aug + 0.25 * plain, atol=1e-6)
    _seeded()
    passes = []
    for _ in range(3):  # use_max: the largest of the passes and the plain prediction
        passes.append(learn.tta(n=1, beta=None)[0][0])
    _seeded()
    most, _ = learn.tta(n=3, use_max=True)
    assert torch.allclose(most, torch.stack([plain, *passes]).amax(0), atol=1e-6)


def test_tta_with_new_batch_tfms_keeps_the_normalisation(voc):
    learn = _voc_learner(voc, RandomResizedCrop(32, min_scale=0.35))
    norm = Normalize.from_stats([0.5] * 3, [0.25] * 3)
    for dl in learn.dls.loaders:
        dl.after_batch = [norm]
    plain, _ = learn.get_preds()
    _seeded()
    (_, plain_again), _ = learn.tta(n=1, beta=None, batch_tfms=[AffineWarp(do_flip=True)])
    assert torch.allclose(plain_again, plain, atol=1e-6)  # Normalize kept, a flip only on passes


def test_tta_with_nothing_random_says_what_to_pass():
    learn = _points_learner(AffineWarp(size=(24, 36)))
    with pytest.raises(ValueError, match=r"batch_tfms=aug_transforms\(size=...\)"):
        learn.tta()
    with pytest.raises(ValueError, match="at least one augmented pass"):
        learn.tta(n=0, batch_tfms=[AffineWarp(do_flip=True)])


def test_a_loaded_model_uses_its_flip_pairs_in_tta(tmp_path):
    """A points model loaded from its folder: its TTA gets the pairs from config.json."""
    items = _faces(tmp_path)
    dls = _face_block(batch_tfms=[AffineWarp(size=32)]).dataloaders(items, bs=4, num_workers=0)
    learn = vision_learner(dls, "resnet18", pretrained=False, y_range=(-1, 1))
    loaded = load_learner(learn.export(tmp_path / "m"), device="cpu")
    assert loaded.dls.target_block.flip_pairs == ((0, 1),)
    test = loaded.dls.test_dl([o[0] for o in items[:3]])
    _seeded()
    preds, targs = loaded.tta(dl=test, n=2, batch_tfms=[AffineWarp(size=32, do_flip=True)])
    assert preds.shape == (3, 6) and targs is None  # as get_preds gives them with no targets
