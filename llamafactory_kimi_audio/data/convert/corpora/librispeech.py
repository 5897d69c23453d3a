"""LibriSpeech (OpenSLR 12): ``<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt`` + ``<spk>-<chapter>-<utt>.flac``.

Transcripts are upper case without punctuation (kept as they are; ``--text-case lower`` folds them). LibriTTS,
whose files are ``*.trans.tsv`` / ``*.wav``, does not match. Detection looks at the first chapters (not only the
first one), and a chapter without its ``.trans.txt`` is converted as far as it goes: its clips are skipped as
``missing_transcript`` and the chapters are named in a note.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

from ..records import SourceRecord
from .base import Corpus, CorpusOptions, Layout, Row, SubsetIssue, key_value_lines, sorted_dirs, sorted_files

SPLITS = (
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean-2",
    "train-clean-5",
)


CHAPTERS_LOOKED_AT = 64  # detection lists at most this many chapter folders (instant on the full corpus)


def _chapters(split_dir: str) -> Iterator[tuple[os.DirEntry, os.DirEntry]]:
    """(speaker, chapter) folders of a split, in order; both are numbers in LibriSpeech."""
    for speaker in sorted_dirs(split_dir):
        if speaker.name.isdigit():
            for chapter in sorted_dirs(speaker.path):
                if chapter.name.isdigit():
                    yield speaker, chapter


def _is_librispeech_chapter(speaker: str, chapter: os.DirEntry) -> bool:
    """A ``*.trans.txt``, or a ``<spk>-<chapter>-*.flac`` (a chapter whose transcript is missing still counts)."""
    prefix = f"{speaker}-{chapter.name}-"
    found = sorted_files(chapter.path, ".trans.txt") or sorted_files(chapter.path, ".flac")
    return any(f.name.endswith(".trans.txt") or f.name.startswith(prefix) for f in found)


def _is_split(path: str) -> bool:
    """One of the first chapters looks like LibriSpeech (not only the first: it may lack its transcript)."""
    chapters = itertools.islice(_chapters(path), CHAPTERS_LOOKED_AT)
    return any(_is_librispeech_chapter(speaker.name, chapter) for speaker, chapter in chapters)


def _splits(path: str) -> list[tuple[str, str]]:
    if _is_split(path):
        return [(os.path.basename(os.path.normpath(path)), path)]
    for root in (path, os.path.join(path, "LibriSpeech")):
        found = [(d.name, d.path) for d in sorted_dirs(root) if d.name in SPLITS and _is_split(d.path)]
        if found:
            return found
    return []


def detect_librispeech(path: str) -> str | None:
    return path if _splits(path) else None


def read_librispeech(path: str, opts: CorpusOptions) -> Corpus:
    corpus = Corpus("librispeech", path, iter(()), lang="en")
    corpus.rows = _rows(_splits(path), opts, corpus.notes)
    return corpus


def _rows(splits: list[tuple[str, str]], opts: CorpusOptions, notes: list[str]) -> Iterator[Row]:
    unlisted, untranscribed = 0, []
    for split, split_dir in splits:
        for speaker, chapter in _chapters(split_dir):
            flacs = {f.name for f in sorted_files(chapter.path, ".flac")}
            transcripts = sorted_files(chapter.path, ".trans.txt")
            if not transcripts:
                untranscribed.append(f"{split}/{speaker.name}/{chapter.name}")
                yield from _untranscribed(split, speaker.name, chapter.name, sorted(flacs))
                continue
            for trans in transcripts:
                rel = f"{split}/{speaker.name}/{chapter.name}/{trans.name}"
                for line, utt, text in key_value_lines(trans.path, opts.encoding):
                    if f"{utt}.flac" not in flacs:
                        message = f"{utt}.flac not found next to it"
                        yield SubsetIssue("missing_audio", rel, line, message, utt, subset=split)
                        continue
                    flacs.discard(f"{utt}.flac")
                    audio = os.path.join(chapter.path, f"{utt}.flac")
                    yield SourceRecord(rel, line, utt, audio, text, subset=split)
            unlisted += len(flacs)
    if unlisted:
        notes.append(f"{unlisted} .flac files are in no trans.txt and were left out")
    if untranscribed:
        shown = ", ".join(untranscribed[:3]) + (f" (+{len(untranscribed) - 3} more)" if len(untranscribed) > 3 else "")
        chapters = f"{len(untranscribed)} chapter{'s' if len(untranscribed) > 1 else ''}"
        notes.append(f"{chapters} without a .trans.txt: their clips were skipped (missing_transcript): {shown}")


def _untranscribed(split: str, speaker: str, chapter: str, flacs: list[str]) -> Iterator[Row]:
    """Each clip of a chapter without its ``<spk>-<chapter>.trans.txt``: skipped, with the reason."""
    message = f"no {speaker}-{chapter}.trans.txt in its chapter folder (incomplete download or extraction?)"
    for flac in flacs:
        rel = f"{split}/{speaker}/{chapter}/{flac}"
        yield SubsetIssue("missing_transcript", rel, None, message, flac[: -len(".flac")], subset=split)


LIBRISPEECH = Layout(
    "librispeech",
    "LibriSpeech: [LibriSpeech/]<split>/<spk>/<chapter>/*.trans.txt + *.flac",
    detect_librispeech,
    read_librispeech,
)
