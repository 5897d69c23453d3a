"""Who imports a patched name: an ``ast`` scan of an installed package's source (LLaMA-Factory's, for the table).

A row that replaces a module-level name must replace it where it is defined, before any other module binds it with
``from ... import`` (or it must cover every importer by a row of its own): :func:`uncovered` lists the importers a
table leaves out. Both ``from X import NAME`` (also through a module that re-exports it, and inside functions) and
``import X`` / ``from P import X`` followed by ``X.NAME`` count as importing. Stdlib only; nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Module:
    name: str
    defines: set[str] = field(default_factory=set)  # top-level def / class / assignment targets
    from_imports: list[tuple[str, str]] = field(default_factory=list)  # (absolute source module, name)
    module_aliases: dict[str, str] = field(default_factory=dict)  # local name -> the module it names
    attributes: set[str] = field(default_factory=set)  # dotted uses, "alias.attr"
    subclasses: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)  # class -> (base names, members)


def scan(package_dir: str | Path) -> dict[str, Module]:
    """Every module of the package in ``package_dir`` (its ``__init__.py`` folder), by dotted name."""
    root = Path(package_dir)
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError):
            continue
        modules[name] = _read(name, is_package, tree)
    return modules


def _read(name: str, is_package: bool, tree: ast.Module) -> Module:
    module = Module(name)
    for node in tree.body:
        module.defines |= _top_level_names(node)
        if isinstance(node, ast.ClassDef):
            bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}
            replaced = [item for item in node.body if not _extends(item)]
            module.subclasses[node.name] = (bases, set().union(*(_top_level_names(item) for item in replaced)))
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(package, node.level, node.module)
            for alias in node.names:
                module.from_imports.append((source, alias.name))
                module.module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"  # maybe a submodule
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    module.module_aliases[alias.asname] = alias.name
                else:  # `import a.b.c` binds `a`; uses are spelled a.b.c.NAME
                    module.module_aliases.setdefault(alias.name.split(".")[0], alias.name.split(".")[0])
        elif isinstance(node, ast.Attribute) and (dotted := _dotted(node)) is not None:
            module.attributes.add(dotted)
    return module


def _extends(node: ast.stmt) -> bool:
    """A method that calls ``super().<its own name>``: the base class's (patched) method still runs."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    return any(
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == node.name
        and isinstance(call.func.value, ast.Call)
        and isinstance(call.func.value.func, ast.Name)
        and call.func.value.func.id == "super"
        for call in ast.walk(node)
    )


def _top_level_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {t.id for t in targets if isinstance(t, ast.Name)}
    if isinstance(node, (ast.If, ast.Try)):  # `if TYPE_CHECKING` / `try: import` blocks
        inner = [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
        return set().union(*(_top_level_names(child) for child in inner))
    return set()


def _absolute(package: str, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _dotted(node: ast.Attribute) -> str | None:
    parts: list[str] = [node.attr]
    value: Any = node.value
    while isinstance(value, ast.Attribute):
        parts.append(value.attr)
        value = value.value
    return ".".join([value.id, *reversed(parts)]) if isinstance(value, ast.Name) else None


def definer(modules: dict[str, Module], module: str, name: str) -> str | None:
    """The module that defines ``name``, following re-exports from ``module`` (None: not found)."""
    seen: set[str] = set()
    while module in modules and module not in seen:
        seen.add(module)
        if name in modules[module].defines:
            return module
        module = next((source for source, imported in modules[module].from_imports if imported == name), "")
    return None


def importers(modules: dict[str, Module], source: str, name: str) -> set[str]:
    """Every module that binds or reads ``source.name`` through an import (re-exporting modules count too)."""
    found: set[str] = set()
    holders = {source}  # modules from which `name` can be imported: the definer, then its re-exporters
    changed = True
    while changed:
        changed = False
        for module in modules.values():
            if module.name not in found and _imports(module, holders, name):
                found.add(module.name)
                holders.add(module.name)
                changed = True
    return found - {source}


def _imports(module: Module, holders: set[str], name: str) -> bool:
    if any(src in holders and imported == name for src, imported in module.from_imports):
        return True
    for alias, target in module.module_aliases.items():
        for holder in holders:
            if holder == target and f"{alias}.{name}" in module.attributes:
                return True
            if holder.startswith(f"{target}.") and f"{alias}{holder[len(target) :]}.{name}" in module.attributes:
                return True
    return False


@dataclass(frozen=True)
class Gap:
    row: str
    problem: str

    def __str__(self) -> str:
        return f"{self.row}: {self.problem}"


def uncovered(rows: Iterable[Any], modules: dict[str, Module], root: str) -> Iterator[Gap]:
    """What the rows (``patching.Patch``) leave out in the package ``root``: a module-level name patched elsewhere
    than where it is defined while other importers exist, or applied (``trigger``) after importers may bind it."""
    rows = [row for row in rows if row.owner.split(".")[0] == root]
    owners: dict[tuple[str, Any], set[str]] = {}
    for row in rows:
        owners.setdefault((row.attribute, row.make_replacement), set()).add(row.owner)
    for row in rows:
        module, _, cls = row.owner.partition(":")
        defined_in = definer(modules, module, cls or row.attribute)
        if defined_in is None:
            yield Gap(row.name, f"{cls or row.attribute} is not found in {module} or what it imports from")
        elif cls:
            if defined_in != module:
                yield Gap(row.name, f"class {cls} is defined in {defined_in}, not {module}")
            yield from _overrides(row, modules, cls)
        elif defined_in in owners[(row.attribute, row.make_replacement)]:
            if defined_in == module and row.trigger != module and importers(modules, module, row.attribute):
                yield Gap(row.name, f"applied when {row.trigger} is imported: importers of {module} bind it earlier")
        else:
            covered = owners[(row.attribute, row.make_replacement)]
            for importer in sorted(importers(modules, defined_in, row.attribute) - covered):
                yield Gap(row.name, f"{importer} imports {row.attribute} from {defined_in}, and no row covers it")


def _overrides(row: Any, modules: dict[str, Module], cls: str) -> Iterator[Gap]:
    """Subclasses of the patched class (by name, one level) that define the patched attribute themselves without
    calling ``super().<attribute>`` (an override that does still runs the patched method)."""
    for module in modules.values():
        for name, (bases, members) in module.subclasses.items():
            if cls in bases and row.attribute in members:
                yield Gap(row.name, f"{module.name}:{name} subclasses {cls} and overrides {row.attribute}")
