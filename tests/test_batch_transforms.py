"""Batch transforms: shapes, points following pixels, validation, lighting, Normalize, seeding."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from imageblocks.transforms.base import BatchTransform
from imageblocks.transforms.batch import aug_transforms
from imageblocks.transforms.geometry import (
    AffineWarp,
    Flip,
    Rotate,
    Warp,
    Zoom,
    dihedral_mat,
    flip_mat,
    rotate_mat,
    warp_batch,
    warp_mat,
    zoom_mat,
)
from imageblocks.transforms.lighting import Brightness, Contrast, Lighting
from imageblocks.transforms.normalize import Normalize, imagenet_stats

KINDS = ("image", "points", "target")


def blobs(xy_px: torch.Tensor, h: int, w: int, sigma: float = 2.0) -> torch.Tensor:
    """A batch of 3-channel images, each a Gaussian blob centred at continuous pixel (x, y)."""
    xs = torch.arange(w) + 0.5
    ys = torch.arange(h) + 0.5
    dx = (xs[None, None, :] - xy_px[:, 0, None, None]) ** 2
    dy = (ys[None, :, None] - xy_px[:, 1, None, None]) ** 2
    img = torch.exp(-(dx + dy) / (2 * sigma**2))
    return img[:, None].expand(-1, 3, -1, -1).contiguous()


def to_rel(xy_px: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel coords -> [-1, 1] coords (align_corners=False convention), shape (B, 1, 2)."""
    return (xy_px * 2 / torch.tensor([w, h]) - 1)[:, None]


def centroid_px(img: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centroid (B, 2) in continuous pixel coords of channel 0."""
    i = img[:, 0]
    h, w = i.shape[-2:]
    total = i.sum((1, 2))
    cx = (i.sum(1) * (torch.arange(w) + 0.5)).sum(1) / total
    cy = (i.sum(2) * (torch.arange(h) + 0.5)).sum(1) / total
    return torch.stack([cx, cy], 1)


def assert_points_follow(img: torch.Tensor, pts: torch.Tensor, tol: float = 1.0) -> None:
    """The blob's centroid in ``img`` is within ``tol`` pixels of the mapped point."""
    h, w = img.shape[-2:]
    expected = (pts[:, 0] + 1) * torch.tensor([w, h]) / 2
    err = (centroid_px(img) - expected).abs().max().item()
    assert err < tol, f"blob centroid is {err:.2f} px away from the transformed point"


def blob_batch(n: int = 6, h: int = 96, w: int = 128, spread: float = 15.0, sigma: float = 2.0):
    """Blobs near the centre at random sub-pixel positions, with their points and a target."""
    g = torch.Generator().manual_seed(1)
    xy = torch.tensor([w / 2, h / 2]) + (torch.rand(n, 2, generator=g) * 2 - 1) * spread
    return blobs(xy, h, w, sigma), to_rel(xy, h, w), torch.arange(n)


def test_shapes_dtypes_and_size():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 480, 640)
    pts = torch.rand(4, 1, 2) * 2 - 1
    y = torch.randint(0, 2, (4, 20)).float()
    tfms = sorted(
        [*aug_transforms(size=(240, 320)), Normalize.from_stats(*imagenet_stats)],
        key=lambda t: t.order,
    )
    for train in (True, False):
        b = (x, pts, y)
        for t in tfms:
            b = t(b, KINDS, train)
        assert b[0].shape == (4, 3, 240, 320) and b[0].dtype == torch.float32
        assert b[0].device == x.device
        assert b[1].shape == (4, 1, 2) and b[1].dtype == torch.float32
        assert b[2] is y
    assert tfms[0].size == (240, 320) and AffineWarp(size=64).size == (64, 64)
    assert AffineWarp().size is None


def test_aug_transforms_composition_and_repr():
    tfms = aug_transforms()
    assert [type(t) for t in tfms] == [AffineWarp, Lighting]
    assert tfms[0].order < tfms[1].order < Normalize([0.5], [0.5]).order
    geo = aug_transforms(size=(240, 320), mult=2.0)[0]
    assert geo.max_rotate == 20.0 and geo.max_warp == pytest.approx(0.4)
    r = repr(geo)
    assert (
        r.startswith("AffineWarp -- {") and "'size': (240, 320)" in r and "'max_rotate': 20.0" in r
    )
    assert repr(Normalize.from_stats(*imagenet_stats)).startswith("Normalize -- {'mean': (0.485")
    # nothing geometric and no size: no geometric transform; no lighting: none either
    none = aug_transforms(do_flip=False, max_rotate=0, max_zoom=1, max_warp=0, max_lighting=0)
    assert none == []
    extra = Normalize([0.5], [0.5])
    assert aug_transforms(xtra_tfms=extra)[-1] is extra
    assert isinstance(aug_transforms(max_lighting=0)[-1], AffineWarp)
    assert isinstance(BatchTransform(), BatchTransform)


@pytest.mark.parametrize(
    "mat",
    [
        flip_mat(torch.ones(6)),
        rotate_mat(torch.full((6,), 30.0), 128 / 96),
        zoom_mat(torch.full((6,), 1.5), 0.2, -0.15),
        warp_mat(torch.full((6,), 0.15), torch.full((6,), -0.1)),
        dihedral_mat(torch.arange(6) + 2),
        flip_mat(torch.ones(6))
        @ rotate_mat(torch.full((6,), -25.0), 128 / 96)
        @ warp_mat(torch.full((6,), -0.1), torch.full((6,), 0.2))
        @ zoom_mat(torch.full((6,), 1.3), -0.1, 0.1),
    ],
    ids=["flip", "rotate30", "zoom1.5", "warp", "dihedral", "composed"],
)
@pytest.mark.parametrize("size", [None, (48, 64)])
def test_points_follow_pixels_explicit_matrices(mat, size):
    x, pts, y = blob_batch(sigma=3.0 if size else 2.0)
    xo, po, yo = warp_batch((x, pts, y), KINDS, mat, size)
    assert xo.shape[-2:] == (size or (96, 128))
    assert yo is y
    assert_points_follow(xo, po, tol=0.5)


@pytest.mark.parametrize(
    "tfm",
    [
        Flip(p=1.0),
        Rotate(max_deg=30.0, p=1.0),
        Zoom(min_zoom=1.5, max_zoom=1.5, p=1.0),
        Warp(magnitude=0.2, p=1.0),
        AffineWarp(do_flip=True, flip_vert=True, p_flip=1.0),
        *aug_transforms(p_affine=1.0, max_lighting=0.0),
        *aug_transforms(size=(64, 80), p_affine=1.0, max_rotate=20, max_lighting=0.0),
        *aug_transforms(size=48, p_affine=1.0, min_zoom=0.8, max_lighting=0.0, flip_vert=True),
        *aug_transforms(size=(48, 64), min_scale=0.5, max_lighting=0.0),
        *aug_transforms(size=(48, 64), p_affine=1.0, align_corners=True, max_lighting=0.0),
    ],
    ids=[
        "flip",
        "rotate",
        "zoom",
        "warp",
        "dihedral",
        "aug",
        "aug-size",
        "aug-square",
        "rrc",
        "ac",
    ],
)
def test_points_follow_pixels_random_draws(tfm):
    torch.manual_seed(3)
    x, pts, y = blob_batch(n=8, sigma=3.0)
    xo, po, yo = tfm((x, pts, y), KINDS, True)
    assert not torch.equal(po, pts)  # something moved
    assert yo is y
    assert_points_follow(xo, po, tol=0.75)


def test_forced_zoom_keeps_window_inside_and_zooms():
    torch.manual_seed(0)
    mats, affine = Zoom(1.5, 1.5, p=1.0).get_matrices(64, (96, 128))
    assert affine
    assert torch.allclose(mats[:, 0, 0], torch.full((64,), 1 / 1.5))
    # the corners of the output land inside the input
    corners = mats[:, :2, :2].abs().sum(-1) + mats[:, :2, 2].abs()
    assert (corners <= 1 + 1e-6).all()


def test_flip_equals_torch_flip():
    x = torch.rand(3, 3, 7, 10)  # asymmetric
    pts = torch.tensor([[[-0.5, 0.25]]]).expand(3, 1, 2)
    xo, po, _ = Flip(p=1.0)((x, pts, None), KINDS, True)
    assert torch.allclose(xo, torch.flip(x, dims=[-1]), atol=1e-5)
    assert torch.allclose(po, pts * torch.tensor([-1.0, 1.0]), atol=1e-6)


def test_validation_is_identity_or_pure_resize():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 48)
    pts = torch.rand(2, 1, 2) * 2 - 1
    b = (x, pts, None)
    for t in aug_transforms():
        out = t(b, KINDS, False)
        assert out[0] is x and out[1] is pts
    xo, po, _ = aug_transforms(size=(16, 24))[0](b, KINDS, False)
    assert torch.allclose(xo, F.interpolate(x, size=(16, 24), mode="bilinear"), atol=1e-5)
    assert torch.equal(po, pts)
    # the resize is the same sampling as the general path with identity matrices
    for ac in (False, True):
        for size in ((16, 24), (40, 72)):
            eye = torch.eye(3).expand(2, 3, 3)
            fast = warp_batch(b, KINDS, None, size, align_corners=ac)
            grid = warp_batch(b, KINDS, eye, size, align_corners=ac)
            assert torch.allclose(fast[0], grid[0], atol=1e-5)
            assert torch.allclose(fast[1], grid[1], atol=1e-6)
    # lighting is for training only
    assert Lighting(0.5, 0.5, p=1.0)(b, KINDS, False)[0] is x


def test_fast_path_when_nothing_to_do():
    x = torch.rand(2, 3, 8, 8)
    b = (x, torch.zeros(2, 1, 2), None)
    assert AffineWarp()(b, KINDS, True)[0] is x
    assert AffineWarp(size=8)(b, KINDS, False)[0] is x
    assert warp_batch(b, KINDS, None)[0] is x


def test_per_sample_randomness_and_batch_mode():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).expand(4, 3, 32, 32).contiguous()
    b = (x, torch.zeros(4, 1, 2), None)
    out = b
    for t in aug_transforms(p_affine=1.0):
        out = t(out, KINDS, True)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(out[0][i], out[0][j])
    out = b
    for t in aug_transforms(p_affine=1.0, p_lighting=1.0, batch=True):
        out = t(out, KINDS, True)
    assert all(torch.allclose(out[0][0], out[0][i]) for i in range(4))


def test_reproducible_with_manual_seed_and_generator():
    x = torch.rand(4, 3, 24, 32)
    b = (x, torch.zeros(4, 1, 2), None)

    def run(tfms):
        out = b
        for t in tfms:
            out = t(out, KINDS, True)
        return out

    tfms = aug_transforms(size=16, min_scale=0.5)
    torch.manual_seed(0)
    a = run(tfms)
    torch.manual_seed(0)
    c = run(tfms)
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    gen = torch.Generator()
    geo = AffineWarp(max_rotate=30, max_warp=0.3, generator=gen)
    gen.manual_seed(5)
    a = geo(b, KINDS, True)
    gen.manual_seed(5)
    assert torch.equal(a[0], geo(b, KINDS, True)[0])


def test_lighting_stays_in_range_and_changes_brightness_and_contrast():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) * 0.5 + 0.25
    x[:, :, 0, 0] = 0.0
    x[:, :, 0, 1] = 1.0
    pts = torch.zeros(8, 1, 2)
    xo, po, _ = Lighting(0.5, 0.5, p=1.0)((x, pts, None), KINDS, True)
    assert xo.shape == x.shape and xo.dtype == x.dtype and po is pts
    assert xo.min() >= 0 and xo.max() <= 1 and torch.isfinite(xo).all()
    bright = Brightness(0.5, p=1.0)((x,), ("image",), True)[0]
    delta = bright.mean((1, 2, 3)) - x.mean((1, 2, 3))
    assert (delta.abs() > 1e-3).all() and (delta > 0).any() and (delta < 0).any()
    contrast = Contrast(0.5, p=1.0)((x,), ("image",), True)[0]
    assert ((contrast.std((1, 2, 3)) - x.std((1, 2, 3))).abs() > 1e-3).all()
    # neutral draws (p=0) leave the images unchanged
    assert torch.allclose(Lighting(0.5, 0.5, p=0.0)((x,), ("image",), True)[0], x, atol=1e-6)


def test_normalize_applies_and_decodes_on_any_dtype():
    mean, std = imagenet_stats
    norm = Normalize.from_stats(mean, std)
    x = torch.rand(2, 3, 4, 5)
    pts = torch.rand(2, 1, 2)
    for train in (True, False):
        xo, po, _ = norm((x, pts, None), KINDS, train)
        assert po is pts
        for c in range(3):
            assert torch.allclose(xo[:, c], (x[:, c] - mean[c]) / std[c], atol=1e-6)
    assert torch.allclose(norm.decode((xo, pts, None), KINDS)[0], x, atol=1e-6)
    x64 = x.double()
    xo64 = norm((x64,), ("image",), True)[0]
    assert xo64.dtype == torch.float64
    assert torch.allclose(norm.decode((xo64,), ("image",))[0], x64, atol=1e-12)
    assert len(norm._cache) == 2  # stats cached per (device, dtype)
    with pytest.raises(ValueError):
        norm((torch.rand(1, 1, 2, 2),), ("image",), True)


def test_mismatched_kinds_fail_clearly():
    with pytest.raises(ValueError, match="kinds"):
        Normalize([0.5], [0.5])((torch.rand(1, 1, 2, 2),), ("image", "points"), True)


def test_warp_mat_moves_corners_as_documented():
    mx, my = torch.tensor([0.1, -0.2]), torch.tensor([0.15, 0.05])
    m = warp_mat(mx, my)
    for cx, cy in [(-1, -1), (1, -1), (1, 1), (-1, 1)]:
        xyz = m @ torch.tensor([cx, cy, 1.0])
        got = xyz[:, :2] / xyz[:, 2:]
        want = torch.stack([cx * (1 + mx * cy), cy * (1 + my * cx)], 1)
        assert torch.allclose(got, want, atol=1e-6)


ON_CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")],
)


@pytest.mark.parametrize("device", ["meta", ON_CUDA])
def test_everything_stays_on_the_batch_device(device):
    x = torch.rand(4, 3, 48, 64).to(device)
    b = (x, torch.zeros(4, 1, 2, device=device), None)
    tfms = [
        *aug_transforms(size=(24, 32), flip_vert=True, min_scale=0.5, align_corners=True),
        Normalize.from_stats(*imagenet_stats),
    ]
    for train in (True, False):
        out = b
        for t in tfms:
            out = t(out, KINDS, train)
        assert out[0].device == x.device and out[1].device == x.device
        assert out[0].shape == (4, 3, 24, 32)


def test_aug_transforms_keeps_fastais_argument_order_and_defaults():
    params = inspect.signature(aug_transforms).parameters
    assert [(k, p.default) for k, p in params.items()] == [
        ("mult", 1.0), ("do_flip", True), ("flip_vert", False), ("max_rotate", 10.0),
        ("min_zoom", 1.0), ("max_zoom", 1.1), ("max_lighting", 0.2), ("max_warp", 0.2),
        ("p_affine", 0.75), ("p_lighting", 0.75), ("xtra_tfms", None), ("size", None),
        ("mode", "bilinear"), ("pad_mode", "reflection"), ("align_corners", False),
        ("batch", False), ("min_scale", 1.0),
    ]  # fmt: skip
