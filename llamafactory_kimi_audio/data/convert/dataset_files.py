"""The dataset folder a conversion writes: audio paths as rows name them, and ``dataset_info.json`` entries.

Shared by the three writers (``convert``, ``corpus_convert``, ``speech_tasks``), which is why it is not in
``convert.py``: the two others are called by ``convert`` and must not import it back.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ...fileio.dataset_info import DATASET_INFO, read_dataset_info
from ...fileio.textio import write_json
from .sources import AUDIO_EXTENSIONS

SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
STRICT_HINT = "(--strict stops at the first bad row; drop --strict to skip bad rows and get a full report)"


def resolve_audio(audio: str, root: str, by_id: bool = False) -> str:
    """Absolute path of ``audio``: relative paths join ``root``; ids / extension-less names try audio extensions."""
    path = os.path.expanduser(audio)
    if not os.path.isabs(path) and os.sep == "/" and "\\" in path and not os.path.exists(os.path.join(root, path)):
        path = path.replace("\\", "/")  # Windows-style path written on another machine
    path = os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))
    if not os.path.isfile(path) and (by_id or not os.path.splitext(path)[1]):
        found = next((path + ext for ext in AUDIO_EXTENSIONS if os.path.isfile(path + ext)), None)
        return found or path + ".wav"
    return path


def output_path(path: str, out_dir: str, style: str) -> str:
    """The path as written into the dataset (LLaMA-Factory resolves relative paths against the dataset dir)."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path, out_dir)
    inside = not relative.startswith(os.pardir + os.sep) and relative != os.pardir
    use_relative = style == "relative" or (style == "auto" and inside)
    return (relative if use_relative else path).replace(os.sep, "/")


def dataset_info_entry(file_name: str) -> dict[str, Any]:
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "audios": "audios"},
        "tags": dict(SHAREGPT_TAGS),
    }


def merge_dataset_info(out_dir: str, entries: dict[str, dict[str, Any]], drop: dict[str, str] | None = None) -> str:
    """Add/replace ``entries`` in ``out_dir/dataset_info.json``, keeping every other entry except those of ``drop``
    (name → file) that still point at that file; returns the path."""
    path = os.path.join(out_dir, DATASET_INFO)
    info = read_dataset_info(out_dir) or {}
    for name, file in (drop or {}).items():
        if isinstance(info.get(name), dict) and info[name].get("file_name") == file:
            del info[name]
    info.update(entries)
    write_json(path, info)
    return path


def previous_outputs(report_path: str) -> dict[str, str]:
    """Dataset name → file that the earlier run of this ``--name`` wrote, from its report ({} when there is none)."""
    try:
        with open(report_path, encoding="utf-8") as fh:
            outputs = json.load(fh).get("outputs")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(outputs, dict):
        return {}
    files = {name: entry.get("file") for name, entry in outputs.items() if isinstance(entry, dict)}
    return {name: file for name, file in files.items() if isinstance(file, str) and file == os.path.basename(file)}


def replace_outputs(out_dir: str, written: dict[str, str], previous: dict[str, str], name: str) -> list[str]:
    """Register ``written`` (dataset → path) in ``dataset_info.json`` and remove what the earlier run of ``name``
    wrote and this one did not (a test split that now overlaps the new train split must not look current).
    Only files named in that run's report are removed; returns one note per removed dataset."""
    kept = {os.path.basename(path) for path in written.values()}
    stale = {ds: file for ds, file in previous.items() if ds not in written and file not in kept}
    merge_dataset_info(out_dir, {ds: dataset_info_entry(os.path.basename(p)) for ds, p in written.items()}, stale)
    notes = []
    for ds, file in stale.items():
        path = os.path.join(out_dir, file)
        if os.path.isfile(path):
            os.remove(path)
            notes.append(f"{ds}: removed {file}, written by the earlier convert of {name}; this run writes no {ds}")
    return notes
