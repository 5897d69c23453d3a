"""File names that are not valid UTF-8 (and other strings that cannot be written as UTF-8 JSON).

On Linux a file name is bytes; Python lists ``b"a\\xff.wav"`` as the string ``"a\\udcff.wav"`` (a "surrogate
escape"). Such a string opens the file, but it cannot be written as UTF-8, and LLaMA-Factory's JSON loader has no
way to carry it, so ``convert`` skips the row with the reason ``undecodable_name`` instead of writing a path that
training could never open. ``printable`` shows the name with its raw bytes escaped for messages and reports.
"""

from __future__ import annotations

import dataclasses
import os

from .records import SourceRecord
from .validate import Issue

UNDECODABLE = "undecodable_name"


def is_utf8(text: str | None) -> bool:
    """Whether ``text`` can be written as UTF-8 (no surrogate escapes of undecodable bytes, no lone surrogates)."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with undecodable bytes shown as ``\\xff`` (lone surrogates as ``\\udXXX``): safe to print and write."""
    if is_utf8(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable_issue(issue: Issue) -> Issue:
    """``issue`` with every text field printable (an issue about a file of an undecodable name quotes that name)."""
    fields = {"file": issue.file, "message": issue.message, "uid": issue.uid}
    if all(is_utf8(value) for value in fields.values()):
        return issue
    return dataclasses.replace(issue, **{k: printable(v) if v is not None else None for k, v in fields.items()})


def undecodable(record: SourceRecord) -> tuple[str, str] | None:
    """``(reason, message)`` when ``record`` cannot be written to a UTF-8 dataset, else None."""
    if not is_utf8(record.audio):
        audio, name = str(record.audio), os.path.basename(str(record.audio))
        where = f"the audio file name '{name}'" if not is_utf8(name) else f"a folder name in '{audio}'"
        return UNDECODABLE, f"{printable(where)} is not valid UTF-8, so no dataset file can carry the path"
    for field in ("uid", "text", "instruction"):
        if not is_utf8(getattr(record, field)):
            value = printable(str(getattr(record, field)))[:60]
            return "malformed_record", f"the {field} {value!r} is not valid Unicode (an undecodable byte)"
    return None
