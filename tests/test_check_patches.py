"""scripts/check_patches.py against LLaMA-Factory source trees, and the LLaMA-Factory range's guard."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamafactory_kimi_audio import patching
from llamafactory_kimi_audio.integration.patches import OPT_OUT_NOTICE, PATCHES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_patches.py"


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
    return {row.name for row in (*PATCHES, OPT_OUT_NOTICE) if row.owner.startswith("llamafactory")}


@pytest.fixture(scope="module")
def installed_run() -> subprocess.CompletedProcess:
    """One run of the script on the installed LLaMA-Factory, shared by the tests that read it."""
    return run_script(installed_tree())


def test_every_row_is_ok_on_the_installed_release(installed_run) -> None:
    assert installed_run.returncode == 0 and not installed_run.stderr.strip(), installed_run.stderr
    statuses = {name: status for name, (status, _) in row_lines(installed_run).items()}
    assert set(statuses) == {row.name for row in (*PATCHES, OPT_OUT_NOTICE)}
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


def test_a_new_importer_of_a_rebound_name_is_listed(tmp_path, installed_run) -> None:
    """A row that rebinds a name in the module importing it does not reach a second importer: the line names it."""
    rows = row_lines(installed_run)
    rebinding = {}
    for row in PATCHES:
        found = re.search(r"defined in (llamafactory[\w.]*):\d+", rows[row.name][1])
        if ":" not in row.owner and found and found[1] != row.owner:
            rebinding[row.name] = (found[1], row.attribute)
    assert rebinding, "no row rebinds an imported name: pick another case for this test"
    name, (defined_in, attribute) = next(iter(rebinding.items()))
    tree = tmp_path / "llamafactory"
    shutil.copytree(installed_tree(), tree, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "kimi_probe_importer.py").write_text(f"from {defined_in} import {attribute}\n")
    status, rest = row_lines(run_script(tmp_path))[name]
    assert status == "ok" and "llamafactory.kimi_probe_importer" in rest.partition("also imported by")[2]


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
