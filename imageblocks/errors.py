"""The errors imageblocks raises, defined in the runtime (`imageblocks_runtime.errors`)."""

from imageblocks_runtime.errors import ArgumentError, CollateError, ImageblocksError, ItemError

__all__ = ["ArgumentError", "CollateError", "ImageblocksError", "ItemError"]
