"""Landmark flip pairs: which key points swap identities when an image is mirrored.

A mirror image of a face has its left eye where the right eye was: a transform that reflects the
image (a horizontal or vertical flip, a transpose: any matrix with a negative determinant) must
move each point *and* swap the labels of the paired points, or the model learns that "left eye"
is on either side. Pairs are plain data, `((0, 1), (3, 4))`, checked once by `check_flip_pairs`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imageblocks_runtime.pairs import FlipPairs, check_flip_pairs, pair_permutation

__all__ = ["FlipPairs", "check_flip_pairs", "pair_permutation", "swap_reflected"]


def swap_reflected(points: Tensor, reflected: Tensor, pairs: FlipPairs | None) -> Tensor:
    """`points` (B, n, 2) with the paired points swapped in the samples where `reflected` (B,)
    is true (their image was mirrored); unchanged without pairs."""
    if not pairs:
        return points
    perm = torch.tensor(pair_permutation(pairs, points.shape[1]), device=points.device)
    return torch.where(reflected.view(-1, 1, 1), points[:, perm], points)
