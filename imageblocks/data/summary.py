"""`DataBlock.summary`: walk one sample and one batch through every step, printing each result.

When the samples cannot be collated, it says which tensors differ in size and which item
transform makes them equal, then raises `CollateError`.
"""

from __future__ import annotations

from typing import Any

import torch

from imageblocks.data.datasets import ItemErrors, LoaderItems
from imageblocks.data.loaders import DataLoader, collate
from imageblocks.errors import CollateError


def _show(o: Any) -> str:
    """How a value prints in the summary: tensors by size when large, tuples element-wise."""
    if isinstance(o, tuple):
        return "(" + ", ".join(_show(v) for v in o) + ")"
    if isinstance(o, torch.Tensor):
        if o.numel() > 40 or o.ndim > 2:
            return f"{_tensor_kind(o)} of size {'x'.join(map(str, o.shape))}"
        return repr(o)
    if hasattr(o, "shape") and hasattr(o, "dtype") and getattr(o, "ndim", 0) == 3:
        h, w, c = o.shape
        return f"uint8 image of size {c}x{h}x{w}"
    return str(o)


def _tensor_kind(o: torch.Tensor) -> str:
    return "Tensor" if o.is_floating_point() or o.dtype != torch.uint8 else "uint8 Tensor"


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line for line in str(text).splitlines())


def summarize(
    dblock: Any, source: Any, bs: int = 4, show_batch: bool = False, **kwargs: Any
) -> None:
    """Print how `dblock` turns `source` into samples and a batch."""
    print("Setting up the type pipelines")
    print(f"Collecting items from {source}")
    items = dblock.collect_items(source)
    print(f"Found {len(items)} items")
    dsets = dblock.datasets(source)
    print(f"2 datasets of sizes {len(dsets.train)},{len(dsets.valid)}")
    for p in dsets.pipelines:
        print(f"Setting up {p!r}")

    i0 = dsets.splits[0][0]
    item = dsets.items[i0]
    print("\nBuilding one sample")
    sample = []
    for p in dsets.pipelines:
        print(f"  {p!r}")
        print("    starting from")
        print(_indent(item, 6))
        value = item
        for name, f in p.steps():
            with ItemErrors(item):
                value = f(value)
            print(f"    applying {name} gives")
            print(_indent(_show(value) if not isinstance(value, (list, str)) else value, 6))
        sample.append(value)
    print(f"\nFinal sample: {_show(tuple(sample))}\n")

    tfm_names = " -> ".join([repr(t) for t in dblock.item_tfms] + ["ToTensor"])
    print(f"Setting up after_item: Pipeline: {tfm_names}")
    batch_names = " -> ".join(
        ["IntToFloatTensor -- {'div': 255.0}"] + [repr(t) for t in dblock.batch_tfms]
    )
    print(f"Setting up after_batch: Pipeline: {batch_names}")
    draft = dblock.draft_size()
    if draft is not None:
        print(f"JPEGs are decoded at reduced scale, no smaller than {draft[0]}x{draft[1]}")

    print("\nBuilding one batch")
    ds = LoaderItems(dsets, dsets.splits[0][:bs], dblock.item_tfms, train=True, draft=draft)
    print("Applying item_tfms to the first sample:")
    print(f"  Pipeline: {tfm_names}")
    print("    starting from")
    print(_indent(_show(tuple(sample)), 6))
    first = ds[0]
    print(f"    applying {tfm_names} gives")
    print(_indent(_show(first), 6))
    samples = [first] + [ds[i] for i in range(1, len(ds))]
    print(f"\nAdding the next {len(samples) - 1} samples")
    print("\nCollating items in a batch")
    try:
        batch = collate(samples)
    except CollateError as e:
        print("Error! The samples cannot be collated into a batch.")
        print(str(e))
        raise
    print("\nApplying batch_tfms to the batch built")
    print(f"  Pipeline: {batch_names}")
    print("    starting from")
    print(_indent(_show(batch), 6))
    dl = DataLoader(
        ds, bs=bs, device="cpu", after_batch=dblock.batch_tfms, kinds=dsets.kinds, train=True
    )
    out = dl.process(batch)
    print("    applying batch_tfms gives")
    print(_indent(_show(out), 6))
    if show_batch:
        dl.show_batch(out, **kwargs)
