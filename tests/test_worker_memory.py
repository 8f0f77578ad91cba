"""Loader workers forked from a trainer that keeps its freed memory do not double it.

With glibc told to keep freed memory (runtime.keep_freed_memory), a worker forked after a training
step maps the trainer's kept heap; copy-on-write then copies every page the trainer writes again
while a worker still maps it. The loaders' worker init hands those pages back
(runtime.release_inherited_memory). Measured in a fresh process, on a real fork, by PSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/smaps_rollup") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="Linux with glibc",
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys, time
import torch
from benchmarks import memwatch
from imageblocks.data.loaders import _worker_init
from imageblocks.runtime import keep_freed_memory

assert keep_freed_memory()
blocks = [torch.ones(16, 32, 120, 160) for _ in range(26)]  # about 1 GB, as a step's activations
del blocks  # kept by glibc for the next step


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        time.sleep(0.02)
        return torch.zeros(3, 8, 8, dtype=torch.uint8)


init = _worker_init if sys.argv[1] == "init" else None
dl = torch.utils.data.DataLoader(
    Items(), batch_size=4, num_workers=2, worker_init_fn=init,
    multiprocessing_context="fork", persistent_workers=True,
)
batches = iter(dl)
next(batches)  # the workers are forked and running
watch = memwatch.MemoryWatch(interval=0.05, pss_every=1).start()
with watch.phase("step"):
    blocks = [torch.ones(16, 32, 120, 160) for _ in range(26)]  # the next step reuses the heap
    for _ in batches:
        pass
print(json.dumps(watch.stop()))
"""


def tree_pss_mb(mode: str, block_cache: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMAGEBLOCKS_BLOCK_CACHE": block_cache}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["step_pss_mb"]


def test_workers_hand_back_the_trainer_s_kept_heap():
    plain, released = tree_pss_mb("plain", "0"), tree_pss_mb("init", "0")
    assert plain - released >= 600  # about 1 GB of the trainer's heap no longer copied


def test_with_the_block_cache_forked_workers_give_its_free_blocks_back_by_themselves():
    """The cache's fork handler unmaps the inherited free blocks, with or without the init."""
    plain, released = tree_pss_mb("plain", "1"), tree_pss_mb("init", "0")
    assert plain <= released + 150


GARBAGE = """
import gc, os, sys
import torch
from imageblocks.data.loaders import _worker_init

out = sys.argv[1]
gc.disable()  # the parent has not collected yet when the workers fork


class Holder:  # stands for an ONNX Runtime session in a reference cycle
    def __del__(self):
        with open(out, "a") as f:
            f.write(f"{os.getpid()}\\n")


a, b = Holder(), Holder()
a.other, b.other = b, a
del a, b


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        gc.collect()  # a worker's collection
        return torch.zeros(2)


dl = torch.utils.data.DataLoader(
    Items(), batch_size=2, num_workers=2, worker_init_fn=_worker_init,
    multiprocessing_context="fork",
)
assert len(list(dl)) == 4
print(os.getpid())
"""


def test_workers_never_collect_the_parent_s_garbage(tmp_path):
    """A worker that destroyed an inherited ONNX Runtime session hung the docs build forever."""
    out = tmp_path / "collected"
    run = subprocess.run(
        [sys.executable, "-c", GARBAGE, str(out)], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    parent = run.stdout.strip().splitlines()[-1]
    collected_in = out.read_text().split() if out.exists() else []
    assert set(collected_in) <= {parent}  # only the parent itself, at its exit, if at all
