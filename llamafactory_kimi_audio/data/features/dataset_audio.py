"""The audio files a precompute run covers: read from LLaMA-Factory dataset files (sharegpt / alpaca records), either
named in ``dataset_info.json`` or given directly; relative paths resolve the way LLaMA-Factory's ``media_dir`` does.
Each clip whose record has a non-empty answer (the transcript) is noted with its row, so that precompute can name a
silent clip that would be trained on text (``fileio/audio_silence.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ...fileio.dataset_info import DATASET_INFO, media_root, read_dataset_info
from ...fileio.textio import DataError
from ..convert.records import iter_json_records

DEFAULT_AUDIO_COLUMN = "audios"


@dataclass(frozen=True)
class DataFile:
    """One dataset file, the folder its relative audio paths resolve against and its audio column."""

    path: str
    media_dir: str
    audio_column: str = DEFAULT_AUDIO_COLUMN
    text_keys: tuple[tuple[str, str], ...] = ()  # dataset_info.json's columns + tags that locate the answer


@dataclass
class AudioList:
    paths: list[str] = field(default_factory=list)  # unique absolute paths, first-seen order
    problems: list[str] = field(default_factory=list)  # one line per unusable row
    transcribed: dict[str, str] = field(default_factory=dict)  # path -> the first row giving it a non-empty answer


def data_file(path: str, media_dir: str | None = None) -> DataFile:
    """A dataset file given directly; relative audio paths resolve like LLaMA-Factory's ``media_dir``."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: dataset file not found; check the path given to --data")
    return DataFile(os.path.abspath(path), os.path.abspath(media_dir) if media_dir else media_root(path))


def dataset_files(dataset_dir: str, names: Iterable[str], media_dir: str | None = None) -> list[DataFile]:
    """The local files of datasets named in ``<dataset_dir>/dataset_info.json`` (LLaMA-Factory's lookup)."""
    info = _read_dataset_info(dataset_dir)
    media = os.path.abspath(media_dir or dataset_dir)
    files: list[DataFile] = []
    for name in names:
        entry = info.get(name)
        if not isinstance(entry, dict):
            known = ", ".join(sorted(info)[:10]) or "none"
            raise DataError(f"dataset {name!r} is not in {dataset_dir}/dataset_info.json (known: {known})")
        if "file_name" not in entry:
            raise DataError(f"dataset {name!r} is not a local file (hub/script datasets cannot be precomputed)")
        column = (entry.get("columns") or {}).get("audios", DEFAULT_AUDIO_COLUMN)
        local = _local_files(
            os.path.join(dataset_dir, entry["file_name"]), f"{name!r} in {dataset_dir}/{DATASET_INFO}"
        )
        files += [DataFile(p, media, column, _text_keys(entry)) for p in local]
    return files


def _read_dataset_info(dataset_dir: str) -> dict[str, Any]:
    info = read_dataset_info(dataset_dir)
    if info is None:
        path = os.path.join(dataset_dir, DATASET_INFO)
        raise DataError(f"{path}: not found; pass --dataset-dir (the folder of {DATASET_INFO})")
    return info


def _local_files(path: str, entry: str) -> list[str]:
    if os.path.isdir(path):  # LLaMA-Factory loads every file of a folder
        names = sorted(n for n in os.listdir(path) if n.lower().endswith((".json", ".jsonl")))
        return [os.path.abspath(os.path.join(path, n)) for n in names]
    if not os.path.isfile(path):
        raise DataError(f"{path}: dataset file not found; fix the file_name of {entry}")
    return [os.path.abspath(path)]


def collect_audio_paths(files: Iterable[DataFile]) -> AudioList:
    """Unique audio paths of sharegpt / alpaca records (a path or a list of paths in the audio column)."""
    result, seen = AudioList(), set()
    for data in files:
        records, _ = iter_json_records(data.path)
        for line, record in records:
            for path, answered in _record_audios(data, line, record, result.problems):
                if path not in seen:
                    seen.add(path)
                    result.paths.append(path)
                if answered:
                    result.transcribed.setdefault(path, f"{os.path.basename(data.path)} line {line}")
    return result


def _text_keys(entry: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    keys = {**(entry.get("columns") or {}), **(entry.get("tags") or {})}
    return tuple((k, v) for k, v in keys.items() if isinstance(k, str) and isinstance(v, str))


ASSISTANT_ROLES = ("assistant", "gpt", "model", "bot")
PLACEHOLDER = "<audio>"  # LLaMA-Factory's: one per entry of the audio column, in order


def answered_inputs(record: dict[str, Any], keys: dict[str, str], count: int) -> list[bool]:
    """Per audio of the record (``count``, in placeholder order): an input clip (of a user turn, or alpaca's) whose
    answer (the next assistant turn, or ``output``) holds text. A speech-output target (an ``<audio>`` of an
    assistant turn) and a clip answered by an empty turn (a no-speech example) are False; so is every clip of a
    record whose turns or placeholders do not add up (LLaMA-Factory refuses such a row)."""
    turns = record.get(keys.get("messages", "")) or record.get("messages") or record.get("conversations")
    if not isinstance(turns, list):  # alpaca: the audios sit in the prompt, the answer is the response column
        return [_has_text(_field(record, keys.get("response"), "output"))] * count
    roles = (keys["assistant_tag"],) if "assistant_tag" in keys else ASSISTANT_ROLES
    parsed = [
        (
            _field(turn, keys.get("role_tag"), "role", "from") in roles,
            _field(turn, keys.get("content_tag"), "content", "value"),
        )
        for turn in turns
        if isinstance(turn, dict)
    ]
    flags: list[bool] = []
    for at, (assistant, content) in enumerate(parsed):
        answer = next((text for is_answer, text in parsed[at + 1 :] if is_answer), None)
        placeholders = content.count(PLACEHOLDER) if isinstance(content, str) else 0
        flags += [not assistant and _has_text(answer)] * placeholders
    return flags if len(flags) == count else [False] * count


def _has_text(answer: Any) -> bool:
    return isinstance(answer, str) and bool(answer.replace(PLACEHOLDER, "").strip())


def _field(obj: dict[str, Any], key: str | None, *defaults: str) -> Any:
    return next((obj[k] for k in (key, *defaults) if k and k in obj), None)


def _record_audios(data: DataFile, line: int, record: Any, problems: list[str]) -> Iterator[tuple[str, bool]]:
    """(absolute path, whether it is an input clip with a transcript) of each audio entry of the record."""
    where = f"{os.path.basename(data.path)} line {line}"
    if not isinstance(record, dict):
        problems.append(f"{where}: {getattr(record, 'message', 'not a JSON object')}")
        return
    audios = record.get(data.audio_column) or []
    audios = [audios] if isinstance(audios, str) else audios
    for audio, answered in zip(audios, answered_inputs(record, dict(data.text_keys), len(audios))):
        if isinstance(audio, str) and audio:
            yield os.path.abspath(os.path.join(data.media_dir, os.path.expanduser(audio))), answered
        else:
            problems.append(f"{where}: audio entry {audio!r} is not a file path; skipped")
