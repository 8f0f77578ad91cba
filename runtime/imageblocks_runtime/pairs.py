"""Landmark flip pairs: which key points swap identities when an image is mirrored.

A mirror image of a face has its left eye where the right eye was: a transform that reflects the
image must move each point *and* swap the labels of the paired points. Pairs are plain data,
`((0, 1), (3, 4))`, checked once by `check_flip_pairs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["FlipPairs", "check_flip_pairs", "pair_permutation"]

FlipPairs = tuple[tuple[int, int], ...]


def check_flip_pairs(pairs: Any) -> FlipPairs | None:
    """`pairs` as a tuple of (i, j) index pairs, or None; a `ValueError` naming the bad pair
    when a pair is not two distinct non-negative integers or an index is in two pairs."""
    if pairs is None:
        return None
    seen: set[int] = set()
    out = []
    for pair in pairs:
        ok = isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
        if ok:
            ok = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in pair)
        if not ok or pair[0] == pair[1]:
            raise ValueError(
                f"flip pair {pair!r} is not two different point indices: pass "
                "flip_pairs=[(0, 1), (2, 3)] with the indices of the left and right landmarks"
            )
        again = seen.intersection(pair)
        if again:
            raise ValueError(
                f"point {min(again)} is in two flip pairs ({pairs!r}): each landmark has at "
                "most one mirror partner"
            )
        seen.update(pair)
        out.append((int(pair[0]), int(pair[1])))
    return tuple(out)


def pair_permutation(pairs: FlipPairs, n: int) -> list[int]:
    """The index of each of `n` points after a mirror: paired points swapped, others kept."""
    perm = list(range(n))
    for i, j in pairs:
        if max(i, j) >= n:
            raise ValueError(
                f"flip pair {(i, j)} names point {max(i, j)}, but the targets have {n} points "
                f"(indices 0 to {n - 1}): fix PointBlock(flip_pairs=...)"
            )
        perm[i], perm[j] = j, i
    return perm
