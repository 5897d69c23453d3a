"""Check every patch row's target against a LLaMA-Factory source tree, without importing that tree.

    python scripts/check_patches.py PATH   # a LLaMA-Factory checkout, its src/, or the llamafactory package folder

One line per row of ``integration/patches.py``: ``ok``, ``missing`` (the trigger module, the owner or the attribute
is gone) or ``signature changed`` (the leading parameters a wrapper relies on differ). Rows that patch transformers or
PEFT are ``not checked`` (their owner is outside the tree). A row that rebinds a name where LLaMA-Factory imports it
also lists the tree's other importers of that name, which the row does not reach. The tree is parsed with ``ast``,
so any release (or git main) can be checked from the package's own environment. Exit code 1 when a row is not ok.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "llamafactory"
OK, MISSING, CHANGED, NOT_CHECKED = "ok", "missing", "signature changed", "not checked"


@dataclass
class Found:
    node: ast.AST | None  # the def / class / assignment; None: inherited from outside the tree
    module: str  # where it is defined
    note: str = ""


class SourceTree:
    """LLaMA-Factory's modules as files under ``root`` (the ``llamafactory`` package folder), parsed on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._parsed: dict[str, ast.Module | None] = {}

    def file_of(self, module: str) -> Path | None:
        parts = module.split(".")[1:]
        candidates = [self.root.joinpath(*parts, "__init__.py")]
        if parts:
            candidates.append(self.root.joinpath(*parts).with_suffix(".py"))
        return next((path for path in candidates if path.is_file()), None)

    def parse(self, module: str) -> ast.Module | None:
        if module not in self._parsed:
            path = self.file_of(module)
            self._parsed[module] = ast.parse(path.read_text(encoding="utf-8"), str(path)) if path else None
        return self._parsed[module]

    def modules(self) -> list[str]:
        names = []
        for path in sorted(self.root.rglob("*.py")):
            parts = path.relative_to(self.root).with_suffix("").parts
            names.append(".".join((PACKAGE, *parts[:-1])) if parts[-1] == "__init__" else ".".join((PACKAGE, *parts)))
        return names

    def version(self) -> str:
        env = self.parse(f"{PACKAGE}.extras.env")
        for node in env.body if env else ():
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "VERSION" for t in node.targets):
                return ast.literal_eval(node.value)
        return "unknown"


def package_root(path: Path) -> Path:
    for candidate in (path / "src" / PACKAGE, path / PACKAGE, path):
        if (candidate / "__init__.py").is_file() and candidate.name == PACKAGE:
            return candidate
    raise SystemExit(f"check_patches: {path} holds no {PACKAGE}/ package (give a checkout, its src/ or the package)")


def absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def binding(tree: SourceTree, module: str, name: str) -> tuple[ast.AST | None, str | None]:
    """The module-level statement that binds ``name`` (a def, class, assignment) or the module it imports it from."""
    parsed, path = tree.parse(module), tree.file_of(module)
    found: tuple[ast.AST | None, str | None] = (None, None)
    is_package = path is not None and path.name == "__init__.py"
    for node in parsed.body if parsed else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            found = (node, None)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and name in _targets(node):
            found = (node, None)
        elif isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            found = (None, absolute(module, node, is_package))
    return found


def _targets(node: ast.Assign | ast.AnnAssign) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def resolve(tree: SourceTree, module: str, name: str, hops: int = 0) -> Found | None:
    """Follow imports inside the tree to the definition of ``module.name``; ``None`` when it is not bound there."""
    node, source = binding(tree, module, name)
    if node is not None:
        return Found(node, module)
    if source is None or hops > 8:
        return None
    if not source.startswith(PACKAGE):
        return Found(None, source, f"imported from {source} (outside the tree)")
    return resolve(tree, source, name, hops + 1)


def member(tree: SourceTree, cls: Found, attribute: str, hops: int = 0) -> Found | None:
    """``attribute`` in the class body, else in its bases (through the tree); bases outside it are not followed."""
    for node in cls.node.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == attribute:
            return Found(node, cls.module)
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and attribute in _targets(node):
            return Found(node, cls.module)
    for base in cls.node.bases:
        base_name = base.id if isinstance(base, ast.Name) else ast.unparse(base)
        found = resolve(tree, cls.module, base_name.split(".")[0]) if hops < 8 else None
        if found is None:
            return Found(None, cls.module, f"inherited from {base_name} (not in the tree, not checked)")
        if isinstance(found.node, ast.ClassDef):
            inherited = member(tree, found, attribute, hops + 1)
            if inherited is not None:
                return inherited
        elif found.node is None:
            return Found(None, found.module, f"inherited from {base_name} of {found.module} (not checked)")
    return None


def parameters(node: ast.AST) -> tuple[str, ...] | None:
    """The parameter names as ``inspect.signature`` lists them: a function's, or a class's constructor's."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        names = [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs]
        return tuple(arg.arg for arg in [*names, *([a.kwarg] if a.kwarg else [])])
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is not None:
            return parameters(init)[1:]
        if any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            return tuple(n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and n.simple)
    return None


def other_importers(tree: SourceTree, defined_in: str, name: str, owner_module: str) -> list[str]:
    """Modules of the tree besides ``owner_module`` that import ``name`` from where it is defined."""
    hits = []
    for module in tree.modules():
        if module in (owner_module, defined_in):
            continue
        node, source = binding(tree, module, name)
        if node is None and source is not None and resolve(tree, source, name) is not None:
            if resolve(tree, module, name).module == defined_in:
                hits.append(module)
    return hits


def check_row(tree: SourceTree, row) -> tuple[str, str]:
    """(status, detail) of one patch row."""
    if row.trigger.startswith(PACKAGE) and tree.parse(row.trigger) is None:
        return MISSING, f"trigger module {row.trigger} is gone"
    module, _, class_name = row.owner.partition(":")
    if not module.startswith(PACKAGE):
        return NOT_CHECKED, f"{row.distribution} owns {row.owner} (outside the tree)"
    if tree.parse(module) is None:
        return MISSING, f"module {module} is gone"
    if class_name:
        cls = resolve(tree, module, class_name)
        if cls is None or (cls.node is not None and not isinstance(cls.node, ast.ClassDef)):
            return MISSING, f"class {class_name} is gone from {module}"
        found = member(tree, cls, row.attribute) if cls.node is not None else cls
    else:
        found = resolve(tree, module, row.attribute)
    if found is None:
        return MISSING, f"{row.owner}.{row.attribute} is gone"
    if found.node is None:
        return OK, found.note
    where = f"defined in {found.module}:{found.node.lineno}"
    if not class_name and found.module != module:
        missed = other_importers(tree, found.module, row.attribute, module)
        where += f"; also imported by {', '.join(missed)} (not patched there)" if missed else ""
    if not row.parameters:
        return OK, where
    names = parameters(found.node)
    if names is None:
        return OK, f"{where}; no signature to check"
    if names[: len(row.parameters)] != tuple(row.parameters):
        return CHANGED, f"now ({', '.join(names)}), the wrapper needs ({', '.join(row.parameters)}); {where}"
    return OK, where


def patch_rows() -> list:
    from llamafactory_kimi_audio.integration import patches

    rows = [*patches.PATCHES, *filter(None, [getattr(patches, "OPT_OUT_NOTICE", None)])]
    return list({row.name: row for row in rows}.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path, help="a LLaMA-Factory checkout, its src/, or the llamafactory package")
    args = parser.parse_args(argv)
    tree = SourceTree(package_root(args.tree))
    print(f"LLaMA-Factory {tree.version()} at {tree.root}")
    statuses = []
    for row in patch_rows():
        status, detail = check_row(tree, row)
        statuses.append(status)
        print(f"{status:<17} {row.name:<34} {row.owner}.{row.attribute}" + (f"  ({detail})" if detail else ""))
    bad = sum(status in (MISSING, CHANGED) for status in statuses)
    print(f"{len(statuses)} rows: {statuses.count(OK)} ok, {bad} broken, {statuses.count(NOT_CHECKED)} not checked")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
