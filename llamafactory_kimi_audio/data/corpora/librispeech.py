"""LibriSpeech (OpenSLR 12): ``<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt`` + ``<spk>-<chapter>-<utt>.flac``.

Transcripts are upper case without punctuation (kept as they are; ``--text-case lower`` folds them). LibriTTS,
whose files are ``*.trans.tsv`` / ``*.wav``, does not match.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..records import SourceRecord
from ..validate import Issue
from .base import Corpus, CorpusOptions, Layout, Row, first_file, key_value_lines, sorted_dirs, sorted_files

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


def _is_split(path: str) -> bool:
    """The first speaker / chapter directory holds a ``*.trans.txt`` (one listing per level)."""
    speakers = [d for d in sorted_dirs(path) if d.name.isdigit()]
    chapters = [d for d in sorted_dirs(speakers[0].path) if d.name.isdigit()] if speakers else []
    return bool(chapters) and first_file(chapters[0].path, ".trans.txt") is not None


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
    unlisted = 0
    for split, split_dir in splits:
        for speaker in sorted_dirs(split_dir):
            for chapter in sorted_dirs(speaker.path):
                flacs = {f.name for f in sorted_files(chapter.path, ".flac")}
                for trans in sorted_files(chapter.path, ".trans.txt"):
                    rel = f"{split}/{speaker.name}/{chapter.name}/{trans.name}"
                    for line, utt, text in key_value_lines(trans.path, opts.encoding):
                        if f"{utt}.flac" not in flacs:
                            yield Issue("missing_audio", rel, line, f"{utt}.flac not found next to it", utt)
                            continue
                        flacs.discard(f"{utt}.flac")
                        audio = os.path.join(chapter.path, f"{utt}.flac")
                        yield SourceRecord(rel, line, utt, audio, text, subset=split)
                unlisted += len(flacs)
    if unlisted:
        notes.append(f"{unlisted} .flac files are in no trans.txt and were left out")


LIBRISPEECH = Layout(
    "librispeech",
    "LibriSpeech: [LibriSpeech/]<split>/<spk>/<chapter>/*.trans.txt + *.flac",
    detect_librispeech,
    read_librispeech,
)
