"""What every corpus-layout reader shares: its options, what it returns, and small file helpers.

A reader turns an extracted corpus directory into a lazy stream of ``SourceRecord`` rows (a segment carries
``begin``/``end``; every row names its output ``subset``) and ``Issue``s (``in_subset`` attributes one to its
subset), in a stable order, so that an interrupted ``convert`` can skip what it already wrote. Problems of the whole
corpus raise ``DataError``.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ....fileio.textio import DataError
from ..records import SourceRecord
from ..validate import Issue


@dataclass(frozen=True)
class SubsetIssue(Issue):
    """A reader's problem with a row of a known output subset: the report counts it under that dataset."""

    subset: str | None = None


def in_subset(row: SourceRecord | Issue, subset: str) -> SourceRecord | Issue:
    """``row``, an issue now attributed to ``subset`` (a SourceRecord names its subset already)."""
    if isinstance(row, Issue) and not isinstance(row, SubsetIssue):
        return SubsetIssue(row.reason, row.file, row.line, row.message, row.uid, subset=subset)
    return row


Row = SourceRecord | Issue


@dataclass(frozen=True)
class CorpusOptions:
    subsets: tuple[str, ...] | None = None  # WenetSpeech/GigaSpeech subsets, Common Voice splits (None: default)
    giga_text: str = "punct"  # GigaSpeech text_tn: punct (tags → , . ? !) | strip (recipe style) | keep
    encoding: str = "auto"
    root: str | None = None  # base of relative paths, overriding the layout's own
    extract_dir: str | None = None  # where embedded audio bytes (Hugging Face datasets) are written
    name: str = "corpus"


@dataclass
class Corpus:
    """A reader's answer: ``rows`` streams lazily; ``notes`` fill up while it is consumed."""

    layout: str
    base: str
    rows: Iterator[Row]
    lang: str | None = None  # the corpus' language when the layout fixes it (instruction choice)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    name: str
    looks_for: str  # shown when no layout matches
    detect: Callable[[str], str | None]  # the corpus directory (or file) when ``path`` is this layout, else None
    read: Callable[[str, CorpusOptions], Corpus]


def nfkc(text: str) -> str:
    """Full-width Latin and digits to ASCII (``ｋｔ`` → ``kt``), as the AISHELL recipes normalise."""
    return unicodedata.normalize("NFKC", text)


def sorted_dirs(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
    except OSError:
        return []


def sorted_files(path: str, suffix: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return sorted((e for e in entries if e.is_file() and e.name.endswith(suffix)), key=lambda e: e.name)
    except OSError:
        return []


def first_file(path: str, suffix: str) -> str | None:
    """The first ``*suffix`` in ``path`` (one directory listing, no recursion)."""
    found = sorted_files(path, suffix)
    return found[0].path if found else None


def text_lines(path: str, encoding: str = "auto") -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 (or ``encoding``) text file, streamed; blank lines skipped.

    A line whose bytes are not valid in the codec comes with U+FFFD in their place (its row is then skipped as
    garbled, naming the line); more than one such line in a hundred means a wrong codec: DataError.
    """
    codec = "utf-8" if encoding == "auto" else encoding
    bad = 0
    try:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                raw = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 and codec == "utf-8" else raw
                try:
                    line = raw.decode(codec)
                except UnicodeDecodeError as err:
                    bad += 1
                    if bad > max(1, number // 100):
                        raise DataError(
                            f"{path}: {bad} of the first {number} lines are not valid {codec} text (line {number}: "
                            f"{err.reason}); save it as UTF-8 or pass --encoding"
                        ) from err
                    line = raw.decode(codec, errors="replace")
                if line.strip():
                    yield number, line.rstrip("\r\n")
    except FileNotFoundError:
        raise DataError(f"{path}: not found; is the corpus fully extracted?") from None
    except LookupError:
        raise DataError(f"unknown --encoding {encoding!r}; use a Python codec name such as utf-8, gb18030") from None


def key_value_lines(path: str, encoding: str = "auto") -> Iterator[tuple[int, str, str]]:
    """``(line, key, rest)`` of a Kaldi-style table: split on the first run of whitespace (tabs or spaces)."""
    for number, line in text_lines(path, encoding):
        parts = line.strip().split(None, 1)
        yield number, parts[0], parts[1].strip() if len(parts) > 1 else ""
