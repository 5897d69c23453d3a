"""Mozilla Common Voice: ``<locale>/{train,dev,test,validated,...}.tsv`` + ``clips/*.mp3``.

The TSVs are written without quoting (quotes inside sentences are text), so they are read with ``QUOTE_NONE`` and
columns are matched by header name (the set of columns changed across releases). ``validated`` ⊇ train∪dev∪test,
so the default splits are train/dev/test and ``--subsets validated`` picks the other view, never both.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator

from ....fileio.textio import DataError
from ..records import SourceRecord
from .base import Corpus, CorpusOptions, Layout, Row, SubsetIssue, sorted_dirs

DEFAULT_SPLITS = ("train", "dev", "test")
KNOWN_SPLITS = ("train", "dev", "test", "validated", "other", "invalidated")
_ZH_LOCALES = ("zh", "yue")


def _header(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return fh.readline().rstrip("\r\n").split("\t")
    except OSError:
        return []


def _is_locale(path: str) -> bool:
    if not os.path.isdir(os.path.join(path, "clips")):
        return False
    heads = (_header(os.path.join(path, f"{s}.tsv")) for s in ("train", "dev", "test", "validated"))
    return any({"path", "sentence"} <= set(head) for head in heads)


def _locales(path: str) -> list[tuple[str, str]]:
    if _is_locale(path):
        return [(os.path.basename(os.path.normpath(path)), path)]
    return [(d.name, d.path) for d in sorted_dirs(path) if _is_locale(d.path)]


def detect_commonvoice(path: str) -> str | None:
    return path if _locales(path) else None


def read_commonvoice(path: str, opts: CorpusOptions) -> Corpus:
    locales = _locales(path)
    splits = opts.subsets or DEFAULT_SPLITS
    unknown = [s for s in splits if s not in KNOWN_SPLITS]
    if unknown:
        raise DataError(
            f"--subsets {','.join(unknown)}: not a Common Voice split; choose from {', '.join(KNOWN_SPLITS)}"
        )
    if opts.subsets is None and not any(os.path.isfile(os.path.join(p, "train.tsv")) for _, p in locales):
        raise DataError(f"{path}: no train.tsv (a delta release?); convert it with --subsets validated")
    zh = all(loc.lower().startswith(_ZH_LOCALES) for loc, _ in locales)
    corpus = Corpus("commonvoice", path, iter(()), lang="zh" if zh else None)
    corpus.rows = _rows(locales, splits, corpus.notes)
    return corpus


def _rows(locales: list[tuple[str, str]], splits: tuple[str, ...], notes: list[str]) -> Iterator[Row]:
    for locale, folder in locales:
        for split in splits:
            tsv = os.path.join(folder, f"{split}.tsv")
            subset = split if len(locales) == 1 else f"{locale}_{split}"
            if not os.path.isfile(tsv):
                notes.append(f"{locale}/{split}.tsv: not found, skipped")
                continue
            count = 0
            for row in _tsv_rows(tsv, folder, f"{locale}/{split}.tsv", subset):
                count += isinstance(row, SourceRecord)
                yield row
            if not count:
                notes.append(f"{locale}/{split}.tsv has no rows")


def _tsv_rows(tsv: str, folder: str, shown: str, subset: str) -> Iterator[Row]:
    with open(tsv, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        if not {"path", "sentence"} <= set(header):
            raise DataError(f"{shown}: no path/sentence columns in the header {header}; is it a clip TSV?")
        where = {name: header.index(name) for name in ("path", "sentence", "client_id") if name in header}
        for number, fields in enumerate(reader, start=2):
            if not any(fields):
                continue
            if len(fields) != len(header):
                message = f"{len(fields)} fields where the header has {len(header)}"
                yield SubsetIssue("malformed_record", shown, number, message, subset=subset)
                continue
            clip = fields[where["path"]]
            audio = os.path.join(folder, "clips", clip)
            if not os.path.splitext(clip)[1] and not os.path.isfile(audio):
                audio += ".mp3"
            yield SourceRecord(
                shown, number, os.path.splitext(clip)[0], audio, fields[where["sentence"]], subset=subset
            )


COMMONVOICE = Layout(
    "commonvoice",
    "Common Voice: [<locale>/]clips/ + train.tsv/dev.tsv/test.tsv/validated.tsv",
    detect_commonvoice,
    read_commonvoice,
)
