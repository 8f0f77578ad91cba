"""The notebook memory benchmark: the tutorials' cells, and per-cell peaks from a real kernel."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from benchmarks import notebook_memory  # noqa: E402


def test_short_keeps_the_book_sizes_and_cuts_only_steps():
    full = "\n".join(src for _, src in notebook_memory.notebook_cells(short=False))
    short = "\n".join(src for _, src in notebook_memory.notebook_cells(short=True))
    for old, new in notebook_memory.SHORT:
        assert old in full and new in short
    for kept in ("RandomResizedCrop(128, min_scale=0.35)", "aug_transforms(size=(240,320))"):
        assert kept in full and kept in short
    pages = [page for page, _ in notebook_memory.notebook_cells(short=True)]
    assert pages[0] == "tutorial-multilabel" and pages[-1] == "tutorial-keypoints"


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux /proc")
def test_the_cell_that_holds_memory_has_the_peak(tmp_path):
    cells = [
        ("a", "x = 1"),
        ("b", "block = b'z' * (300 * 2**20)"),
        ("b", "del block"),
        ("b", "raise ValueError('shown, not fatal')"),
    ]
    result = notebook_memory.run_notebook(cells, tmp_path, timeout=120)
    by_cell = {c["cell"]: c for c in result["cells"]}
    assert by_cell[2]["pss_mb"] - by_cell[1]["pss_mb"] >= 280
    assert result["peak_pss_mb"] == by_cell[2]["pss_mb"]
    assert result["peak_pss_mb_by_page"]["b"] == result["peak_pss_mb"]
    assert result["errors"] == ["cell 4: ValueError: shown, not fatal"]
    assert "| 2 | b | `block = b'z' * (300 * 2**20)`" in notebook_memory.markdown(
        {**result, "machine": "m", "date": "d", "command": "c", "short": True,
         "cpu": {"model": "cpu", "class": "avx2"}}
    )  # fmt: skip
