"""Errors that name the bad item and say what to do, instead of a bare stack trace."""

from __future__ import annotations


class ItemError(ValueError):
    """A data item (image, label, point, row) that cannot be used as it is."""


class CollateError(RuntimeError):
    """Samples that cannot be stacked into one batch (usually images of different sizes)."""
