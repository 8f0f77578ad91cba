"""The package's shape: layers point down, no import cycles, no oversized modules.

Imports are read from the source with `ast` (module level and inside functions, `TYPE_CHECKING`
blocks excepted: they never run), so a cycle hidden in a function body is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imageblocks"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join([*base, node.module] if node.module else base)


def _targets(name: str) -> set[str]:
    """The package modules an import of `name` loads (the module and its packages)."""
    out, parts = set(), name.split(".")
    for k in range(1, len(parts) + 1):
        candidate = ".".join(parts[:k])
        if candidate in MODULES:
            out.add(candidate)
    return out


def imports_of(module: str) -> set[str]:
    """Every package module `module` imports, anywhere in its body (not under TYPE_CHECKING)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_targets(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            found.update(_targets(base))
            for alias in node.names:  # `from imageblocks.learn import export` loads a module
                found.update(_targets(f"{base}.{alias.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    # importing a package's own submodule from its __init__ is not an upward edge of the graph
    return {m for m in found if not module.startswith(m + ".")}


GRAPH = {m: imports_of(m) for m in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_scan_sees_the_package():
    assert "imageblocks.learn.learner" in GRAPH
    assert "imageblocks.data.block" in GRAPH
    assert any(GRAPH.values())


def test_no_import_cycle():
    cycles, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            walk(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "lower, forbidden",
    [
        ("data", {"learn", "serve", "cli", "recipes"}),
        ("transforms", {"learn", "data", "serve", "cli", "recipes"}),
        ("models", {"learn", "data", "serve", "cli", "recipes"}),
        ("learn", {"serve", "cli", "recipes"}),
    ],
)
def test_layers_point_down(lower, forbidden):
    bad = sorted(
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if _layer(m) == lower
        for t in targets
        if _layer(t) in forbidden
    )
    assert not bad, "\n".join(bad)


def test_only_the_cli_and_the_service_import_them():
    bad = sorted(
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if (t == "imageblocks.cli" or _layer(t) == "serve")
        and m not in ("imageblocks.cli", "imageblocks.__main__")
        and _layer(m) != "serve"
    )
    assert not bad, "\n".join(bad)


def test_no_module_over_the_line_limit():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_function_local_import_of_the_package():
    """Cycles are fixed by the layering, not hidden in function bodies."""
    bad = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("imageblocks")
                ):
                    bad.append(f"{m}:{node.lineno} from {node.module}")
                elif isinstance(node, ast.Import) and any(
                    a.name.startswith("imageblocks") for a in node.names
                ):
                    bad.append(f"{m}:{node.lineno} import")
    allowed = {m for m in bad if m.startswith("imageblocks.cli:")}
    assert not [b for b in bad if b not in allowed], "\n".join(b for b in bad if b not in allowed)
