"""Pre-flight checks of a Kimi-Audio recipe's files, run by the run guard before the model loads.

LLaMA-Factory reads ``dataset_info.json`` and the dataset files only after the tokenizer and processor load, and
fails on a missing or cut-short file with its own traceback; a regular file in ``output_dir``'s path fails only at
the first save (``NotADirectoryError``). Checked here first, each is one line naming the file and the fix (exit 2).
The checks read little: the head and tail of a large dataset file, the whole of one up to ``FULL_PARSE_BYTES``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from ..errors import InputError

DATA_CONFIG = "dataset_info.json"  # LLaMA-Factory's name (llamafactory.extras.constants.DATA_CONFIG)
DEFAULT_DATASET_DIR = "data"  # DataArguments.dataset_dir's default
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
JSON_SUFFIXES = (".json", ".jsonl")
FULL_PARSE_BYTES = 64 * 2**20  # larger dataset files: only their ends are checked (a cut-short copy ends badly)
TAIL_BYTES = 2**20
RECONVERT = "convert the data again (kimi-audio-lf convert) or copy the file again from its source"
# (path, size, mtime, inode) of the dataset files that passed in this process: llamafactory-cli train checks them
# early (early_check.py), then in the run guard; the second check of an unchanged file reads nothing again
_PASSED: set[tuple[str, int, int, int]] = set()


def check_recipe_files(recipe: dict[str, Any]) -> None:
    """InputError (exit 2) for an ``output_dir`` under a regular file, or a missing / unreadable dataset file."""
    check_output_dir(recipe.get("output_dir"))
    if not _uses_tokenized_cache(recipe):
        check_datasets(recipe)


def check_output_dir(output_dir: Any) -> None:
    if not isinstance(output_dir, str) or not output_dir:
        return
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(
            f"output_dir {output_dir}: {existing} is a file, not a folder, so nothing can be saved there; "
            "choose another output_dir (or move that file away)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"output_dir {output_dir}: {existing} is not writable; choose a writable output_dir")


def _uses_tokenized_cache(recipe: dict[str, Any]) -> bool:
    """A saved ``tokenized_path`` is loaded instead of the dataset files."""
    path = recipe.get("tokenized_path")
    return isinstance(path, str) and os.path.isdir(path)


def dataset_names(recipe: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for key in ("dataset", "eval_dataset"):
        value = recipe.get(key)
        parts: Iterable[Any] = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else ()
        names += [str(part).strip() for part in parts if str(part).strip()]
    return list(dict.fromkeys(names))


def check_datasets(recipe: dict[str, Any]) -> None:
    names = dataset_names(recipe)
    dataset_dir = recipe.get("dataset_dir") or DEFAULT_DATASET_DIR
    if not names or not isinstance(dataset_dir, str) or dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return
    info_path = os.path.join(dataset_dir, DATA_CONFIG)
    info = read_dataset_info(info_path)
    for name in names:
        entry = info.get(name)
        if not isinstance(entry, dict):
            listed = ", ".join(sorted(info)[:8]) or "no dataset"
            raise InputError(
                f"dataset {name}: not defined in {os.path.abspath(info_path)} (it defines {listed}); fix `dataset` / "
                "`eval_dataset` or `dataset_dir`, or convert the data with kimi-audio-lf convert --name"
            )
        if any(key in entry for key in REMOTE_KEYS):
            continue
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise InputError(f"{os.path.abspath(info_path)}: dataset {name} has no file_name; add its data file")
        check_dataset_path(name, os.path.join(dataset_dir, file_name), info_path)


def read_dataset_info(info_path: str) -> dict[str, Any]:
    shown = os.path.abspath(info_path)
    if not os.path.isfile(info_path):
        raise InputError(
            f"{shown}: not found; set dataset_dir to the folder that holds {DATA_CONFIG} "
            "(kimi-audio-lf convert --out-dir writes it)"
        )
    try:
        with open(info_path, encoding="utf-8") as handle:
            info = json.load(handle)
    except json.JSONDecodeError as err:
        raise InputError(f"{shown} line {err.lineno}: invalid JSON ({err.msg}); fix it or convert again") from None
    except UnicodeDecodeError:
        raise InputError(f"{shown}: not UTF-8 text; save it as UTF-8") from None
    if not isinstance(info, dict):
        raise InputError(f"{shown}: expected an object of dataset entries, got {type(info).__name__}")
    return info


def check_dataset_path(name: str, path: str, info_path: str) -> None:
    shown = os.path.abspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path))
        if not files:
            raise InputError(f"dataset {name}: the folder {shown} is empty; put the data files there or fix file_name")
        for file in files:
            if os.path.isfile(file) and file.lower().endswith(JSON_SUFFIXES):
                check_json_file(name, file)
        return
    if not os.path.isfile(path):
        raise InputError(
            f"dataset {name}: {shown} not found (file_name in {os.path.abspath(info_path)}, relative to dataset_dir); "
            f"fix file_name or dataset_dir, or {RECONVERT}"
        )
    if path.lower().endswith(JSON_SUFFIXES):
        check_json_file(name, path)


def check_json_file(name: str, path: str) -> None:
    """A dataset JSON / JSON Lines file that is empty, cut short or does not parse (where the error is)."""
    shown = os.path.abspath(path)
    stat = os.stat(path)
    key = (shown, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _PASSED:
        _check_json_content(name, path, stat.st_size)
        _PASSED.add(key)


def _check_json_content(name: str, path: str, size: int) -> None:
    shown = os.path.abspath(path)
    with open(path, "rb") as handle:
        head = handle.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
        handle.seek(max(0, size - TAIL_BYTES))
        tail = handle.read().rstrip()
    if not head:
        raise InputError(f"dataset {name}: {shown} is empty; {RECONVERT}")
    if head.startswith(b"[") and not tail.endswith(b"]"):
        raise InputError(
            f"dataset {name}: {shown}: the JSON array is not closed with ']', the file is cut short; {RECONVERT}"
        )
    if size <= FULL_PARSE_BYTES:
        _parse_whole(name, path, head.startswith(b"["))
    elif not head.startswith(b"["):
        _parse_line(name, shown, tail.rsplit(b"\n", 1)[-1], None)


def _parse_whole(name: str, path: str, array: bool) -> None:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        return  # not UTF-8: LLaMA-Factory's reader says so itself
    shown = os.path.abspath(path)
    if array:
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(
                f"dataset {name}: {shown} line {err.lineno} column {err.colno}: invalid JSON ({err.msg}); {RECONVERT}"
            ) from None
        return
    try:
        json.loads(text)  # one object (e.g. columns of lists) is a dataset too
        return
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.split("\n"), start=1):  # JSON Lines; not splitlines(): U+2028 is valid JSON
        _parse_line(name, shown, line.encode("utf-8"), number)


def _parse_line(name: str, shown: str, line: bytes, number: int | None) -> None:
    if not line.strip():
        return
    try:
        json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"line {number}" if number else "last line"
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        raise InputError(f"dataset {name}: {shown} {where}: invalid JSON ({reason}); {RECONVERT}") from None
