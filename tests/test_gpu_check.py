"""benchmarks/gpu_check.sh: its syntax, its steps, and how it degrades without a GPU or a Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"
STEPS = ["setup", "data", "cuda-tests", "side-by-side", "torchrun", "budget"]


def run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    full_env = {**os.environ, "GPU_CHECK_OUT": str(out), "TMPDIR": str(tmp_path), **env}
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=120
    )
    stem = "cpu-dry-check" if "--dry-run" in args else "gpu-check"
    summary = (
        json.loads((out / f"{stem}.json").read_text()) if (out / f"{stem}.json").exists() else {}
    )
    return proc, summary


def test_the_script_parses_and_lists_its_steps():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    listed = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.split() == STEPS


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_finds_nothing():
    subprocess.run(["shellcheck", str(SCRIPT)], check=True)


def test_without_a_python_setup_fails_and_every_step_is_skipped(tmp_path):
    proc, summary = run(tmp_path, GPU_CHECK_PYTHON=str(tmp_path / "no-python"))
    assert proc.returncode == 1, proc.stderr
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == STEPS
    assert steps["setup"]["status"] == "fail"
    assert all(steps[s]["status"] == "skipped" for s in STEPS[1:])
    assert (tmp_path / "out" / "gpu-check.md").read_text().count("| skipped |") == 5


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the machine without a GPU"
)
def test_without_cuda_or_fastai_the_gpu_steps_are_skipped_and_it_passes(tmp_path):
    proc, summary = run(
        tmp_path,
        GPU_CHECK_PYTHON=sys.executable,
        GPU_CHECK_FASTAI_PYTHON=str(tmp_path / "no-fastai"),
        PYTHONPATH=str(SCRIPT.parent.parent),
    )
    assert proc.returncode == 0, proc.stderr
    steps = {s["step"]: s for s in summary["steps"]}
    assert (
        steps["setup"]["status"] == "pass"
        and "fastai's environment missing" in steps["setup"]["note"]
    )
    assert {steps[s]["status"] for s in STEPS[1:]} == {"skipped"}
    assert all(steps[s]["note"] == "no CUDA GPU" for s in STEPS[1:])
