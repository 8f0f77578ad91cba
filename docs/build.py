#!/usr/bin/env python
"""Build the documentation by executing it: every page's outputs are real.

    python docs/build.py                  # full build into docs/ (the book's settings, ~15-20 min)
    python docs/build.py --quick          # small data and images, 1 epoch, into build/docs-quick/
    python docs/build.py --only cli       # some pages (with the pages they need)
    python docs/build.py --quick --out DIR

Each page has a source `docs/src/NAME.md`: Markdown whose fenced code blocks run, in order.

- ```python  runs in one namespace per page (like a notebook): printed text and the value of a
  last bare expression are shown after the code (a DataFrame as a table, a PIL image or any
  matplotlib figure the cell draws as a PNG under `images/`).
- ```bash  runs each command in a shell (the virtualenv's `imageblocks` and `python` first on
  PATH) and shows a `$ command` transcript with the output.
- Options after the language, in braces: `{.hide}` runs the cell without showing it,
  `{.noexec}` shows it without running it, `{.quiet}` shows the code but not the output,
  `{max_lines=N}` cuts a long output (saying how many lines were cut), `{exit=N}` expects the
  last command of a bash cell to exit with N, `{.background wait=URL}` starts a server, waits
  until URL answers, and stops it when the page is done. `{alt="..."}` names the pictures.
- `{{ expression }}` in the prose is replaced by its value in the page's namespace.
- A first comment `<!-- build ... -->` holds `needs: PAGE` (pages whose files this one uses),
  `ports: 8000 8001` (servers the page starts; busy ones are swapped for free ones) and
  `quick: OLD => NEW` lines: in `--quick` builds each OLD text of the page becomes NEW (every
  OLD must occur), so the source keeps the book's settings and the quick build stays small.

All pages run in one scratch folder (relative paths in commands stay short). A `--quick` build
also runs with HOME set to a scratch folder holding small demo datasets, so `~/.imageblocks`
paths and `untar_data` work unchanged. Any failing cell stops the build with exit code 1 and a
message naming the page, the cell and its line.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import linecache
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PAGES = (
    "index",
    "tutorial-multilabel",
    "tutorial-keypoints",
    "migrating-from-fastai",
    "cli",
    "service",
)
QUICK_OUT = ROOT / "build" / "docs-quick"
# quick builds: small demo datasets, generated in well under a minute
QUICK_MULTILABEL_IMAGES = 160
QUICK_POINTS_PERSONS, QUICK_POINTS_FRAMES = 14, 5
BASH_TIMEOUT_S = 1800
SERVER_START_TIMEOUT_S = 180
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
PROSE_EXPR = re.compile(r"\{\{(.+?)\}\}")
FENCE = re.compile(r"^(`{3,})\s*([\w-]*)\s*(?:\{(.*)\})?\s*$")


class BuildError(Exception):
    """A page could not be built: the message names the page and the cell."""


# --- parsing --------------------------------------------------------------------------------


@dataclass
class Block:
    """A piece of a source page: prose, or a fenced code block with its options."""

    kind: str  # "text", "python", "bash" or "fence" (a code block shown as it is)
    text: str
    line: int  # 1-based line of the block's first line in the source
    attrs: dict[str, Any] = field(default_factory=dict)
    opening: str = ""


@dataclass
class Page:
    """A parsed source page."""

    name: str
    source: Path
    blocks: list[Block]
    needs: list[str]
    ports: list[int]
    quick: list[tuple[str, str]]


def parse_attrs(text: str | None) -> dict[str, Any]:
    """`.flag key=value key="two words"` to {'flag': True, 'key': 'value', ...}."""
    attrs: dict[str, Any] = {}
    for token in shlex.split(text or ""):
        if token.startswith("."):
            attrs[token[1:]] = True
        elif "=" in token:
            key, value = token.split("=", 1)
            attrs[key] = value
        else:
            raise ValueError(f"cannot read the code block option {token!r}")
    return attrs


def split_header(text: str) -> tuple[dict[str, list[str]], str, int]:
    """The `<!-- build ... -->` header's lines by key, the rest of the text, its first line."""
    match = re.match(r"\s*<!--\s*build\b(.*?)-->\s*\n", text, flags=re.S)
    if not match:
        return {}, text, 1
    header: dict[str, list[str]] = {}
    for line in match.group(1).splitlines():
        if line.strip():
            key, _, value = line.partition(":")
            header.setdefault(key.strip(), []).append(value.strip())
    return header, text[match.end() :], text[: match.end()].count("\n") + 1


def parse_blocks(text: str, first_line: int = 1) -> list[Block]:
    """Prose and fenced code blocks, in order."""
    blocks: list[Block] = []
    lines = text.split("\n")
    prose: list[str] = []
    prose_start = first_line
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        ticks, lang, attrs = match.group(1), match.group(2), match.group(3)
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        if end == len(lines):
            raise BuildError(f"line {first_line + i}: code block not closed")
        if prose:
            blocks.append(Block("text", "\n".join(prose), prose_start))
        kind = lang if lang in ("python", "bash") else "fence"
        try:
            parsed = parse_attrs(attrs) if kind != "fence" else {}
        except ValueError as e:
            raise BuildError(f"line {first_line + i}: {e}") from None
        code = "\n".join(lines[i + 1 : end])
        blocks.append(Block(kind, code, first_line + i, parsed, lines[i]))
        i = end + 1
        prose, prose_start = [], first_line + i
    if prose:
        blocks.append(Block("text", "\n".join(prose), prose_start))
    return blocks


def load_page(path: Path, quick: bool) -> Page:
    """Read and parse a source page, with its quick substitutions applied in quick builds."""
    header, body, first_line = split_header(path.read_text(encoding="utf-8"))
    subs = []
    for rule in header.get("quick", []):
        old, sep, new = rule.partition("=>")
        if not sep or not old.strip():
            raise BuildError(f"{path}: a quick rule must read 'OLD => NEW', not {rule!r}")
        subs.append((old.strip(), new.strip()))
    if quick:
        for old, new in subs:
            if old not in body:
                raise BuildError(f"{path}: the quick rule's text {old!r} is not in the page")
            body = body.replace(old, new)
    needs = [n for v in header.get("needs", []) for n in re.split(r"[\s,]+", v) if n]
    ports = [int(p) for v in header.get("ports", []) for p in v.split()]
    return Page(path.stem, path, parse_blocks(body, first_line), needs, ports, subs)


# --- rendering ------------------------------------------------------------------------------


def clean_output(text: str) -> str:
    """Terminal output as a reader should see it: no colours, no redrawn lines, no trailing blanks."""
    text = ANSI.sub("", text).replace("\r\n", "\n")
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def cut(text: str, max_lines: Any) -> str:
    """The first `max_lines` lines, and how many were left out."""
    if not max_lines:
        return text
    lines, n = text.split("\n"), int(max_lines)
    if len(lines) <= n:
        return text
    return "\n".join(lines[:n] + [f"... ({len(lines) - n} more lines)"])


def fenced(text: str, lang: str = "text") -> str:
    """A fenced code block that its content cannot close early."""
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text}\n{ticks}"


def md_cell(value: Any) -> str:
    """A value as the text of a Markdown table cell."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def dataframe_markdown(df: Any, max_rows: int = 10) -> str:
    """A pandas DataFrame as a Markdown table (first and last rows of a long one, as pandas)."""
    n = len(df)
    if n > max_rows:
        half = max_rows // 2
        parts = [df.head(half), None, df.tail(half)]
    else:
        parts = [df]
    header = ["", *map(md_cell, df.columns)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for part in parts:
        if part is None:
            rows.append("| " + " | ".join(["..."] * len(header)) + " |")
            continue
        for idx, values in zip(part.index, part.itertuples(index=False)):
            rows.append("| " + " | ".join(map(md_cell, (idx, *values))) + " |")
    table = "\n".join(rows)
    if n > max_rows:
        table += f"\n\n{n} rows × {len(df.columns)} columns"
    return table


# --- running --------------------------------------------------------------------------------


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing listens there, else a free port the system picks."""
    candidates = ([preferred] if preferred else []) + [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise BuildError("no free TCP port on 127.0.0.1")


def split_commands(code: str) -> list[str]:
    """Shell commands of a bash cell: one per line, `\\` continuing a line; comments kept."""
    commands, current = [], ""
    for line in code.split("\n"):
        current = f"{current}\n{line}" if current else line
        if line.endswith("\\"):
            continue
        if current.strip():
            commands.append(current)
        current = ""
    if current.strip():
        commands.append(current)
    return commands


class PageRun:
    """Executes one page's cells and collects the Markdown it becomes."""

    def __init__(self, page: Page, out: Path, env: dict[str, str], quick: bool, verbose: bool):
        self.page, self.out, self.env, self.quick, self.verbose = page, out, env, quick, verbose
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.n_images = 0
        self.cell = 0
        self.servers: list[tuple[subprocess.Popen, Any]] = []
        self.port_map = {p: free_port(None if quick else p) for p in page.ports}

    # -- helpers --
    def where(self, block: Block) -> str:
        return f"docs/src/{self.page.name}.md, cell {self.cell} (line {block.line})"

    def log(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    def with_ports(self, code: str) -> str:
        """`code` with the page's ports swapped for the ones this build uses (in one pass)."""
        if all(old == new for old, new in self.port_map.items()):
            return code
        pattern = "|".join(str(p) for p in self.port_map)
        return re.sub(
            rf"(?<=[:\s])({pattern})\b", lambda m: str(self.port_map[int(m.group(1))]), code
        )

    def save_picture(self, obj: Any, alt: str) -> str:
        """Save a matplotlib figure or PIL image as images/PAGE-N.png; its Markdown."""
        self.n_images += 1
        name = f"{self.page.name}-{self.n_images}.png"
        path = self.out / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if hasattr(obj, "savefig"):
            obj.savefig(path, dpi=80, bbox_inches="tight")
        else:
            obj.convert("RGB").save(path)
        return f"![{alt}](images/{name})"

    # -- python --
    def run_python(self, block: Block) -> str:
        import matplotlib.pyplot as plt

        code = self.with_ports(block.text)
        filename = f"<{self.page.name}.md cell {self.cell}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename)
        except SyntaxError as e:
            raise BuildError(f"{self.where(block)}: syntax error: {e}") from None
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
            last = ast.Expression(tree.body.pop().value)
        buf = io.StringIO()
        value = None
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                exec(compile(tree, filename, "exec"), self.ns)
                if last is not None:
                    value = eval(compile(last, filename, "eval"), self.ns)
        except Exception:
            printed = clean_output(buf.getvalue())
            raise BuildError(
                f"{self.where(block)} raised an error:\n{textwrap.indent(code, '    ')}\n"
                + (f"its output:\n{printed}\n" if printed else "")
                + traceback.format_exc()
            ) from None
        pictures: list[Any] = [plt.figure(n) for n in plt.get_fignums()]
        if hasattr(value, "savefig") or hasattr(value, "getpixel"):  # a figure, a PIL image
            if all(value is not p for p in pictures):
                pictures.append(value)
            value = None
        text = clean_output(buf.getvalue())
        table = None
        if value is not None:
            if type(value).__name__ == "DataFrame" and hasattr(value, "itertuples"):
                table = dataframe_markdown(value)
            else:
                text = f"{text}\n{value!r}".strip("\n")
        alt = block.attrs.get("alt", f"{self.page.name}: output of the cell above")
        parts = []
        if not block.attrs.get("hide"):
            parts.append(fenced(code, "python"))
            if not block.attrs.get("quiet"):
                if text:
                    parts.append(fenced(cut(text, block.attrs.get("max_lines"))))
                if table:
                    parts.append(table)
                parts += [self.save_picture(p, alt) for p in pictures]
        plt.close("all")
        return "\n\n".join(parts)

    # -- bash --
    def run_bash(self, block: Block) -> str:
        code = self.with_ports(block.text)
        if block.attrs.get("background"):
            return self.start_server(block, code)
        expected = int(block.attrs.get("exit", 0))
        commands = split_commands(code)
        runnable = [c for c in commands if not c.lstrip().startswith("#")]
        transcript = []
        for command in commands:
            if command.lstrip().startswith("#"):
                transcript.append(command)
                continue
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(
                    ["bash", "-o", "pipefail", "-c", command],
                    cwd=os.getcwd(),
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=BASH_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                raise BuildError(
                    f"{self.where(block)}: `{command}` ran past {BASH_TIMEOUT_S}s"
                ) from None
            output = clean_output(proc.stdout.decode("utf-8", "replace"))
            want = expected if command is runnable[-1] else 0
            if proc.returncode != want:
                raise BuildError(
                    f"{self.where(block)}: `{command}` exited with {proc.returncode} "
                    f"(expected {want}); its output:\n{output}"
                )
            self.log(f"    $ {command.splitlines()[0][:90]}  ({time.perf_counter() - t0:.1f}s)")
            output = cut(output, block.attrs.get("max_lines"))
            status = f"\n[exit status {proc.returncode}]" if proc.returncode else ""
            transcript.append(f"$ {command}" + (f"\n{output}" if output else "") + status)
        if block.attrs.get("hide"):
            return ""
        if block.attrs.get("quiet"):
            return fenced(code, "bash")
        return fenced("\n".join(transcript), "console")

    def start_server(self, block: Block, command: str) -> str:
        """Start a long-running command, wait until its URL answers; its output so far."""
        url = self.with_ports(block.attrs.get("wait", ""))
        if not url:
            raise BuildError(f"{self.where(block)}: a background cell needs wait=URL")
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=os.getcwd(),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
        self.servers.append((proc, log))
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                log.seek(0)
                output = clean_output(log.read().decode("utf-8", "replace"))
                raise BuildError(
                    f"{self.where(block)}: `{command}` stopped with exit code "
                    f"{proc.returncode} before {url} answered; its output:\n{output}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BuildError(f"{self.where(block)}: {url} did not answer in time")
            time.sleep(0.3)
        time.sleep(0.3)
        log.seek(0)
        output = clean_output(log.read().decode("utf-8", "replace"))
        self.log(f"    $ {command}  (serving)")
        if block.attrs.get("hide"):
            return ""
        return fenced(f"$ {command}\n{cut(output, block.attrs.get('max_lines'))}", "console")

    def stop_servers(self) -> None:
        for proc, log in self.servers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            log.close()
        self.servers = []

    # -- prose --
    def render_text(self, block: Block) -> str:
        def value(match: re.Match) -> str:
            expr = match.group(1).strip()
            try:
                return str(eval(expr, self.ns))
            except Exception as e:
                raise BuildError(
                    f"docs/src/{self.page.name}.md, line {block.line}: "
                    f"{{{{ {expr} }}}} failed: {type(e).__name__}: {e}"
                ) from None

        return PROSE_EXPR.sub(value, self.with_ports(block.text))

    # -- page --
    @staticmethod
    def seed_torch() -> bool:
        """Seed torch if it is imported (importing it only to seed would slow small pages)."""
        torch = sys.modules.get("torch")
        if torch is None:
            return False
        torch.manual_seed(0)
        return True

    def run(self) -> str:
        import random

        import numpy as np

        random.seed(0)
        np.random.seed(0)
        seeded = self.seed_torch()
        parts = []
        try:
            for block in self.page.blocks:
                if block.kind == "text":
                    parts.append(self.render_text(block).strip("\n"))
                    continue
                if block.kind == "fence" or block.attrs.get("noexec"):
                    parts.append(self.with_ports(block.opening.split("{")[0].rstrip()))
                    parts[-1] += "\n" + self.with_ports(block.text) + "\n" + "```"
                    continue
                self.cell += 1
                t0 = time.perf_counter()
                first = block.text.strip().splitlines()[0] if block.text.strip() else ""
                self.log(f"  cell {self.cell} (line {block.line}): {first[:80]}")
                run = self.run_python if block.kind == "python" else self.run_bash
                rendered = run(block)
                seeded = seeded or self.seed_torch()  # once a cell has imported torch
                if rendered:
                    parts.append(rendered)
                took = time.perf_counter() - t0
                if took > 5:
                    self.log(f"    ... {took:.1f}s")
        finally:
            self.stop_servers()
        return "\n\n".join(p for p in parts if p) + "\n"


# --- the build ------------------------------------------------------------------------------


def select(pages: dict[str, Page], only: list[str] | None) -> list[str]:
    """The pages to build, in source order, with the pages they need."""
    if not only:
        return list(pages)
    unknown = [n for n in only if n not in pages]
    if unknown:
        raise BuildError(f"unknown page(s) {unknown}: the pages are {list(pages)}")
    chosen: set[str] = set()

    def add(name: str) -> None:
        if name in chosen:
            return
        for need in pages[name].needs:
            if need not in pages:
                raise BuildError(f"docs/src/{name}.md needs {need!r}, which is not a page")
            add(need)
        chosen.add(name)

    for name in only:
        add(name)
    return [n for n in pages if n in chosen]


def ordered_sources(src: Path) -> list[Path]:
    """Source pages: the known ones in reading order, then any others by name."""
    files = sorted(src.glob("*.md"))
    rank = {name: i for i, name in enumerate(PAGES)}
    return sorted(files, key=lambda p: (rank.get(p.stem, len(rank)), p.stem))


def prepare_environment(work: Path, quick: bool) -> dict[str, str]:
    """Environment of the build (and of its commands); a quick build's small demo data."""
    os.environ.pop("IMAGEBLOCKS_HOME", None)  # the pages read ~/.imageblocks
    os.environ.setdefault("MPLBACKEND", "Agg")
    if quick:
        real_home = Path.home()
        os.environ.setdefault("MPLCONFIGDIR", str(real_home / ".config" / "matplotlib"))
        os.environ.setdefault("XDG_CACHE_HOME", str(real_home / ".cache"))
        os.environ["HOME"] = str(work / "home")
        os.environ["IMAGEBLOCKS_DOCS_QUICK"] = "1"
        make_quick_data(work / "home" / ".imageblocks" / "data")
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1", TERM="dumb", COLUMNS="100")
    env.pop("FORCE_COLOR", None)
    return env


def make_quick_data(data: Path) -> None:
    """Small demo datasets where `untar_data` finds them (quick builds only)."""
    sys.path.insert(0, str(ROOT))
    from imageblocks.demodata import make_demo_multilabel, make_demo_points

    t0 = time.perf_counter()
    make_demo_multilabel(data / "demo_multilabel", n_images=QUICK_MULTILABEL_IMAGES, seed=0)
    make_demo_points(
        data / "demo_points",
        n_persons=QUICK_POINTS_PERSONS,
        frames_per_person=QUICK_POINTS_FRAMES,
        seed=0,
    )
    print(f"quick demo data in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


def header(name: str, quick: bool) -> str:
    note = (
        f"<!-- Generated by docs/build.py from docs/src/{name}.md"
        f"{' (quick build)' if quick else ''} on {date.today().isoformat()}: "
        "edit the source, then run `make docs`. -->\n\n"
    )
    if quick:
        note += (
            "> **Quick build** (`docs/build.py --quick`): small data, small images and one epoch, "
            "to check that every cell runs. The published page comes from the full build.\n\n"
        )
    return note


def build(args: argparse.Namespace) -> list[tuple[str, float]]:
    src = Path(args.src).resolve()
    out = Path(args.out).resolve() if args.out else (QUICK_OUT if args.quick else DOCS)
    sources = ordered_sources(src)
    if not sources:
        raise BuildError(f"no source pages in {src}")
    pages = {p.stem: load_page(p, args.quick) for p in sources}
    names = select(pages, args.only)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="ib-docs-"))
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    times = []
    try:
        env = prepare_environment(work, args.quick)
        sys.path.insert(0, str(ROOT))
        pages_dir = work / "pages"  # apart from a quick build's HOME (work/home)
        pages_dir.mkdir(exist_ok=True)
        os.chdir(pages_dir)
        for name in names:
            print(f"building {name} ...", file=sys.stderr, flush=True)
            for old in (out / "images").glob(f"{name}-*.png"):
                old.unlink()
            t0 = time.perf_counter()
            text = PageRun(pages[name], out, env, args.quick, not args.silent).run()
            (out / f"{name}.md").write_text(header(name, args.quick) + text, encoding="utf-8")
            times.append((name, time.perf_counter() - t0))
            print(f"wrote {out / (name + '.md')} in {times[-1][1]:.1f}s", file=sys.stderr)
    finally:
        os.chdir(cwd)
        if not args.work and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, 1 epoch (a smoke test)")
    parser.add_argument("--out", help="output folder (default: docs/, or build/docs-quick/)")
    parser.add_argument("--only", nargs="+", help="pages to build (and the pages they need)")
    parser.add_argument("--src", default=str(DOCS / "src"), help="folder of source pages")
    parser.add_argument("--work", help="scratch folder the cells run in (kept)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    parser.add_argument("--silent", action="store_true", help="no per-cell progress")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        times = build(args)
    except BuildError as e:
        print(f"docs build failed: {e}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{n} {s:.0f}s" for n, s in times)
    print(f"docs built in {time.perf_counter() - t0:.0f}s ({summary})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
