"""Process-wide settings made on import: OpenMP threads sleep, freed memory is reused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imageblocks import runtime

GLIBC = bool(getattr(os, "confstr_names", {}).get("CS_GNU_LIBC_VERSION")) and bool(
    os.confstr("CS_GNU_LIBC_VERSION")
)

# A batch pipeline's pattern: each step makes and frees three 59 MB float batches. Prints the
# page faults of ten steps after five of warm-up.
FAULTS = """
import resource, imageblocks, torch, os
print(os.environ.get("OMP_WAIT_POLICY"))
x8 = torch.randint(0, 255, (16, 3, 480, 640), dtype=torch.uint8)
def step():
    x = x8.float().div_(255)
    return (x * 2 + 1).sum()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "OMP_WAIT"))}
    clean.pop("IMAGEBLOCKS_KEEP_MEMORY", None)
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    policy, faults = out.stdout.split()
    return policy, int(faults)


@pytest.mark.skipif(not GLIBC, reason="the malloc setting exists only with glibc (Linux)")
def test_freed_batches_are_reused_without_page_faults_and_the_opt_out_restores_them():
    policy, kept = _run()
    assert policy == "PASSIVE"
    _, default = _run(IMAGEBLOCKS_KEEP_MEMORY="0")
    pages = 16 * 3 * 480 * 640 * 4 // os.sysconf("SC_PAGE_SIZE")  # one float batch
    # kept: the freed batches' memory is reused (the heap may still grow once as it settles)
    assert kept < 3 * pages
    assert default > 20 * pages  # glibc's default: 30 fresh mappings, every page faulted again


def test_the_user_s_own_settings_win(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    runtime.sleep_idle_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # the user tunes glibc: leave it alone
    assert runtime.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("IMAGEBLOCKS_KEEP_MEMORY", "0")
    assert runtime.keep_freed_memory() is False
