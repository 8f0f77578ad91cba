"""The benchmarks' memory sampler: peaks per phase over a real process tree (workers included)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks import memwatch

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux /proc")

HOLD = "import sys, time; block = b'x' * (300 * 2**20); print('ready', flush=True); time.sleep(30)"


def test_a_child_holding_300_mb_shows_in_its_phase_only():
    watch = memwatch.MemoryWatch(interval=0.05, pss_every=2).start()
    with watch.phase("idle"):
        time.sleep(0.3)
    with watch.phase("child"):
        child = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            assert child.pid in memwatch.descendants(os.getpid())
            time.sleep(0.5)
        finally:
            child.kill()
            child.wait()
    peaks = watch.stop()
    assert set(peaks) == {f"{p}_{m}" for p in ("idle", "child") for m in ("rss_mb", "pss_mb")}
    assert peaks["child_pss_mb"] - peaks["idle_pss_mb"] >= 280
    assert peaks["child_rss_mb"] - peaks["idle_rss_mb"] >= 280
    assert 0 < peaks["idle_pss_mb"] <= peaks["idle_rss_mb"]


def test_shared_pages_count_once_in_pss_and_in_each_process_in_rss():
    parent = "import os, time; block = b'y' * (200 * 2**20); pid = os.fork(); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", parent])
    try:

        def both() -> list[int]:
            return memwatch.descendants(child.pid)

        deadline = time.monotonic() + 10
        while len(both()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        pids = both()
        assert len(pids) == 2
        rss, pss = memwatch.rss_mb(pids), memwatch.pss_mb(pids)
        assert rss >= 400 and 200 <= pss <= rss - 150  # the fork's copy-on-write pages
    finally:
        for pid in memwatch.descendants(child.pid)[::-1]:
            os.kill(pid, 9)
        child.wait()
