"""The package's import structure: no cycle, nothing imports up into the entry points.

Read statically with `ast` over every module: imports inside functions count (they hide a loop,
they do not remove it); those under `if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "uniframework"
ENTRY_POINTS = {
    "uniframework.pipeline",
    "uniframework.report",
    "uniframework.cli",
    "uniframework.__main__",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (`from .a import b` names `a.b` when it is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            if node.module or len(subs) < len(node.names):  # not only `from . import <modules>`
                found.add(base)
            found.update(subs)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def import_graph() -> nx.DiGraph:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = nx.DiGraph()
    for p in paths:
        graph.add_node(module_name(p))
        for target in imported(p, modules):
            graph.add_edge(module_name(p), target)
    return graph


def test_no_import_cycle():
    loops = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not loops, f"import cycles: {loops}"


def test_nothing_imports_the_entry_points():
    """`pipeline` (runs a config), `report` (writes report.html) and `cli` sit on top: the
    stages and the commands' libraries read a run through `rundir`, not through them."""
    graph = import_graph()
    for entry in ENTRY_POINTS:
        users = set(graph.predecessors(entry)) - ENTRY_POINTS
        assert not users, f"{sorted(users)} import {entry}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from .b import c", {"uniframework.x.b"}),
        ("from ..y import z", {"uniframework.y", "uniframework.y.z"}),
        (
            "if TYPE_CHECKING:\n    from .b import c\nelse:\n    import uniframework.y",
            {"uniframework.y"},
        ),
        ("def f():\n    from . import b", {"uniframework.x.b"}),
    ],
)
def test_imports_are_read_with_functions_and_without_type_checking(tmp_path, source, expected):
    folder = tmp_path / "uniframework" / "x"
    folder.mkdir(parents=True)
    (folder / "a.py").write_text(source)
    modules = {"uniframework.x.b", "uniframework.x", "uniframework.y", "uniframework.y.z"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "uniframework"
    try:
        assert imported(folder / "a.py", modules) == expected
    finally:
        PACKAGE = saved
