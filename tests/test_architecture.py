"""The package's layers import in one direction: cli → eval → data → models (integration on top, beside cli).

Every ``import`` statement of the package is read with ``ast`` (function-level imports included: a lazy import is
still a dependency) and resolved to an absolute module name (``import_graph.py``, shared with the cycle test), so a
new file that breaks the direction fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import PACKAGE, ROOT, imported_modules

# layer -> modules it must not import (prefix match on the absolute module name). models/ may read settings.py
# (stdlib only, the one place environment variables are read), as every layer may.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": (
        "llamafactory",
        f"{PACKAGE}.patching",
        f"{PACKAGE}.integration",
        f"{PACKAGE}.data",
        f"{PACKAGE}.eval",
        f"{PACKAGE}.cli",
        f"{PACKAGE}.doctor",
        f"{PACKAGE}.demo",
    ),
    "data": (f"{PACKAGE}.eval", f"{PACKAGE}.cli", f"{PACKAGE}.integration", "llamafactory"),
    "eval": (f"{PACKAGE}.cli", f"{PACKAGE}.integration"),
    "fileio": (
        *(f"{PACKAGE}.{layer}" for layer in ("data", "eval", "cli", "integration", "models", "doctor")),
        "llamafactory",
    ),
    "integration": (f"{PACKAGE}.cli",),
}


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
