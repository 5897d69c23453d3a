"""``llamafactory-cli train`` checks a Kimi-Audio recipe before torch is imported (``integration/early_check.py``).

The subprocess runs are real ``llamafactory-cli`` / ``lmf`` runs, observed with ``PYTHONPROFILEIMPORTTIME``: the one
line and the exit code come without torch, transformers or LLaMA-Factory's argument parser ever being imported. The
slow test compares each case with the run guard's own answer (``RANK=0`` turns the early check off). In-process tests
cover what the early check leaves to the run guard.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lf_runs import run_cli

from llamafactory_kimi_audio import _startup, settings
from llamafactory_kimi_audio.integration.early_check import check_train_command

HEAVY = ("torch", "transformers", "llamafactory.hparams.parser")
HUB_MODEL = "moonshotai/Kimi-Audio-7B-Instruct"  # a Hub id: the model check reads no disk
ROW = {"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "hi"}], "audios": ["a"]}


def data_dir(root: Path) -> Path:
    """``asr`` (a good file) and ``asr_gone`` (its file is missing)."""
    directory = root / "data"
    directory.mkdir(exist_ok=True)
    (directory / "asr.json").write_text(json.dumps([ROW]), encoding="utf-8")
    info = {name: {"file_name": f"{name}.json", "formatting": "sharegpt"} for name in ("asr", "asr_gone")}
    (directory / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return directory


def recipe(root: Path, **overrides: object) -> dict:
    return {
        "model_name_or_path": HUB_MODEL,
        "template": "kimi_audio",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": "asr",
        "dataset_dir": str(data_dir(root)),
        "output_dir": str(root / "out"),
        **overrides,
    }


def write(root: Path, config: dict, name: str = "recipe") -> str:
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return str(path)


def imported(output: str) -> set[str]:
    """The modules ``PYTHONPROFILEIMPORTTIME`` saw imported."""
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s+([\w.]+)\s*$", output, re.MULTILINE)}


def last_line(output: str) -> str:
    return [line for line in output.strip().splitlines() if not line.startswith("import time:")][-1]


def bad_case(problem: str, root: Path) -> tuple[dict, int, list[str]]:
    """(recipe overrides, exit code, parts of the one line)."""
    if problem == "missing_dataset_file":
        return {"dataset": "asr_gone"}, 2, ["dataset asr_gone", str(root / "data" / "asr_gone.json"), "not found"]
    if problem == "output_dir_under_file":
        (root / "a_file").write_text("not a folder")
        return {"output_dir": str(root / "a_file" / "run")}, 2, [f"{root / 'a_file'} is a file"]
    missing = str(root / "no_such_model")
    return {"model_name_or_path": missing}, 3, [missing, "no such directory"]


BAD = ("missing_dataset_file", "output_dir_under_file", "wrong_model_path")


@pytest.mark.parametrize("cli", ["llamafactory-cli", "lmf"])
def test_a_missing_dataset_file_ends_before_torch_is_imported(tmp_path: Path, cli: str) -> None:
    path = write(tmp_path, recipe(tmp_path, dataset="asr_gone"))
    rc, output = run_cli_named(cli, [path], tmp_path)
    modules = imported(output)
    last = last_line(output)
    assert rc == 2, output[-3000:]
    assert last.startswith("llamafactory-cli: dataset asr_gone: ") and str(tmp_path / "data/asr_gone.json") in last
    assert "omegaconf" in modules and not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert [line for line in output.splitlines() if not line.startswith("import time:")] == [last]


def test_a_key_value_override_is_read_as_llamafactory_reads_it(tmp_path: Path) -> None:
    """``llamafactory-cli train good.yaml output_dir=...``: the override, not the file's value, is checked."""
    (tmp_path / "a_file").write_text("not a folder")
    path = write(tmp_path, recipe(tmp_path))
    rc, output = run_cli_named("llamafactory-cli", [path, f"output_dir={tmp_path / 'a_file' / 'run'}"], tmp_path)
    assert rc == 2 and not imported(output) & set(HEAVY), output[-3000:]
    assert last_line(output).startswith(f"llamafactory-cli: output_dir {tmp_path / 'a_file' / 'run'}")


def run_cli_named(cli: str, arguments: list[str], workdir: Path) -> tuple[int, str]:
    executable = str(Path(sys.executable).with_name(cli))
    env = {**clean_env(), "PYTHONPROFILEIMPORTTIME": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [executable, "train", *arguments], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    return proc.returncode, proc.stdout + proc.stderr


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_AUDIO_", "RANK", "LOCAL_RANK"))}


@pytest.mark.slow
@pytest.mark.parametrize("problem", BAD)
def test_the_early_line_is_the_run_guards_line(tmp_path: Path, problem: str) -> None:
    """The same line and exit code as the run guard gives after torch's import (``RANK=0``: no early check)."""
    overrides, exit_code, expected = bad_case(problem, tmp_path)
    config = recipe(tmp_path, **overrides)
    early = run_cli("train", config, tmp_path, "early", env={"PYTHONPROFILEIMPORTTIME": "1"})
    late = run_cli("train", config, tmp_path, "late", env={"PYTHONPROFILEIMPORTTIME": "1", "RANK": "0"})
    (early_rc, early_out), (late_rc, late_out) = early, late
    early_last, late_last = last_line(early_out), last_line(late_out)
    assert (early_rc, early_last) == (late_rc, late_last) == (exit_code, late_last), late_out[-3000:]
    assert all(part in early_last for part in expected), early_last
    assert "torch" in imported(late_out) and "torch" not in imported(early_out)


# --------------------------------------------------------------------------------------------- in-process
@pytest.fixture
def env(monkeypatch):
    for name in ("KIMI_AUDIO_DEBUG", "RANK", "LOCAL_RANK", "LLAMABOARD_ENABLED", "USE_V1", "USE_MCA"):
        monkeypatch.delenv(name, raising=False)
    settings.reload()
    yield monkeypatch
    monkeypatch.undo()
    settings.reload()


def test_a_good_recipe_passes_without_a_word(tmp_path: Path, env, capsys) -> None:
    check_train_command([write(tmp_path, recipe(tmp_path))])
    check_train_command([write(tmp_path, recipe(tmp_path, dataset="asr_gone"), "bad"), "dataset=asr"])
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("problem", BAD)
def test_each_bad_case_ends_with_the_one_line(tmp_path: Path, env, capsys, problem: str) -> None:
    overrides, exit_code, expected = bad_case(problem, tmp_path)
    with pytest.raises(SystemExit) as ended:
        check_train_command([write(tmp_path, recipe(tmp_path, **overrides))])
    err = capsys.readouterr().err
    assert ended.value.code == exit_code and err.count("\n") == 1 and all(part in err for part in expected), err


@pytest.mark.parametrize(
    ("variable", "overrides"),
    [
        ("KIMI_AUDIO_DEBUG", {}),  # the run guard's traceback is wanted
        ("LLAMABOARD_ENABLED", {}),  # the Web UI's training process
        ("LOCAL_RANK", {}),  # a torchrun child
        ("USE_MCA", {}),  # check_trainer (LLaMA-Factory's is_env_enabled) comes first in the run guard
        (None, {"fp8": True}),  # check_fp8_recipe needs torch and comes first
        (None, {"use_mca": "true"}),
        (None, {"template": "qwen2_audio"}),  # not ours
    ],
)
def test_left_to_the_run_guard(tmp_path: Path, env, capsys, variable: str | None, overrides: dict) -> None:
    if variable:
        env.setenv(variable, "1")
        settings.reload()
    check_train_command([write(tmp_path, recipe(tmp_path, dataset="asr_gone", **overrides))])
    assert capsys.readouterr() == ("", "")


def test_recipes_it_cannot_read_are_left_to_llamafactory(tmp_path: Path, env, capsys) -> None:
    bad = recipe(tmp_path, dataset="asr_gone")
    json_path = tmp_path / "recipe.json"  # LLaMA-Factory 0.9.5 fails on .json recipes itself
    json_path.write_text(json.dumps(bad), encoding="utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text("template: kimi_audio\n  dataset: [", encoding="utf-8")
    for args in ([str(json_path)], [str(broken)], [str(tmp_path / "absent.yaml")], ["--help"]):
        check_train_command(args)
    assert capsys.readouterr() == ("", "")


def test_the_flags_form_is_checked_too(tmp_path: Path, env, capsys) -> None:
    flags = [f"--{key}={value}" for key, value in recipe(tmp_path, dataset="asr_gone").items()]
    with pytest.raises(SystemExit) as ended:
        check_train_command(flags)
    assert ended.value.code == 2 and "dataset asr_gone" in capsys.readouterr().err


def test_only_the_train_command_of_the_cli_is_checked(monkeypatch) -> None:
    for argv, expected in (
        (["/venv/bin/llamafactory-cli", "train", "r.yaml"], True),
        (["lmf", "train", "r.yaml"], True),
        (["/venv/bin/llamafactory-cli", "export", "r.yaml"], False),
        (["/site-packages/llamafactory/launcher.py", "r.yaml"], False),  # torchrun's children
        (["python", "train", "r.yaml"], False),
        (["llamafactory-cli", "train"], False),
    ):
        monkeypatch.setattr(sys, "argv", argv)
        assert _startup._is_cli_train() is expected, argv


def test_the_startup_layer_names_the_early_check() -> None:
    from importlib import import_module

    module_name, _, attribute = _startup.EARLY_CHECK_TARGET.partition(":")
    assert getattr(import_module(module_name), attribute) is check_train_command
