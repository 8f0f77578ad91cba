"""Importing imageblocks changes nothing in its host process; predict notices model changes alone.

The import check runs in a fresh interpreter: first the libraries imageblocks imports (what they do
at import is theirs: importing `torch._dynamo`, as timm and torchvision do, sets
TORCHINDUCTOR_CACHE_DIR), then `imageblocks.all` and every module of the package, comparing the
environment, torch's global module hooks and settings, and glibc's allocator behaviour.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from imageblocks.learn.inference import OnnxRunner

PACKAGE = Path(__file__).resolve().parents[1] / "imageblocks"
GLIBC = bool(getattr(os, "confstr_names", {}).get("CS_GNU_LIBC_VERSION")) and bool(
    os.confstr("CS_GNU_LIBC_VERSION")
)


def _third_party_imports() -> list[str]:
    """Every module outside the package and the standard library that its source imports."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(
        name
        for name in found
        if name.split(".")[0] not in ("imageblocks", *sys.stdlib_module_names)
    )


SCRIPT = r"""
import importlib, json, os, pkgutil, resource, sys, warnings

for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError:  # `from a import name` where name is not a module, or an optional extra
        pass

import torch
import torch.nn.modules.module as module_mod

def hooks():
    return {
        name: list(value)
        for name, value in vars(module_mod).items()
        if name.startswith("_global_") and isinstance(value, dict)
    }

def settings():
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "grad": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warning_filters": len(warnings.filters),
    }

env, hooks_before, settings_before = dict(os.environ), hooks(), settings()
import imageblocks
names = ["imageblocks.all"] + sorted(
    m.name for m in pkgutil.walk_packages(imageblocks.__path__, "imageblocks.")
)
for name in names:
    importlib.import_module(name)
from imageblocks import runtime

# glibc's defaults still in force: each step's three 59 MB batches are fresh mappings
x8 = torch.randint(0, 255, (16, 3, 480, 640), dtype=torch.uint8)
def step():
    x = x8.float().div_(255)
    return (x * 2 + 1).sum()
for _ in range(3):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({
    "modules": names,
    "env_added": sorted(set(os.environ) - set(env)),
    "env_removed": sorted(set(env) - set(os.environ)),
    "env_changed": sorted(k for k in env if k in os.environ and os.environ[k] != env[k]),
    "hooks": [hooks_before, hooks()],
    "settings": [settings_before, settings()],
    "kept_freed_memory": runtime.kept_freed_memory,
    "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
}))
"""


def test_importing_every_module_changes_no_environment_hook_setting_or_allocator():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_WAIT", "MALLOC_"))}
    env.pop("IMAGEBLOCKS_KEEP_MEMORY", None)
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(_third_party_imports())],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"imageblocks.all", "imageblocks.learn.inference", "imageblocks.cli"} <= set(
        res["modules"]
    )
    assert (res["env_added"], res["env_removed"], res["env_changed"]) == ([], [], [])
    before, after = res["hooks"]
    assert "_global_module_registration_hooks" in before and "_global_forward_hooks" in before
    assert after == before
    assert res["settings"][1] == res["settings"][0]
    assert res["kept_freed_memory"] is False
    if GLIBC:
        pages = 16 * 3 * 480 * 640 * 4 // os.sysconf("SC_PAGE_SIZE")  # one float batch
        assert res["faults"] > 10 * pages  # 15 fresh mappings: the allocator was left alone


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()


def test_predict_session_follows_changes_to_its_own_model_without_global_hooks():
    pytest.importorskip("onnxruntime")
    model, run = _tiny(), OnnxRunner(threads=1)
    x = torch.randn(1, 3, 12, 12)

    def session_after(change) -> object:
        before = run.session
        change()
        out = run(model, x)
        with torch.no_grad():
            assert torch.allclose(out, model(x), atol=1e-5)
        return run.session is not before

    assert session_after(lambda: None)  # the first call builds it
    assert not session_after(lambda: None)  # nothing changed: the same session

    def new_head():
        model[4] = nn.Linear(4, 2)

    def new_weight():
        model[4].weight = nn.Parameter(torch.randn(2, 4))

    def in_place():
        with torch.no_grad():
            model[0].weight.mul_(2)

    def new_pool():  # a module without tensors
        model[2] = nn.AdaptiveMaxPool2d(1)

    def new_buffer_value():
        model[1].running_mean = torch.ones(4)

    def load_assigned():  # replaces every tensor by the state dict's own
        model.load_state_dict(
            {k: v.clone() + 1 for k, v in model.state_dict().items()}, assign=True
        )

    for change in (new_head, new_weight, in_place, new_pool, new_buffer_value, load_assigned):
        assert session_after(change), change.__name__
        assert not session_after(lambda: None), change.__name__
    other = _tiny()
    model = other  # another model object: its own session
    assert session_after(lambda: None)
