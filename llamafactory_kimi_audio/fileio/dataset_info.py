"""LLaMA-Factory's ``dataset_info.json``: read in one place, with one error policy.

An absent file is a normal state (``None``: a new dataset folder); a file that exists but cannot be used (not
UTF-8, invalid JSON, not an object of entries) is an ``InputError`` naming the file, the line and the fix, whoever
reads it (convert merging into it, precompute looking a dataset up, evaluate finding the media folder).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import InputError

DATASET_INFO = "dataset_info.json"
_FIX = "fix it or move it away"


def read_dataset_info(folder: str) -> dict[str, Any] | None:
    """The entries of ``folder/dataset_info.json``, or None when there is no such file."""
    path = os.path.join(folder, DATASET_INFO)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            info = json.load(fh)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise InputError(f"{path} line {err.lineno}: invalid JSON ({err.msg}); {_FIX}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or type(err).__name__}); {_FIX}") from err
    if not isinstance(info, dict):
        raise InputError(f"{path}: expected a JSON object of dataset entries, got {type(info).__name__}; {_FIX}")
    return info


def media_root(data_path: str, levels: int = 3) -> str:
    """Folder relative audio paths of ``data_path`` resolve against: the nearest folder (up to ``levels`` up) whose
    ``dataset_info.json`` names this file, as LLaMA-Factory's ``media_dir`` defaults to ``dataset_dir``; else the
    file's own folder."""
    target = os.path.abspath(data_path)
    folder = candidate = os.path.dirname(target)
    for _ in range(levels):
        entries = read_dataset_info(candidate) or {}
        names = (entry.get("file_name") for entry in entries.values() if isinstance(entry, dict))
        if target in {os.path.abspath(os.path.join(candidate, str(name))) for name in names if name}:
            return candidate
        candidate = os.path.dirname(candidate)
    return folder
