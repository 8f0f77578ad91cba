"""Loaders keep decoded images between epochs: files are read once, augmentation stays random."""

from __future__ import annotations

import pytest
import torch

from imageblocks.errors import ItemError
from imageblocks.seeding import set_seed
from imageblocks.transforms.item import RandomResizedCrop
from tests.conftest import voc_block


def _dls(voc, cache_mb):
    set_seed(0)
    df, dblock = voc_block(voc, RandomResizedCrop(32, min_scale=0.3))
    return dblock.dataloaders(df, bs=4, num_workers=0, shuffle=False, cache_mb=cache_mb)


def _epoch(dl) -> torch.Tensor:
    return torch.cat([b[0] for b in dl])


def test_second_epoch_reads_no_file_and_still_augments(voc):
    dls = _dls(voc, cache_mb=64)
    train1, valid1 = _epoch(dls.train), _epoch(dls.valid)
    for f in (voc / "train").iterdir():
        f.unlink()  # every image is gone: only the caches can serve the next epoch
    train2, valid2 = _epoch(dls.train), _epoch(dls.valid)
    assert train1.shape == train2.shape and not torch.equal(train1, train2)  # new random crops
    assert torch.equal(valid1, valid2)  # validation: the same finished samples


def test_no_cache_reads_the_files_again(voc):
    dls = _dls(voc, cache_mb=0)
    _epoch(dls.train)
    (voc / "train" / "000000.jpg").unlink()
    with pytest.raises(ItemError, match="not found"):
        _epoch(dls.train)


def test_cache_stops_at_its_size(voc):
    dls = _dls(voc, cache_mb=0.05)  # 52 KB: a few draft-size images, not all twelve
    _epoch(dls.train)
    ds = dls.train.dataset
    assert 0 < len(ds._cache) < len(ds) and ds._cached <= ds.cache_bytes
