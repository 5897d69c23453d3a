"""No import cycles in the package, counting module-level and function-level imports alike (a lazy import only
hides a cycle; it does not remove it). ``TYPE_CHECKING`` imports count too: they are dependencies of the source."""

from __future__ import annotations

from pathlib import Path

from import_graph import PACKAGE, cycles, import_graph


def test_the_package_has_no_import_cycle() -> None:
    found = [" -> ".join(cycle) for cycle in cycles(import_graph())]
    assert found == [], "import cycles (break each by moving what both sides need below them):\n" + "\n".join(found)


def test_the_checker_finds_lazy_and_relative_cycles(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("VERSION = 1\n", encoding="utf-8")
    (root / "data" / "__init__.py").write_text("", encoding="utf-8")
    (root / "data" / "a.py").write_text("from .b import f\n", encoding="utf-8")
    (root / "data" / "b.py").write_text("def f():\n    from . import a\n", encoding="utf-8")  # lazy, relative
    (root / "data" / "c.py").write_text("from .. import VERSION\n", encoding="utf-8")  # a name: the package
    (root / "top.py").write_text("from .data import c\n", encoding="utf-8")  # a submodule: not the package
    graph = import_graph(root)
    assert graph[f"{PACKAGE}.data.c"] == {PACKAGE} and graph[f"{PACKAGE}.top"] == {f"{PACKAGE}.data.c"}
    assert cycles(graph) == [[f"{PACKAGE}.data.a", f"{PACKAGE}.data.b", f"{PACKAGE}.data.a"]]
    (root / "__init__.py").write_text("from . import top\n", encoding="utf-8")
    assert cycles(import_graph(root)) == [
        [PACKAGE, f"{PACKAGE}.top", f"{PACKAGE}.data.c", PACKAGE],
        [f"{PACKAGE}.data.a", f"{PACKAGE}.data.b", f"{PACKAGE}.data.a"],
    ]


def test_the_startup_layer_names_its_opt_out_hook() -> None:
    """``_startup`` names the opt-out notice instead of importing it (it sits below the integration): the name
    must stay importable."""
    from importlib import import_module

    from llamafactory_kimi_audio import _startup

    module_name, _, attribute = _startup.NOTICE_TARGET.partition(":")
    assert callable(getattr(import_module(module_name), attribute))
