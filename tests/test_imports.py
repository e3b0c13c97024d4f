"""The shape of the package, checked statically: the import graph of ``bridge/`` has no cycle
(``TYPE_CHECKING`` imports count: a cycle hidden from the interpreter is still one for a reader),
no function imports anything (an import inside a function is how a cycle gets dodged), and no
module grows past 500 lines.

Read with ``ast``, never imported: one interpreter per module would be slow, and importing proves
nothing about the imports a function makes later.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(node: ast.ImportFrom, importer: str) -> str:
    """The absolute module an ``import from`` names, relative forms included."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(node: ast.Import | ast.ImportFrom, importer: str) -> Iterator[str]:
    """The ``bridge`` modules an import statement depends on. ``from bridge.x import y`` names
    ``bridge.x.y`` when that is a module, else ``bridge.x`` (where ``y`` is defined)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in MODULES:
                yield alias.name
        return
    target = resolve(node, importer)
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        if submodule in MODULES:
            yield submodule
        elif target in MODULES:
            yield target


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports outside any function: top level, ``if TYPE_CHECKING:``, ``try:``, class bodies."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = graph.setdefault(name, set())
        for node in module_level_imports(tree):
            edges.update(m for m in imported_modules(node, name) if m != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def function_level_imports() -> list[str]:
    found = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                    found.append(f"{where}: {ast.unparse(node)}")
    return sorted(set(found))


# --- the checker itself ------------------------------------------------------------------------


def test_the_checker_sees_a_cycle_and_ignores_a_chain() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_checker_reads_type_checking_blocks_and_resolves_names_to_modules() -> None:
    graph = import_graph()
    # Known edges of the tree as it is: a module-level import, and a name imported from a package.
    assert "bridge.supervisor" in graph["bridge.cli.run"]
    assert "bridge.config" in graph["bridge.supervisor"]
    source = "if TYPE_CHECKING:\n    from bridge.health import Readiness\n"
    [node] = module_level_imports(ast.parse(source))
    assert list(imported_modules(node, "bridge.admin")) == ["bridge.health"]


# --- the package ---------------------------------------------------------------------------------


def test_the_import_graph_of_bridge_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles in bridge/: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_function_in_bridge_imports() -> None:
    found = function_level_imports()
    assert found == [], "imports inside functions:\n" + "\n".join(found)


def test_no_module_in_bridge_exceeds_500_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    too_long = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines: {too_long}"
