"""The package layout stays as docs/architecture.md describes it: a few folders by pipeline
stage, imports only running down the layers, no cycles, small modules, and every import
made inside a function saying why."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from support.helpers import REPO

PACKAGE = REPO / "src" / "mlflow_steps"
# Lower layers never import higher ones; areas on one layer never import each other.
LAYERS = {"core": 0, "image": 1, "env": 2, "build": 3,
          "runtime": 4, "server": 4, "workflow": 4, "cli": 5}
TOP_LEVEL_FILES = {"__init__.py", "__main__.py"}
MAX_LINES = 400
SIZE_REASON = "Size:"  # a module docstring line that says why it is longer


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(("mlflow_steps", *parts)).removesuffix(".__init__"), path


def imported(node: ast.AST, module: str, path: Path) -> list[str]:
    """The mlflow_steps modules (or packages) an import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("mlflow_steps")]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}".rstrip(".")
    if not base.startswith("mlflow_steps"):
        return []
    known = {name for name, _ in modules()}
    names = [f"{base}.{alias.name}" for alias in node.names]
    return [name for name in names if name in known] or [base]


def area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def function_level(tree: ast.Module) -> Iterator[ast.stmt]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    yield inner


def test_the_package_top_level_is_a_few_folders_by_stage() -> None:
    entries = {path.name for path in PACKAGE.iterdir() if path.name != "__pycache__"}
    folders = {name for name in entries if (PACKAGE / name).is_dir()}
    assert entries - folders <= TOP_LEVEL_FILES
    assert folders == set(LAYERS), "a new top-level folder needs a place in LAYERS and the docs"


def test_imports_only_run_down_the_layers() -> None:
    upward = []
    for module, path in modules():
        here = area(module)
        for node in ast.walk(ast.parse(path.read_text())):
            for target in imported(node, module, path):
                there = area(target)
                if here and there and there != here and LAYERS[there] >= LAYERS[here]:
                    upward.append(f"{module}:{node.lineno} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for module, path in modules():
        tree = ast.parse(path.read_text())
        nested = {id(node) for node in function_level(tree)}
        graph[module] = {target for node in ast.walk(tree) if id(node) not in nested
                         for target in imported(node, module, path) if target != module}
    cycles, visiting, done = [], [], set()

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(" -> ".join([*visiting[visiting.index(module):], module]))
            return
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert not cycles, "\n".join(cycles)


def test_modules_are_small_or_say_why() -> None:
    large = []
    for module, path in modules():
        lines = len(path.read_text().splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and SIZE_REASON not in docstring:
            large.append(f"{module}: {lines} lines")
    assert not large, "\n".join(large)


def test_every_import_inside_a_function_says_why() -> None:
    silent = []
    for module, path in modules():
        source = path.read_text().splitlines()
        for node in function_level(ast.parse("\n".join(source))):
            before = source[node.lineno - 2].strip() if node.lineno > 1 else ""
            if "#" not in source[node.end_lineno - 1] and not before.startswith("#"):
                silent.append(f"{module}:{node.lineno}: {source[node.lineno - 1].strip()}")
    assert not silent, f"{len(silent)} silent:\n" + "\n".join(silent)
