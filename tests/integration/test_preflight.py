"""The run guard's pre-flight of a recipe's files (``integration/preflight.py``): what it refuses and what it lets
through to LLaMA-Factory. The ``llamafactory-cli train`` runs of the same cases are in
``tests/end_to_end/test_llamafactory_cli_bad_input.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamafactory_kimi_audio.errors import InputError
from llamafactory_kimi_audio.integration import preflight
from llamafactory_kimi_audio.integration.preflight import check_recipe_files

ROW = {"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "hi"}], "audios": ["a"]}


def data_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    """A dataset_dir whose dataset_info.json names each file as a dataset of the same stem."""
    info = {name.split(".")[0]: {"file_name": name, "formatting": "sharegpt"} for name in files}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return tmp_path


def recipe(directory: Path, dataset: str, **more: object) -> dict:
    return {"dataset_dir": str(directory), "dataset": dataset, "output_dir": str(directory / "out"), **more}


def refused(config: dict) -> str:
    with pytest.raises(InputError) as info:
        check_recipe_files(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_files_pass(tmp_path: Path) -> None:
    rows = json.dumps([ROW, ROW])
    lines = json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n"
    columns = json.dumps({"messages": [ROW["messages"]], "audios": [["a"]]}, indent=2)  # one object of columns
    directory = data_dir(tmp_path, {"a.json": rows, "b.jsonl": lines, "c.json": lines, "d.json": columns})
    check_recipe_files(recipe(directory, "a,b", eval_dataset="c,d"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (json.dumps([ROW, ROW])[:-30], "the JSON array is not closed with ']', the file is cut short"),
        ('[{"a": 1}, {"a": 2,}]', "line 1 column 20: invalid JSON"),
        ("", "is empty"),
        (json.dumps(ROW) + "\n" + json.dumps(ROW)[:20], "line 2: invalid JSON"),
    ],
)
def test_broken_dataset_files_are_named(tmp_path: Path, text: str, expected: str) -> None:
    directory = data_dir(tmp_path, {"train.json": text})
    message = refused(recipe(directory, "train"))
    assert message.startswith(f"dataset train: {directory / 'train.json'}") and expected in message
    assert "kimi-audio-lf convert" in message


def test_large_files_are_checked_at_their_ends(tmp_path: Path, monkeypatch) -> None:
    """Above FULL_PARSE_BYTES only the ends are read: a cut-short JSON Lines file is found by its last line."""
    monkeypatch.setattr(preflight, "FULL_PARSE_BYTES", 10)
    lines = "".join(json.dumps(ROW) + "\n" for _ in range(3))
    directory = data_dir(tmp_path, {"ok.jsonl": lines, "cut.jsonl": lines + json.dumps(ROW)[:25]})
    check_recipe_files(recipe(directory, "ok"))
    assert "last line: invalid JSON" in refused(recipe(directory, "cut"))


def test_missing_file_undefined_name_and_missing_info(tmp_path: Path) -> None:
    directory = data_dir(tmp_path, {"train.json": json.dumps([ROW])})
    (directory / "train.json").unlink()
    message = refused(recipe(directory, "train"))
    assert f"{directory / 'train.json'} not found" in message and "file_name" in message
    message = refused(recipe(directory, "nope"))
    assert message.startswith("dataset nope: not defined in") and "it defines train" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "dataset_info.json: not found; set dataset_dir" in refused(recipe(empty, "train"))


def test_output_dir_under_a_file(tmp_path: Path) -> None:
    directory = data_dir(tmp_path, {"train.json": json.dumps([ROW])})
    (tmp_path / "blocker").write_text("x")
    message = refused(recipe(directory, "train", output_dir=str(tmp_path / "blocker" / "deep" / "run")))
    assert f"{tmp_path / 'blocker'} is a file, not a folder" in message


def test_what_is_left_to_llamafactory(tmp_path: Path) -> None:
    """Hub datasets, ONLINE / REMOTE dataset dirs and a saved tokenized_path are not checked here."""
    info = {"hub": {"hf_hub_url": "someone/set"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    check_recipe_files(recipe(tmp_path, "hub"))
    check_recipe_files(recipe(tmp_path / "nowhere", "x", dataset_dir="ONLINE"))
    (tmp_path / "tokenized").mkdir()
    check_recipe_files(recipe(tmp_path / "nowhere", "x", tokenized_path=str(tmp_path / "tokenized")))


def test_a_pickled_adapter_refused_by_torch_is_one_line_exit_3(tmp_path: Path) -> None:
    """The run guard's fallback for a pickled file that is not the model's own weights (e.g. ``adapter_model.bin``
    read by PEFT): the refusal anywhere in the error chain becomes one line naming the file, exit 3."""
    import pickle

    from llamafactory_kimi_audio.integration.run_guard import one_line

    (tmp_path / "adapter_model.bin").write_bytes(b"pickled")
    refusal = pickle.UnpicklingError(
        "Weights only load failed.\n\tWeightsUnpickler error: Unsupported global: GLOBAL os.system was not allowed"
    )
    try:
        try:
            raise refusal
        except pickle.UnpicklingError as err:
            raise RuntimeError("loading the adapter failed") from err
    except RuntimeError as err:
        line = one_line(err, {"adapter_name_or_path": str(tmp_path), "model_name_or_path": "m"})
    assert line is not None and line[1] == 3
    assert (
        line[0].startswith(f"{tmp_path / 'adapter_model.bin'}: pickled weights") and "it pickles os.system" in line[0]
    )
    assert one_line(RuntimeError("a bug"), {"model_name_or_path": "m"}) is None  # anything else keeps its traceback


@pytest.mark.parametrize("how", ["env", "recipe"])
def test_megatron_core_workflow_is_refused_for_kimi_recipes(tiny_checkpoint, monkeypatch, how) -> None:
    """LLaMA-Factory's Megatron-Core workflow (``USE_MCA=1`` or ``use_mca: true``) needs a Megatron model: one line
    before the model loads, not a traceback from mcore_adapter."""
    from llamafactory_kimi_audio.integration.run_guard import check_trainer

    recipe = {"model_name_or_path": tiny_checkpoint.path, "template": "kimi_audio"}
    check_trainer(recipe)  # LLaMA-Factory's own trainer: fine
    if how == "env":
        monkeypatch.setenv("USE_MCA", "1")
    else:
        recipe["use_mca"] = "true"
    with pytest.raises(InputError, match=r"Kimi-Audio has no Megatron-Core model .*unset USE_MCA"):
        check_trainer(recipe)


def test_adapters_are_checked_whatever_the_model_path(tmp_path: Path) -> None:
    """A Hub id (or no) ``model_name_or_path`` ends the model checks early; the adapter paths are checked still."""
    from llamafactory_kimi_audio.errors import ModelError
    from llamafactory_kimi_audio.integration.run_guard import check_kimi_recipe

    missing = str(tmp_path / "saves" / "lora")
    for model in ("moonshotai/Kimi-Audio-7B-Instruct", ""):
        with pytest.raises(ModelError, match=rf"adapter_name_or_path {missing}: no such directory"):
            check_kimi_recipe({"model_name_or_path": model, "adapter_name_or_path": missing})


def test_an_unchanged_file_is_read_once_a_changed_one_again(tmp_path: Path, monkeypatch) -> None:
    """The early check and the run guard check the same files in one process: the second check of a file that
    passed reads nothing, but a file written since is checked again."""
    directory = data_dir(tmp_path, {"train.json": json.dumps([ROW, ROW])})
    config = recipe(directory, "train")
    parsed: list[str] = []
    parse_whole = preflight._parse_whole
    monkeypatch.setattr(
        preflight, "_parse_whole", lambda name, path, array: parsed.append(path) or parse_whole(name, path, array)
    )
    check_recipe_files(config)
    check_recipe_files(config)
    assert len(parsed) == 1
    (directory / "train.json").write_text(json.dumps([ROW, ROW])[:-30], encoding="utf-8")  # cut short since
    assert "is cut short" in refused(config)
