"""Transforms: item transforms on decoded samples (item.py) and batch transforms on the device
(batch.py: one fused resample per batch, lighting, Normalize)."""
