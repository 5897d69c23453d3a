"""The Web UI without a browser: recipes loaded through LlamaBoard's own *Load arguments* code, and the *Extra
arguments* box winning over the UI's fields in a Kimi-Audio run.

LlamaBoard's page is built in this process (``llamafactory.webui.interface.create_ui``, no server); its ``Runner``
loads the file ``kimi-audio-lf webui-args`` wrote and turns the page's values into the arguments of the
``llamafactory-cli train`` it would start (``_parse_train_args``, then ``_clean_cmd`` as ``save_cmd`` does). The
browser test of the whole page is ``test_webui.py``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TRAINING_RECIPES = sorted(
    path for path in (REPO / "examples").glob("*.yaml") if yaml.safe_load(path.read_text()).get("do_train")
)
CLI = Path(sys.executable).with_name("kimi-audio-lf")
pytestmark = pytest.mark.slow  # LlamaBoard's page (gradio) takes a while to build on a loaded machine


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """(engine, Web UI working directory): LlamaBoard's page built in a fresh directory, as ``webui`` builds it."""
    cwd = tmp_path_factory.mktemp("llamaboard")
    previous = os.getcwd()
    os.chdir(cwd)  # LlamaBoard reads and writes llamaboard_cache/ and llamaboard_config/ in its working directory
    from llamafactory.webui import interface

    engines = []
    original = interface.Engine

    class RecordingEngine(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            engines.append(self)

    interface.Engine = RecordingEngine
    try:
        interface.create_ui()
    finally:
        interface.Engine = original
    yield engines[0], cwd
    os.chdir(previous)


def page_values(engine, loaded: dict) -> dict:
    """Every element's value on a fresh page, then the loaded ones (what the Train tab's buttons receive)."""
    data = {elem: getattr(elem, "value", None) for elem in engine.manager.get_elem_list()}
    data.update(loaded)
    return data


def launched_args(engine, data: dict) -> dict:
    from llamafactory.webui.common import _clean_cmd

    return _clean_cmd(engine.runner._parse_train_args(data))  # what save_cmd writes for llamafactory-cli train


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda path: path.stem)
def test_recipe_loads_and_starts_the_same_run(board, recipe: Path, capsys) -> None:
    """Every recipe key reaches the launched arguments with the recipe's value; the UI's own caps and constants
    (100,000 samples, 16 preprocessing workers) do not."""
    from llamafactory_kimi_audio.cli import main
    from llamafactory_kimi_audio.integration.llamaboard import llamafactory_defaults

    engine, cwd = board
    assert main(["webui-args", str(recipe), "--force"]) == 0  # in the Web UI's working directory (the fixture's)
    assert (
        cwd / "llamaboard_config" / f"{recipe.stem}.yaml"
    ).is_file() and "Load arguments" in capsys.readouterr().out
    loaded = engine.runner.load_args("en", f"{recipe.stem}.yaml")  # the Config path box takes the file name
    output_box = engine.manager.get_elem_by_id("train.output_box")
    assert loaded.pop(output_box) == "Arguments have been restored."  # not "config file not found"
    config = yaml.safe_load(recipe.read_text())
    data = page_values(engine, loaded)
    data[engine.manager.get_elem_by_id("top.model_path")] = config["model_name_or_path"]  # typed by the user
    launched = launched_args(engine, data)
    defaults = llamafactory_defaults()
    for key, want in config.items():
        got = launched.get(key, defaults.get(key))  # a key LlamaBoard drops falls back to its default
        assert got == want or (isinstance(want, float) and float(got) == want), (key, got, want)
    for key in ("max_samples", "preprocessing_num_workers", "include_num_input_tokens_seen"):
        if key not in config:
            assert not launched.get(key), key


def test_extra_arguments_win_in_a_kimi_audio_run(board, caplog) -> None:
    """``lora_target: all,mimo`` typed into Extra arguments was replaced by the empty LoRA modules field (``all``);
    in a Kimi-Audio run it wins, and a warning names the field it replaced. Other templates keep LlamaBoard's rule."""
    engine, _ = board
    get = engine.manager.get_elem_by_id
    data = page_values(engine, {})
    data.update(
        {
            get("top.model_name"): "Kimi-Audio-7B-Instruct",
            get("top.model_path"): "models/Kimi-Audio-7B-Instruct",
            get("top.template"): "kimi_audio",
            get("train.dataset"): ["my_asr_train"],
            get("train.output_dir"): "run",
            get("train.lora_target"): "",
            get("train.extra_args"): json.dumps({"lora_target": "all,mimo", "lora_rank": 4, "optim": "adamw_torch"}),
        }
    )
    with caplog.at_level(logging.WARNING):
        args = engine.runner._parse_train_args(data)
    assert (args["lora_target"], args["lora_rank"], args["optim"]) == ("all,mimo", 4, "adamw_torch")
    warning = next(r.getMessage() for r in caplog.records if "Extra arguments win" in r.getMessage())
    assert "lora_target='all,mimo' (the field said 'all')" in warning and "lora_rank=4" in warning
    data[get("top.template")] = "default"
    assert engine.runner._parse_train_args(data)["lora_target"] == "all"  # stock LlamaBoard for other models


def test_webui_args_command_writes_once_and_refuses_other_recipes(tmp_path: Path) -> None:
    """The real command: it writes into llamaboard_config/ of the current folder, never over an existing file
    without --force, and refuses a recipe the Train tab cannot load."""

    def webui_args(*args: object) -> subprocess.CompletedProcess:
        command = [str(CLI), "webui-args", *map(str, args)]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert webui_args(REPO / "examples" / "kimi_lora.yaml").returncode == 0
    written = tmp_path / "llamaboard_config" / "kimi_lora.yaml"
    assert yaml.safe_load(written.read_text())["top.template"] == "kimi_audio"
    done = webui_args(REPO / "examples" / "kimi_lora.yaml")
    assert done.returncode == 2 and done.stderr.strip().endswith("pass --force to replace it, or --out another")
    done = webui_args(REPO / "examples" / "kimi_predict.yaml")
    assert done.returncode == 2 and "not a training recipe" in done.stderr
