"""The package's modules import, and import one another without cycles.

The graph is that of module-level imports, those under `if TYPE_CHECKING:` included (a cycle hidden there is still
two modules that cannot be understood one without the other); imports inside functions, made late on purpose,
are not edges.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import scratchdet

PACKAGE = Path(scratchdet.__file__).parent


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(nodes: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)  # `from scratchdet.engine import rundir` imports the module rundir too
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.If | ast.Try):
            names |= _imported(node.body) | _imported(node.orelse)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        imported = _imported(ast.parse(path.read_text()).body)
        graph[name] = {other for other in imported if other in modules and other != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_imports_itself_back() -> None:
    modules = module_files()
    assert "scratchdet.study.runner" in modules and len(modules) > 40
    assert cycles(import_graph(modules)) == []


def test_every_module_imports() -> None:
    for name in sorted(module_files()):
        if name != "scratchdet.__main__":  # runs the CLI
            importlib.import_module(name)


def test_no_module_shadows_the_standard_library() -> None:
    import sys

    shadowing = [name for name in module_files() if name.rsplit(".", 1)[-1] in sys.stdlib_module_names]
    assert shadowing == []
