"""The package's import graph, read from the source with ``ast``: one checker for the layering and the cycle tests.

Every ``import`` statement counts, module-level and function-level alike (a lazy import is still a dependency), and
relative imports are resolved to absolute module names. ``from PKG import name`` counts as an import of ``PKG.name``
when that is a module of the package, else of ``PKG`` itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "llamafactory_kimi_audio"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path, root: Path = ROOT) -> str:
    """``root/data/convert.py`` → ``PACKAGE.data.convert``; a package's ``__init__.py`` names the package."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def import_statements(path: Path, root: Path = ROOT) -> Iterator[tuple[str, list[str]]]:
    """Per import statement: the absolute module it names and the names it takes from it."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module, [alias.name for alias in node.names]


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of everything ``path`` imports: each module, and ``module.name`` for each name taken from it."""
    names: set[str] = set()
    for module, taken in import_statements(path, root):
        names.add(module)
        names.update(f"{module}.{name}" for name in taken)
    return names


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the package modules it imports (itself excluded)."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for module, taken in import_statements(path, root):
            submodules = {f"{module}.{item}" for item in taken} & modules.keys()
            if module in modules and len(submodules) < len(taken):
                targets.add(module)  # names (not only submodules) taken from a package module
            targets |= submodules
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module, each as one shortest cycle through its first
    module (sorted), so a failure names modules that really import each other in a ring."""
    found = []
    for component in _components(graph):
        if len(component) > 1:
            found.append(_shortest_cycle(graph, sorted(component)[0], component))
    return sorted(found)


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion depth should not depend on it)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in graph:
                    continue
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    result.append(component)
    return result


def _shortest_cycle(graph: dict[str, set[str]], start: str, component: set[str]) -> list[str]:
    """Breadth-first from ``start`` back to itself inside its component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{start} is in a component but on no cycle")
