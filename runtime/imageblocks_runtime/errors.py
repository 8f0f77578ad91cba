"""Errors that name the bad item and say what to do, instead of a bare stack trace.

Every error imageblocks raises on purpose derives from `ImageblocksError`, so a program (the CLI,
a notebook) can catch all of them at once; each also keeps the built-in base a caller may
already catch (`ItemError` is a `ValueError`, `CollateError` a `RuntimeError`).
"""

from __future__ import annotations


class ImageblocksError(Exception):
    """The base of every error imageblocks raises for bad input or a bad state it can explain."""


class ItemError(ImageblocksError, ValueError):
    """A data item (image, label, point, row) that cannot be used as it is."""


class CollateError(ImageblocksError, RuntimeError):
    """Samples that cannot be stacked into one batch (usually images of different sizes)."""


class ArgumentError(ImageblocksError, ValueError):
    """An argument of the wrong form (a size, a name), with the form that was expected."""
