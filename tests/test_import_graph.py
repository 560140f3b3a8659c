"""No import circles inside a package of graft_ui: imports only go one way between its modules.

The graph is read from the sources (ast), with every import counted, also those inside
functions and under TYPE_CHECKING: a circle there still ties the two modules together.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "graft_ui"
PACKAGES = sorted(p.parent for p in PKG.rglob("__init__.py"))


def _graph(folder: Path) -> dict[str, set[str]]:
    """{module: modules of the same package it imports} for the .py files directly in `folder`."""
    pkg = ".".join(folder.relative_to(PKG.parent).parts)
    mods = {p.stem for p in folder.glob("*.py")}
    graph = {}
    for name in mods:
        deps = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = (f"{pkg}.{node.module}" if node.module else pkg) if node.level == 1 else node.module or ""
                if mod == pkg:
                    deps |= {a.name for a in node.names}
                elif mod.startswith(pkg + "."):
                    deps.add(mod[len(pkg) + 1:].split(".")[0])
            elif isinstance(node, ast.Import):
                deps |= {a.name[len(pkg) + 1:].split(".")[0] for a in node.names if a.name.startswith(pkg + ".")}
        graph[name] = (deps & mods) - {name, "__init__"}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_checker_finds_a_circle():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: ".".join(p.relative_to(PKG.parent).parts))
def test_no_import_circle_inside_a_package(folder):
    circle = _circle(_graph(folder))
    assert circle is None, " -> ".join(circle)
