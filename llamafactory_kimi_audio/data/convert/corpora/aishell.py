"""AISHELL-1 (OpenSLR 33) and AISHELL-2.

AISHELL-1: ``transcript/aishell_transcript_v0.8.txt`` (``UTT word-segmented text``, one file for every split) and
``wav/<train|dev|test>/<SPK>/<UTT>.wav`` after the per-speaker tarballs in ``wav/`` are extracted; the split comes
from the directory. AISHELL-2: per set ``<device>/<set>/{wav.scp,trans.txt,wav/<SPK>/<UTT>.wav}``, tab-separated,
paths relative to the set directory. Text: NFKC (full-width Latin → ASCII); the converter drops the spaces between
Chinese words.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from ....fileio.textio import DataError
from ..records import SourceRecord
from .base import Corpus, CorpusOptions, Layout, Row, SubsetIssue, key_value_lines, nfkc, sorted_dirs, sorted_files

_SPLITS = ("train", "dev", "test")
_WORD_GAP = re.compile(r"(?<![A-Za-z']) +| +(?![A-Za-z'])")  # a space not between two Latin words


def join_words(text: str) -> str:
    """The recipes' ``replace(" ", "")`` for word-segmented Chinese, keeping spaces between Latin words; NFKC first
    (full-width ``ｋｔ`` → ``kt``)."""
    return _WORD_GAP.sub("", nfkc(text).strip())


def _transcript(path: str) -> str | None:
    folder = os.path.join(path, "transcript")
    names = sorted(n for n in _listdir(folder) if n.startswith("aishell_transcript_v") and n.endswith(".txt"))
    return os.path.join(folder, names[-1]) if names else None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def detect_aishell1(path: str) -> str | None:
    for candidate in (path, os.path.join(path, "data_aishell"), os.path.dirname(os.path.abspath(path))):
        if _transcript(candidate) and os.path.isdir(os.path.join(candidate, "wav")):
            return candidate
    return None


def read_aishell1(path: str, opts: CorpusOptions) -> Corpus:
    wav_dir = os.path.join(path, "wav")
    splits = [s for s in _SPLITS if os.path.isdir(os.path.join(wav_dir, s))]
    if not splits:
        tarballs = [n for n in _listdir(wav_dir) if n.endswith(".tar.gz")]
        hint = f" ({len(tarballs)} speaker tarballs found)" if tarballs else ""
        raise DataError(
            f"{wav_dir}: no train/dev/test folders{hint}; extract the speaker tarballs first: "
            f"cd {wav_dir} && for f in *.tar.gz; do tar -xzf $f; done"
        )
    corpus = Corpus("aishell1", path, iter(()), lang="zh")
    corpus.rows = _aishell1_rows(path, splits, opts, corpus.notes)
    return corpus


def _aishell1_rows(path: str, splits: list[str], opts: CorpusOptions, notes: list[str]) -> Iterator[Row]:
    transcript = _transcript(path) or ""
    texts = {utt: text for _, utt, text in key_value_lines(transcript, opts.encoding)}
    used = 0
    for split in splits:
        for speaker in sorted_dirs(os.path.join(path, "wav", split)):
            for wav in sorted_files(speaker.path, ".wav"):
                utt = wav.name[: -len(".wav")]
                rel = f"wav/{split}/{speaker.name}/{wav.name}"
                if utt not in texts:
                    message = f"{utt} has no line in {os.path.basename(transcript)}"
                    yield SubsetIssue("missing_transcript", rel, None, message, utt, subset=split)
                    continue
                used += 1
                yield SourceRecord(rel, None, utt, wav.path, join_words(texts[utt]), subset=split)
    if len(texts) > used:
        notes.append(f"{len(texts) - used} transcript lines without audio (normal when not every split is extracted)")


def _aishell2_sets(path: str) -> list[tuple[str, str]]:
    """(subset name, set directory) pairs: the directory itself, or ``<device>/<set>`` below it."""
    if _is_aishell2_set(path):
        return [(os.path.basename(os.path.normpath(path)), path)]
    found = []
    for device in sorted_dirs(path):
        found += [(f"{device.name}_{s.name}", s.path) for s in sorted_dirs(device.path) if _is_aishell2_set(s.path)]
    return found


def _is_aishell2_set(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in ("wav.scp", "trans.txt"))


def detect_aishell2(path: str) -> str | None:
    return path if _aishell2_sets(path) else None


def read_aishell2(path: str, opts: CorpusOptions) -> Corpus:
    corpus = Corpus("aishell2", path, iter(()), lang="zh")
    corpus.rows = _aishell2_rows(_aishell2_sets(path), opts)
    return corpus


def _aishell2_rows(sets: list[tuple[str, str]], opts: CorpusOptions) -> Iterator[Row]:
    for subset, folder in sets:
        texts = {utt: text for _, utt, text in key_value_lines(os.path.join(folder, "trans.txt"), opts.encoding)}
        scp = os.path.join(os.path.basename(folder), "wav.scp")
        for line, utt, rel in key_value_lines(os.path.join(folder, "wav.scp"), opts.encoding):
            if utt not in texts:
                message = f"{utt} has no line in trans.txt"
                yield SubsetIssue("missing_transcript", scp, line, message, utt, subset=subset)
                continue
            yield SourceRecord(scp, line, utt, os.path.join(folder, rel), join_words(texts[utt]), subset=subset)


AISHELL1 = Layout(
    "aishell1",
    "AISHELL-1: transcript/aishell_transcript_v*.txt + wav/<split>/<spk>/*.wav",
    detect_aishell1,
    read_aishell1,
)
AISHELL2 = Layout("aishell2", "AISHELL-2: [<device>/<set>/]wav.scp + trans.txt", detect_aishell2, read_aishell2)
