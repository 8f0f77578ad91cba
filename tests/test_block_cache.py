"""The block cache (imageblocks.block_cache): PyTorch's CPU allocator reusing large blocks, split and
merged. Each check runs in a fresh interpreter, since the allocator is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the block cache is built on Linux")

# A training step's pattern: the same large sizes asked for in the same order every step.
STEPS = """
import dataclasses, json, resource, torch
from imageblocks import block_cache
assert block_cache.install(), block_cache.unavailable_reason
torch.manual_seed(0)
w = torch.randn(512, 512)
def step(x):
    h = (x @ w).relu()   # 4 MB blocks
    big = torch.cat([h, h, h], 1)   # 12 MB
    return big.sum(1) + h.mean()
x = torch.randn(2048, 512)
first = step(x)
for _ in range(3):
    step(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    again = step(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
same = bool(torch.equal(again, step(x)))
held = block_cache.stats()
del first
block_cache.release()
print(json.dumps({"equal": same, "faults": faults,
                  "held": dataclasses.asdict(held), "released": dataclasses.asdict(block_cache.stats())}))
"""

FORK = """
import json, os, torch
from imageblocks import block_cache
assert block_cache.install()
kept = torch.ones(1 << 20)   # 4 MB in use, shared with the child
freed = torch.ones(1 << 21)
del freed                    # 8 MB cached in the parent
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    s = block_cache.stats()
    made = torch.full((1 << 21,), 2.0)
    os.write(write, json.dumps([s.cached, s.in_use, float(kept.sum()), float(made.sum())]).encode())
    os._exit(0)
os.waitpid(pid, 0)
child = json.loads(os.read(read, 1000))
print(json.dumps({"child": child, "parent_cached": block_cache.stats().cached}))
"""

BOUND = """
import json, torch
from imageblocks import block_cache
assert block_cache.install()
worst = 0
for n in range(1, 40):   # a new size every time: nothing to reuse, the cache must not grow
    t = torch.empty(n << 20, dtype=torch.uint8)
    s = block_cache.stats()
    worst = max(worst, s.in_use + s.cached - s.peak)
    del t
print(json.dumps({"worst_over_peak": worst, "stats": vars(block_cache.stats())}))
"""

# A recipe's pattern: the sizes and their order change from step to step (batch augmentation,
# a last short batch, validation between epochs); an exact-size cache mapped new blocks every step.
VARYING = """
import json, random, resource, torch
from imageblocks import block_cache
assert block_cache.install()
rng = random.Random(0)
def step(k):
    scale = 1 + 0.07 * (k % 5)
    sizes = [int(mb * scale * (1 << 18)) for mb in (3, 5, 8, 13, 21, 6, 9)]
    rng.shuffle(sizes)
    held = [torch.ones(n) for n in sizes]
    held = held[1::2] + [torch.ones(sizes[0] // 2)]  # half of them freed, then one more made
    return sum(float(t[-1]) for t in held)
for k in range(5):
    step(k)
warm = block_cache.stats()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for k in range(5, 25):
    step(k)
after = block_cache.stats()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                  "misses": after.misses - warm.misses, "hits": after.hits - warm.hits,
                  "mapped": after.in_use + after.cached, "peak": after.peak}))
"""

# Random large tensors made and dropped: every live tensor keeps its values, the books balance.
CHURN = """
import json, random, torch
from imageblocks import block_cache
assert block_cache.install()
rng = random.Random(1)
live = {}
for i in range(400):
    if live and rng.random() < 0.45:
        live.pop(rng.choice(sorted(live)))
    else:
        live[i] = torch.full((rng.randint(1 << 18, 5 << 20),), float(i))
intact = all(bool((t == k).all()) for k, t in live.items())
s = block_cache.stats()
held = sum(t.numel() * 4 for t in live.values())
print(json.dumps({"intact": intact, "n": len(live), "held": held, "in_use": s.in_use}))
"""

UNAVAILABLE = """
import json
from imageblocks import block_cache, runtime
print(json.dumps([runtime.keep_freed_memory(), block_cache.installed(), block_cache.unavailable_reason]))
"""


def _python(code: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEBLOCKS_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_repeated_steps_reuse_their_blocks_without_faults_and_release_gives_them_back():
    seen = _python(STEPS)
    assert seen["equal"]  # the same results from reused memory
    held, released = seen["held"], seen["released"]
    assert held["hits"] >= 36 and held["misses"] <= 6  # after the first steps, all hits
    assert seen["faults"] < 200  # 10 steps of 20 MB each would be about 50,000 fresh pages
    assert held["in_use"] == 5 << 20 and held["cached"] > 0  # x and w, alive, are not cached
    assert released["cached"] == 0 and released["in_use"] == 5 << 20


def test_a_forked_child_gives_back_the_cached_blocks_and_still_reads_the_shared_ones():
    seen = _python(FORK)
    cached, in_use, kept_sum, made_sum = seen["child"]
    assert cached == 0 and in_use == 4 << 20  # the parent's free 8 MB are not the child's to keep
    assert kept_sum == float(1 << 20) and made_sum == 2.0 * (1 << 21)
    assert seen["parent_cached"] == 8 << 20


def test_the_cache_stays_within_the_largest_working_set_seen():
    seen = _python(BOUND)
    assert seen["worst_over_peak"] <= 0
    assert seen["stats"]["evictions"] > 0


def test_steps_whose_sizes_change_are_served_from_memory_already_mapped():
    seen = _python(VARYING)
    # of 160 requests, all but a rare one carved from a free block (an exact-size cache: most missed)
    assert seen["misses"] <= 2 and seen["hits"] >= 158
    # 20 steps of about 70 MB each would be about 350,000 fresh pages
    assert seen["faults"] < 10_000
    assert seen["mapped"] <= 1.5 * seen["peak"] + (1 << 20)


def test_split_and_merged_blocks_keep_every_live_tensor_intact():
    seen = _python(CHURN)
    assert seen["intact"] and seen["n"] > 20
    # each block is its request rounded up to a page, or at most 1 MB more when not split
    assert seen["held"] <= seen["in_use"] <= seen["held"] + seen["n"] * (1 << 20)


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"IMAGEBLOCKS_BLOCK_CACHE": "0"}, "turned off"),
        ({"CXX": "/nonexistent/c++", "TORCH_EXTENSIONS_DIR": "{tmp}"}, "could not be built"),
    ],
)
def test_without_the_cache_training_keeps_the_glibc_heap_and_says_why(env, reason, tmp_path):
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    kept, installed, why = _python(UNAVAILABLE, **env)
    assert kept is True and installed is False and reason in why
