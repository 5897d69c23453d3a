"""scripts/check_patches.py against LLaMA-Factory source trees, and the LLaMA-Factory range's guard."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamafactory_kimi_audio import patching
from llamafactory_kimi_audio.integration import patches
from llamafactory_kimi_audio.patching import Patch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_patches.py"
ROWS = [*patches.PATCHES, *filter(None, [getattr(patches, "OPT_OUT_NOTICE", None)])]  # as the script reads them


def installed_tree() -> Path:
    return Path(importlib.util.find_spec("llamafactory").submodule_search_locations[0])


def run_script(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(tree)], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def row_lines(done: subprocess.CompletedProcess) -> dict[str, tuple[str, str]]:
    """Row name -> (status, the rest of its line)."""
    rows = {}
    for line in done.stdout.splitlines()[1:-1]:
        match = re.match(r"(ok|missing|signature changed|not checked)\s+(\S+)\s+(.*)", line)
        assert match, line
        rows[match[2]] = (match[1], match[3])
    return rows


def check(tree: Path) -> tuple[int, dict[str, str]]:
    """Run the script; returns its exit code and each row's status."""
    done = run_script(tree)
    assert not done.stderr.strip() or done.returncode != 0, done.stderr
    return done.returncode, {name: status for name, (status, _) in row_lines(done).items()}


def llamafactory_rows() -> set[str]:
    return {row.name for row in ROWS if row.owner.startswith("llamafactory")}


def test_every_row_is_ok_on_the_installed_release() -> None:
    installed_run = run_script(installed_tree())
    assert installed_run.returncode == 0 and not installed_run.stderr.strip(), installed_run.stderr
    statuses = {name: status for name, (status, _) in row_lines(installed_run).items()}
    assert set(statuses) == {row.name for row in ROWS}
    assert {name for name, status in statuses.items() if status == "ok"} == llamafactory_rows()


def test_a_changed_signature_and_a_removed_function_are_reported(tmp_path) -> None:
    tree = tmp_path / "llamafactory"
    shutil.copytree(installed_tree(), tree, ignore=shutil.ignore_patterns("__pycache__"))
    converter = tree / "data" / "converter.py"
    converter.write_text(converter.read_text().replace("_find_medias(self, medias", "_find_medias(self, items"))
    app = tree / "api" / "app.py"
    app.write_text(app.read_text().replace("def create_app(", "def build_app("))
    code, statuses = check(tmp_path)
    assert code == 1
    assert statuses["segment_media_paths"] == "signature changed"
    assert statuses["serve.app"] == "missing"
    broken = {name for name, status in statuses.items() if status != "ok" and name in llamafactory_rows()}
    assert broken == {"segment_media_paths", "serve.app"}


def load_script():
    spec = importlib.util.spec_from_file_location("check_patches", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_row_that_rebinds_an_imported_name_lists_the_other_importers() -> None:
    """Issue 27's case: rebinding ComputeSimilarity in the SFT workflow misses hyper_parallel's own import of it."""
    script = load_script()
    workflow = "llamafactory.train.sft.workflow"
    row = Patch("probe", trigger=workflow, owner=workflow, attribute="ComputeSimilarity", make_replacement=str)
    status, detail = script.check_row(script.SourceTree(installed_tree()), row)
    assert status == "ok" and detail.startswith("defined in llamafactory.train.sft.metric:")
    assert "also imported by llamafactory.train.hyper_parallel.workflow (not patched there)" in detail
    at_definition = dataclasses.replace(row, owner="llamafactory.train.sft.metric")
    assert "also imported by" not in script.check_row(script.SourceTree(installed_tree()), at_definition)[1]


def test_a_folder_without_llamafactory_is_one_line(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"check_patches: {tmp_path} holds no llamafactory/ package (give a checkout, its src/ or the package)"
    ]


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        ("0.9.5", None),
        ("0.9.6.dev0", "LLaMA-Factory 0.9.6.dev0 is installed, the patches were verified with ==0.9.5 only"),
        ("0.10.0", "LLaMA-Factory 0.10.0 is installed, the patches are written for >=0.9.5,<0.10"),
    ],
)
def test_llamafactory_outside_the_verified_release_is_named(monkeypatch, installed, expected) -> None:
    monkeypatch.setattr(patching, "installed_version", lambda distribution: installed)
    problem = patching.version_problem("llamafactory")
    assert problem is None if expected is None else problem.startswith(expected)


def test_ci_installs_the_verified_release() -> None:
    pins = [line for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines() if line[:1].isalpha()]
    assert pins == [f"llamafactory{patching.VERIFIED_VERSIONS['llamafactory']}"]
    installs = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    assert installs and all("-c .ci/constraints.txt" in line for line in installs)
