"""The row type every reader produces, and a JSON / JSON Lines iterator that keeps line numbers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ...fileio.text_encodings import decode_file
from ...fileio.textio import DataError
from .validate import Issue


@dataclass(frozen=True)
class SourceRecord:
    """One utterance as written in the input (paths not yet resolved).

    ``line`` is the CSV row number as Excel shows it (header = 1) or the 1-based line in JSON / Kaldi files.
    ``by_id`` means the input had no audio column and ``audio`` is the id, to be found as ``ROOT/<id>.<ext>``.
    """

    file: str
    line: int | None
    uid: str | None
    audio: str | None
    text: str | None
    instruction: str | None = None
    by_id: bool = False
    begin: float | None = None  # a segment of the recording ``audio`` (seconds); None: the whole file
    end: float | None = None  # None with a begin: to the end of the file (Kaldi's -1)
    subset: str | None = None  # the output dataset (split / subset) of corpus layouts
    recording: str | None = None  # recording id of a segment (overlap checks, messages)


@dataclass
class Source:
    """Everything read from one input: rows and row-level problems in input order, plus file-level notes."""

    records: list[SourceRecord | Issue]
    format: str = ""
    encoding: str | None = None
    notes: list[str] = field(default_factory=list)


def iter_json_records(path: str, encoding: str = "auto") -> tuple[Iterator[tuple[int, Any]], str]:
    """``(line, object)`` pairs of a JSON array or a JSON Lines file, and the codec used.

    A JSON Lines line that does not parse yields an ``Issue`` in place of the object (the other lines still load);
    a broken JSON array raises DataError naming the line, since parsing cannot resume after it.
    """
    name = os.path.basename(path)
    decoded = decode_file(path, encoding, name)
    text, codec = decoded.text, decoded.codec
    stripped = text.lstrip()
    whole = not path.lower().endswith(".jsonl") and stripped.startswith(("[", "{"))
    if whole and decoded.bad:  # one JSON document: a bad line cannot be cut out of it
        first = min(decoded.bad)
        raise DataError(f"{name} line {first}: {decoded.bad[first]}; fix the bytes, or pass the right --encoding")
    if stripped.startswith("[") and not path.lower().endswith(".jsonl"):
        return _iter_array(text, name), codec
    if stripped.startswith("{") and not path.lower().endswith(".jsonl"):
        try:
            return iter([(1, json.loads(text))]), codec  # a single pretty-printed object
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":
                message = f"{name} line {err.lineno}: invalid JSON ({err.msg}); fix it or use JSON Lines"
                raise DataError(message) from err
    return _iter_lines(decoded.lines, name, decoded.bad), codec


def _iter_lines(lines: list[str], name: str, bad: dict[int, str]) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(lines, start=1):  # split on "\n" only: U+2028 / U+0085 are valid in JSON
        if not line.strip():
            continue
        if number in bad:
            yield number, Issue("undecodable_text", name, number, bad[number])
            continue
        try:
            yield number, json.loads(line.removesuffix("\n"))
        except json.JSONDecodeError as err:
            yield number, Issue("malformed_record", name, number, f"invalid JSON ({err.msg} at column {err.colno})")


def _iter_array(text: str, name: str) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0
    while True:
        pos = _skip(text, pos, ",")
        if pos >= len(text):
            raise DataError(f"{name}: the JSON array is not closed with ']'; the file may be truncated")
        if text[pos] == "]":
            return
        line, counted = line + text.count("\n", counted, pos), pos  # incremental: linear in the file size
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{name} line {err.lineno}: invalid JSON ({err.msg}); fix the record") from err
        yield line, obj


def _skip(text: str, pos: int, separators: str) -> int:
    while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
        pos += 1
    return pos
