"""Transforms: item transforms on decoded samples (item.py) and batch transforms on the device
(base.py the contract, geometry.py one fused resample per batch, lighting.py, normalize.py, and
batch.py composing them into aug_transforms)."""
