"""Hugging Face ``datasets``: a ``save_to_disk`` directory (``Dataset`` or ``DatasetDict``) or Parquet files with an
audio column, read with pyarrow (no ``datasets`` decoding, which needs torchcodec).

An ``Audio`` column stores ``{bytes, path}``: embedded bytes are written out unchanged as files under
``--out-dir/audio/<NAME>/<split>/`` (the extension from the path hint, else sniffed); a row with only a path uses
that file. A decoded struct ``{array, sampling_rate}`` is written as a WAV file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from ....fileio.textio import DataError
from ..records import SourceRecord
from ..sources import find_columns
from .base import Corpus, CorpusOptions, Layout, Row, SubsetIssue, sorted_files
from .hf_audio import audio_column, write_audio


def _dataset_dirs(path: str) -> list[tuple[str, str]]:
    """(split, Dataset directory) pairs of a ``save_to_disk`` directory."""
    if os.path.isfile(os.path.join(path, "state.json")):
        return [("train", path)]
    dict_file = os.path.join(path, "dataset_dict.json")
    if os.path.isfile(dict_file):
        with open(dict_file, encoding="utf-8") as fh:
            splits = json.load(fh).get("splits", [])
        return [(s, os.path.join(path, s)) for s in splits if os.path.isfile(os.path.join(path, s, "state.json"))]
    return []


def detect_hf_disk(path: str) -> str | None:
    return path if os.path.isdir(path) and _dataset_dirs(path) else None


def _parquet_files(path: str) -> list[tuple[str, str]]:
    """(split, file) pairs: a file, ``*.parquet`` in the directory, ``data/``, or ``<config>/<split>/``."""
    if os.path.isfile(path) and path.endswith(".parquet"):
        return [(_split_of(os.path.basename(path)), path)]
    found = [(_split_of(f.name), f.path) for f in sorted_files(path, ".parquet")]
    if not found and os.path.isdir(path):
        for sub in sorted(os.listdir(path)):
            found += [(_split_of(f.name, sub), f.path) for f in sorted_files(os.path.join(path, sub), ".parquet")]
    return found


def _split_of(file_name: str, folder: str = "") -> str:
    stem = file_name.split("-", 1)[0].split(".", 1)[0]
    return folder if folder not in ("", "data") else (stem or "train")


def detect_parquet(path: str) -> str | None:
    return path if _parquet_files(path) else None


def _arrow_batches(directory: str) -> Iterator[Any]:
    import pyarrow as pa

    with open(os.path.join(directory, "state.json"), encoding="utf-8") as fh:
        files = [item["filename"] for item in json.load(fh).get("_data_files", [])]
    for name in files:
        with pa.memory_map(os.path.join(directory, name)) as source:
            yield from pa.ipc.open_stream(source)


def _parquet_batches(path: str) -> Iterator[Any]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(path).iter_batches(batch_size=1024)


def read_hf_disk(path: str, opts: CorpusOptions) -> Corpus:
    parts = [(split, d, _arrow_batches(d)) for split, d in _dataset_dirs(path)]
    return _corpus("hf-disk", path, parts, opts)


def read_parquet(path: str, opts: CorpusOptions) -> Corpus:
    parts = [(split, f, _parquet_batches(f)) for split, f in _parquet_files(path)]
    return _corpus("parquet", path, parts, opts)


def _corpus(layout: str, path: str, parts: list, opts: CorpusOptions) -> Corpus:
    if not opts.extract_dir:
        raise DataError(f"{path}: embedded audio needs an output directory to be written to")
    corpus = Corpus(layout, path, iter(()))
    corpus.rows = _rows(parts, opts)
    return corpus


def _rows(parts: list, opts: CorpusOptions) -> Iterator[Row]:
    for split, source, batches in parts:
        shown = os.path.basename(os.path.normpath(source))
        source_dir = source if os.path.isdir(source) else os.path.dirname(source)
        index = 0
        for batch in batches:
            column = audio_column(batch.schema, shown)
            roles, missing = find_columns([n for n in batch.schema.names if n != column])
            if missing == "text" or "text" not in roles:
                raise DataError(f"{shown}: no transcript column among {batch.schema.names}; name it text or sentence")
            for record in batch.to_pylist():
                yield _row(record, column, roles, (split, index, shown, source_dir), opts)
                index += 1


def _row(record: dict, column: str, roles: dict, where: tuple[str, int, str, str], opts: CorpusOptions) -> Row:
    split, index, shown, source_dir = where
    uid = str(record.get(roles["id"])) if "id" in roles and record.get(roles["id"]) not in (None, "") else None
    uid = uid or f"{split}-{index:08d}"
    target_dir = os.path.join(str(opts.extract_dir), "audio", opts.name, split, f"{index // 10000:04d}")
    try:
        audio = write_audio(record.get(column), target_dir, f"{index:08d}", source_dir)
    except DataError as err:
        return SubsetIssue("unreadable_audio", shown, index + 1, str(err), uid, subset=split)
    text = record.get(roles["text"])
    return SourceRecord(shown, index + 1, uid, audio, text if isinstance(text, str) else None, subset=split)


HF_DISK = Layout(
    "hf-disk",
    "Hugging Face save_to_disk: state.json + data-*.arrow, or dataset_dict.json",
    detect_hf_disk,
    read_hf_disk,
)
PARQUET = Layout("parquet", "Parquet: *.parquet (also in data/ or <config>/)", detect_parquet, read_parquet)
