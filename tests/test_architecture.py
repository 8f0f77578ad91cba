"""The packages' shape: layers point down, no import cycles, no oversized modules; the runtime
(runtime/imageblocks_runtime) imports nothing of imageblocks nor of the training libraries.

Imports are read from the source with `ast` (module level and inside functions, `TYPE_CHECKING`
blocks excepted: they never run), so a cycle hidden in a function body is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "imageblocks"
RUNTIME = REPO / "runtime" / "imageblocks_runtime"
MAX_LINES = 500
# what a deployment without PyTorch lacks: the runtime never imports these
HEAVY = {"torch", "torchvision", "timm", "pandas", "matplotlib", "imageblocks"}


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(p, package): p
    for package in (PACKAGE, RUNTIME)
    for p in sorted(package.rglob("*.py"))
}


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


def _main(module: str) -> bool:
    """Whether `module` is in the training package (not the runtime)."""
    return module.split(".")[0] == "imageblocks"


def test_the_scan_sees_the_packages():
    assert "imageblocks.learn.learner" in GRAPH
    assert "imageblocks.data.block" in GRAPH
    assert "imageblocks_runtime.model" in GRAPH and "imageblocks_runtime.preprocess" in GRAPH
    assert any(GRAPH.values())
    assert "imageblocks_runtime.preprocess" in GRAPH["imageblocks.transforms.item"]


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
        if _main(m) and _layer(m) == lower
        for t in targets
        if _main(t) and _layer(t) in forbidden
    )
    assert not bad, "\n".join(bad)


ENTRY_POINTS = (
    "imageblocks.cli",
    "imageblocks.__main__",
    "imageblocks_runtime.cli",
    "imageblocks_runtime.__main__",
)


def test_only_the_cli_and_the_service_import_them():
    bad = sorted(
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if (_layer(t) == "cli" or _layer(t) == "serve")
        and m not in ENTRY_POINTS
        and _layer(m) != "serve"
    )
    assert not bad, "\n".join(bad)


def _external_roots(path: Path) -> set[str]:
    """The top-level name of every absolute import in `path`, function bodies included."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_runtime_imports_neither_imageblocks_nor_the_training_libraries():
    bad = sorted(
        f"{m} imports {', '.join(sorted(_external_roots(p) & HEAVY))}"
        for m, p in MODULES.items()
        if not _main(m) and _external_roots(p) & HEAVY
    )
    assert not bad, "\n".join(bad)
    assert not [
        f"{m} imports {t}" for m, ts in GRAPH.items() if not _main(m) for t in ts if _main(t)
    ]


RUNTIME_TOP = {"model", "batch", "cli", "serve", "__main__"}  # the layers that run a model


def test_the_runtime_layers_point_down():
    """Decoding, pre-processing, the config and the records know no model, batch, CLI or HTTP;
    the model knows no batch, CLI or HTTP."""
    bad = []
    for m, targets in GRAPH.items():
        if _main(m):
            continue
        for t in targets:
            lower_reaches_up = _layer(m) not in RUNTIME_TOP and _layer(t) in RUNTIME_TOP
            model_reaches_up = _layer(m) == "model" and _layer(t) in RUNTIME_TOP - {"model"}
            if lower_reaches_up or model_reaches_up:
                bad.append(f"{m} imports {t}")
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
    # the entry points load what a command needs when it runs (the service's optional extras)
    entry_points = (
        "imageblocks.cli:",
        "imageblocks_runtime.cli:",
        "imageblocks_runtime.serve.command:",
    )
    allowed = {m for m in bad if m.startswith(entry_points)}
    assert not [b for b in bad if b not in allowed], "\n".join(b for b in bad if b not in allowed)
