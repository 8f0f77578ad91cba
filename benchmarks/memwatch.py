"""Peak memory of a process and its descendants, per named phase, sampled from /proc.

`ru_maxrss` gives one peak for a whole run and, for the loader workers, only the largest child's;
the memory issue needs the peak of each recipe (PASCAL, BIWI's lr_find, its fine_tune) across the
main process and its workers together, for both libraries alike. So a thread samples the process
tree: the resident set (RSS, from `statm`, cheap) often, and the proportional set (PSS, from
`smaps_rollup`: shared pages such as the workers' copy-on-write images and shared-memory batches
counted once, which is what the machine really spends) less often, since reading it walks the page
tables. Standard library only: fastai's side imports it too, in its own virtualenv.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """`pid` and every live process below it (from each process's parent in /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        parent[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        tree += frontier
    return tree


def rss_mb(pids: list[int], proc: Path = Path("/proc")) -> float:
    """The summed resident set of `pids`, in MB (shared pages counted in each process)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((proc / str(pid) / "statm").read_text().split()[1]) * PAGE
    return total / 2**20


def pss_mb(pids: list[int], proc: Path = Path("/proc")) -> float:
    """The summed proportional set of `pids`, in MB (shared pages split among their users)."""
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
    return total_kb / 1024


class MemoryWatch:
    """Samples this process's tree in a thread; `with watch.phase(name):` keeps a peak per phase.

    RSS every `interval` seconds, PSS every `pss_every`-th sample."""

    def __init__(self, interval: float = 0.2, pss_every: int = 5, pid: int | None = None):
        self.interval, self.pss_every = interval, pss_every
        self.pid = pid or os.getpid()
        self.current: str | None = None
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memwatch", daemon=True)

    def start(self) -> MemoryWatch:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop sampling; the peaks (MB) by phase."""
        self._stop.set()
        self._thread.join()
        return self.result()

    def result(self) -> dict[str, float]:
        """{'<phase>_rss_mb': peak, '<phase>_pss_mb': peak, ...}, rounded to 0.1 MB."""
        return {f"{k}_{m}": round(v, 1) for k, p in self.peaks.items() for m, v in p.items()}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the samples taken inside the block to `name` (one sample at each end)."""
        self.current = name
        self.sample(pss=True)
        try:
            yield
        finally:
            self.sample(pss=True)
            self.current = None

    def sample(self, pss: bool) -> None:
        name = self.current
        if name is None:
            return
        pids = descendants(self.pid)
        peak = self.peaks.setdefault(name, {"rss_mb": 0.0, "pss_mb": 0.0})
        peak["rss_mb"] = max(peak["rss_mb"], rss_mb(pids))
        if pss:
            peak["pss_mb"] = max(peak["pss_mb"], pss_mb(pids))

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            with contextlib.suppress(Exception):  # a sampler must never stop the benchmark
                self.sample(pss=n % self.pss_every == 0)
