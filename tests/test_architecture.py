"""The package's layers import in one direction: cli → eval → data → models (integration on top, beside cli).

Every ``import`` statement of the package is read with ``ast`` (function-level imports included: a lazy import is
still a dependency) and resolved to an absolute module name, so a new file that breaks the direction fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "llamafactory_kimi_audio"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# layer -> modules it must not import (prefix match on the absolute module name)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": (
        "llamafactory",
        f"{PACKAGE}.patching",
        f"{PACKAGE}.integration",
        f"{PACKAGE}.settings",
        f"{PACKAGE}.data",
        f"{PACKAGE}.eval",
        f"{PACKAGE}.cli",
        f"{PACKAGE}.doctor",
        f"{PACKAGE}.demo",
    ),
    "data": (f"{PACKAGE}.eval", f"{PACKAGE}.cli", f"{PACKAGE}.integration", "llamafactory"),
    "eval": (f"{PACKAGE}.cli", f"{PACKAGE}.integration"),
    "integration": (f"{PACKAGE}.cli",),
}


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports (``from . import x`` counts as ``package.x``)."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def violations(layer: str, root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / layer).rglob("*.py")):
        for module in sorted(imported_modules(path, root)):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                found.append(f"{path.relative_to(root.parent)} imports {module}")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str):
    assert (ROOT / layer).is_dir()
    assert violations(layer) == []


def test_the_checker_sees_relative_and_lazy_imports(tmp_path: Path):
    root = tmp_path / PACKAGE
    (root / "models").mkdir(parents=True)
    (root / "models" / "bad.py").write_text(
        "import torch\n\ndef f():\n    from ..integration import patches\n    from . import tiny\n", encoding="utf-8"
    )
    names = imported_modules(root / "models" / "bad.py", root)
    assert {"torch", f"{PACKAGE}.integration.patches", f"{PACKAGE}.models.tiny"} <= names
    assert violations("models", root) == [f"{PACKAGE}/models/bad.py imports {PACKAGE}.integration"] + [
        f"{PACKAGE}/models/bad.py imports {PACKAGE}.integration.patches"
    ]
