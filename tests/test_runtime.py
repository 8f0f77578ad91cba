"""Process settings for training, applied explicitly: freed memory reused on the first fit, idle
OpenMP threads asleep in the CLI. Each check runs in a fresh interpreter (the settings are
process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imageblocks import runtime
from imageblocks.image import PILImage
from imageblocks.learn.learner import vision_learner
from imageblocks.seeding import set_seed
from imageblocks.transforms.item import Resize
from tests.conftest import voc_block

GLIBC = bool(getattr(os, "confstr_names", {}).get("CS_GNU_LIBC_VERSION")) and bool(
    os.confstr("CS_GNU_LIBC_VERSION")
)

# A batch pipeline's pattern: each step makes and frees three 59 MB float batches. Prints what
# keep_freed_memory() returned (twice: it is idempotent) and the page faults of ten steps.
FAULTS = """
import json, resource, sys, torch
from imageblocks import runtime
applied = [runtime.keep_freed_memory(), runtime.keep_freed_memory()] if sys.argv[1] == "1" else []
x8 = torch.randint(0, 255, (16, 3, 480, 640), dtype=torch.uint8)
def step():
    x = x8.float().div_(255)
    return (x * 2 + 1).sum()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([applied, runtime.kept_freed_memory, faults]))
"""


def _clean_env(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "OMP_WAIT"))}
    clean.pop("IMAGEBLOCKS_KEEP_MEMORY", None)
    return {**clean, "OMP_NUM_THREADS": "1", **env}


def _python(code: str, *args: str, **env: str) -> object:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=_clean_env(**env), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the malloc setting exists only with glibc (Linux)")
def test_keep_freed_memory_reuses_batches_once_called_and_the_opt_out_keeps_glibc_defaults():
    pages = 16 * 3 * 480 * 640 * 4 // os.sysconf("SC_PAGE_SIZE")  # one float batch
    applied, flag, kept = _python(FAULTS, "1")
    assert applied == [True, True] and flag is True
    # kept: the freed batches' memory is reused (the heap may still grow once as it settles)
    assert kept < 3 * pages
    applied, flag, default = _python(FAULTS, "1", IMAGEBLOCKS_KEEP_MEMORY="0")
    assert applied == [False, False] and flag is False
    assert default > 20 * pages  # glibc's default: 30 fresh mappings, every page faulted again
    applied, flag, not_called = _python(FAULTS, "0")  # imported, never called: nothing changes
    assert flag is False and not_called > 20 * pages


def test_the_user_s_own_allocator_settings_win():
    code = (
        "from imageblocks import runtime as r; print('true' if r.keep_freed_memory() else 'false')"
    )
    assert _python(code, MALLOC_ARENA_MAX="2") is False  # the user tunes glibc: leave it alone
    assert _python(code, GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") is False


# The `imageblocks` command, with its commands replaced by a probe of what they would find.
CLI = """
import json, os, sys
from imageblocks import cli
seen = {"torch_after_import": "torch" in sys.modules}
def probe():
    seen.update(policy=os.environ.get("OMP_WAIT_POLICY"), torch="torch" in sys.modules)
cli.app = probe
cli.main()
print(json.dumps(seen))
"""


def test_the_cli_makes_idle_threads_sleep_before_torch_is_imported_unless_the_user_chose():
    seen = _python(CLI)
    assert seen == {"torch_after_import": False, "policy": "PASSIVE", "torch": False}
    assert _python(CLI, OMP_WAIT_POLICY="ACTIVE")["policy"] == "ACTIVE"


def test_fit_and_lr_find_keep_freed_memory_and_predict_does_not(voc, monkeypatch):
    calls, released = [], []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(runtime, "release_kept_memory", lambda: released.append(1))
    set_seed(0)
    df, dblock = voc_block(voc, Resize(64))
    learn = vision_learner(dblock.dataloaders(df, bs=4, num_workers=0), "efficientnet_lite0")
    learn.predict(PILImage.create(voc / "train" / "000001.jpg"))
    assert calls == []  # a service or a script that only predicts gives memory back
    learn.lr_find(num_it=2, show_plot=False)
    assert len(calls) == 1 and len(released) == 1  # the memory a fit kept goes back at its end
    learn.fit(1, 1e-3)
    assert len(calls) == 2 and len(released) == 2
