"""The chapter-6 multilabel tutorial run as a notebook in a real Jupyter kernel, as a reader would.

The cells are the python cells of docs/src/tutorial-multilabel.md with its quick rules (small
data, one epoch), read by docs/build.py's own parser, on the quick build's demo data under a
scratch HOME; a few cells the book's readers also run (a thumbnail, `plot_loss`, `lr_find`) are
added at the end. The kernel's messages are recorded, display updates included.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

from tests.test_docs import load_build_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "src" / "tutorial-multilabel.md"
BUILD = ROOT / "docs" / "build.py"
PNG = b"\x89PNG\r\n\x1a\n"
EXTRA_CELLS = {
    "thumbnail": "im = PILImage.create(path/'train'/df['fname'][0])\nim.to_thumb(160)",
    "plot_loss": "learn.recorder.plot_loss()",
    "lr_find": "learn.lr_find(num_it=8)",
}


class RecordingClient(nbclient.NotebookClient):
    """A notebook client that also keeps every `update_display_data` message, by cell."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.updates: dict[int, list[dict]] = {}

    def process_message(self, msg, cell, cell_index):
        if msg["msg_type"] == "update_display_data":
            self.updates.setdefault(cell_index, []).append(msg["content"]["data"])
        return super().process_message(msg, cell, cell_index)


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """The executed notebook, its cells' sources and the display updates each cell sent."""
    build = load_build_module()
    work = tmp_path_factory.mktemp("notebook")
    blocks = [
        b
        for b in build.load_page(PAGE, quick=True).blocks
        if b.kind == "python" and not b.attrs.get("noexec")
    ]
    sources = [b.text for b in blocks] + list(EXTRA_CELLS.values())
    data = work / "home" / ".imageblocks" / "data"
    # in a fresh process: the generator forks workers, and a fork of this test process (which
    # earlier tests left with threads) can block forever on a lock held at the fork
    code = (
        "import importlib.util, sys; from pathlib import Path; "
        f"spec = importlib.util.spec_from_file_location('docs_build', {str(BUILD)!r}); "
        "m = importlib.util.module_from_spec(spec); sys.modules['docs_build'] = m; "
        f"spec.loader.exec_module(m); m.make_quick_data(Path({str(data)!r}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600, cwd=ROOT)
    (work / "pages").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "MPLCONFIGDIR", os.environ.get("MPLCONFIGDIR", str(Path.home() / ".config/matplotlib"))
        )
        mp.setenv("XDG_CACHE_HOME", os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))
        mp.setenv("HOME", str(work / "home"))
        mp.setenv("OMP_NUM_THREADS", "2")
        mp.delenv("IMAGEBLOCKS_HOME", raising=False)
        mp.delenv("MPLBACKEND", raising=False)  # the kernel's own: inline
        client = RecordingClient(
            nb,
            timeout=600,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(work / "pages")}},
        )
        client.execute()
    return nb, sources, client.updates


def cells_with(sources: list[str], text: str) -> list[int]:
    """Indices of the cells whose source contains `text`."""
    return [i for i, s in enumerate(sources) if text in s]


def pngs(cell) -> list[bytes]:
    """The decoded `image/png` outputs of a cell."""
    return [
        base64.b64decode(o["data"]["image/png"])
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]


def test_no_cell_raises(notebook):
    nb, sources, _ = notebook
    errors = [
        f"cell {i}:\n{sources[i]}\n{o['ename']}: {o['evalue']}"
        for i, cell in enumerate(nb.cells)
        for o in cell.outputs
        if o.output_type == "error"
    ]
    assert not errors, "\n\n".join(errors)


def test_importing_imageblocks_prints_nothing(notebook):
    nb, sources, _ = notebook
    (i,) = cells_with(sources, "from imageblocks.all import *")
    streams = [o["text"] for o in nb.cells[i].outputs if o.output_type == "stream"]
    assert not streams, f"importing imageblocks printed: {streams}"  # tqdm's "IProgress not found"


def test_fit_shows_one_live_html_table_per_phase(notebook):
    nb, sources, updates = notebook
    (i,) = cells_with(sources, "learn.fine_tune(")
    tables = [o for o in nb.cells[i].outputs if "text/html" in o.get("data", {})]
    assert len(tables) == 2  # fine_tune: the frozen epoch, then the unfrozen one
    for table in tables:
        page = table["data"]["text/html"]
        assert "<table" in page and "<th>train_loss</th>" in page and "<th>time</th>" in page
        assert page.count("<tr>") == 1 and "<progress" not in page  # one epoch, no bar left
        assert "train_loss" in table["data"]["text/plain"]  # readable as text too
    assert not any(o.output_type == "stream" for o in nb.cells[i].outputs)  # no text table
    during = [u["text/html"] for u in updates.get(i, []) if "<progress" in u["text/html"]]
    assert during, "the table was not updated while an epoch ran"
    assert any("value='1'" in page and "<tbody>\n  </tbody>" in page for page in during)


@pytest.mark.parametrize(
    "marker",
    [
        "dls.show_batch(",
        "plt.plot(xs,accs)",
        "learn.show_results(max_n=6, figsize=(9,6))",
        "cam=True",
        "interp.plot_top_losses(",
        "report.plot()",
        *EXTRA_CELLS.values(),
    ],
)
def test_each_picture_cell_shows_one_png(notebook, marker):
    nb, sources, _ = notebook
    (i,) = cells_with(sources, marker)
    found = pngs(nb.cells[i])
    assert len(found) == 1, f"{sources[i]!r} showed {len(found)} PNGs"
    assert found[0][:8] == PNG


def test_samples_show_the_image_type_and_size(notebook):
    nb, sources, _ = notebook
    i = cells_with(sources, "blocks=(ImageBlock, MultiCategoryBlock)")[0]
    (result,) = [o for o in nb.cells[i].outputs if o.output_type == "execute_result"]
    text = result["data"]["text/plain"]
    assert text.startswith("(PILImage mode=RGB size=") and "tensor([" in text
