"""The segflow package's import graph, read from the source with ``ast`` (nothing is imported).

Module names are paths under workflow_scripts/segflow without ``.py``, as ``library()`` in rules/common.smk takes
them: ``preprocess``, ``sources/__init__``, ``sources/kits``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workflow_scripts" / "segflow"


def module_name(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").as_posix()


def all_modules() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def _resolve(dotted: str) -> str | None:
    """``segflow.a.b`` -> the module name of that file (a package maps to its ``__init__``), or None."""
    parts = dotted.split(".")
    if parts[0] != "segflow" or len(parts) == 1:  # the package itself: a docstring and __version__
        return None
    rest = "/".join(parts[1:])
    if (PACKAGE / f"{rest}.py").exists():
        return rest
    if (PACKAGE / rest / "__init__.py").exists():
        return f"{rest}/__init__"
    return None


def imports_of(path: Path) -> set[str]:
    """segflow modules a file imports anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from segflow import report_figures`` names a module; ``from segflow.io import x`` names a function.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {m for m in map(_resolve, names) if m}
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the segflow modules it imports directly (a package's ``__init__`` counts as imported by its
    submodules, as Python runs it first)."""
    edges = {}
    for name in all_modules():
        deps = imports_of(PACKAGE / f"{name}.py")
        if "/" in name and not name.endswith("__init__"):
            deps.add(f"{name.rsplit('/', 1)[0]}/__init__")
        edges[name] = deps - {name}
    return edges


def closure(roots: set[str], edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges.get(name, ()))
    return seen


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(name):
        state[name] = 1
        stack.append(name)
        for dep in sorted(edges.get(name, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(edges):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


if __name__ == "__main__":
    import sys

    cycle = find_cycle(graph())
    print(" -> ".join(cycle) if cycle else "no import cycle in segflow")
    sys.exit(1 if cycle else 0)
