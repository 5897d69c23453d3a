"""Readers for the formats ASR data arrives in; each turns one input into ``SourceRecord`` rows plus ``Issue``s.

Formats (``READERS``, looked up by name; ``detect_format`` picks one for ``--format auto``):

* ``csv`` / ``tsv``: a header row naming id / audio / text columns (``COLUMN_ALIASES``, English or Chinese).
  Without an audio column, the audio is looked up as ``ROOT/<id>.wav`` (``.flac``, ...).
* ``kimi-jsonl``: the official Kimi-Audio fine-tune records (``conversation`` with ``message_type`` text/audio).
* ``qwen-json``: ``conversations``/``messages`` turns with ``<audio>PATH</audio>`` inline, or LLaMA-Factory
  sharegpt rows whose ``<audio>`` placeholders pair with an ``audios`` list (also reachable as ``sharegpt``).
* ``flat-json``: ``{"audio", "text", "prompt"}`` objects, as a JSON array or JSON Lines.
* ``kaldi``: a data directory with ``wav.scp`` and ``text``.
* ``folder``: audio files with sidecar ``.txt`` / ``.lab`` transcripts of the same name.
* ``sharegpt-dir``: a dataset folder of ``part-*.jsonl`` shards, as ``convert`` writes public corpora.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ...errors import InputError
from ...fileio.text_encodings import Decoded, decode_file
from ...fileio.textio import DataError, mojibake_hint, read_text
from .conversations import is_dataset_dir, read_conversations, read_dataset_dir, read_kimi_jsonl
from .records import Source, SourceRecord, iter_json_records
from .tables import iter_records, read_table
from .validate import Issue

__all__ = ["COLUMN_ALIASES", "READERS", "ReadOptions", "Source", "SourceRecord", "detect_format", "read_source"]

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "utt", "utt_id", "uttid", "utterance_id", "key", "name", "audio_id", "file_id", "编号", "名称"),
    "audio": (
        "audio",
        "path",
        "wav",
        "file",
        "audio_path",
        "wav_path",
        "audio_file",
        "audio_filepath",
        "filepath",
        "file_path",
        "filename",
        "file_name",
        "音频",
        "音频路径",
        "音频文件",
        "路径",
        "文件",
        "文件名",
        "文件路径",
    ),
    "text": (
        "text",
        "transcript",
        "transcription",
        "sentence",
        "label",
        "normalized_text",
        "no_point_text",
        "answer",
        "target",
        "文本",
        "转写",
        "转写文本",
        "标注",
        "标注文本",
        "内容",
        "文字",
        "转录",
        "句子",
        "答案",
        "识别结果",
    ),
    "instruction": ("instruction", "prompt", "指令", "提示", "提示词"),
}
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
SIDECAR_EXTENSIONS = (".txt", ".lab")


@dataclass(frozen=True)
class ReadOptions:
    encoding: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)  # role → header, from ``--columns text=no_point_text``


def _norm_header(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lstrip("\ufeff").lower())


_REQUIRED = {"text": "transcript", "audio": "audio path"}


def find_columns(headers: list[str]) -> tuple[dict[str, str], str | None]:
    """Map roles (id/audio/text/instruction) to header names by ``COLUMN_ALIASES``; also the first missing role
    (``audio`` is optional when there is an id: the audio is then ``ROOT/<id>.wav``)."""
    normalised = {_norm_header(h): h for h in headers if isinstance(h, str)}
    mapping = {}
    for role, aliases in COLUMN_ALIASES.items():
        found = next((normalised[a] for a in aliases if a in normalised), None)
        if found is not None:
            mapping[role] = found
    missing = next((r for r in _REQUIRED if r not in mapping and not (r == "audio" and "id" in mapping)), None)
    return mapping, missing


def match_columns(headers: list[str], where: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """``find_columns`` plus ``--columns`` overrides; raises DataError naming the headers and the accepted names."""
    for role, header in (overrides or {}).items():
        if header not in headers:
            raise DataError(f"{where}: --columns {role}={header}: no such column; the headers are {headers}")
    mapping, _ = find_columns([h for h in headers if h not in (overrides or {}).values()])
    mapping.update(overrides or {})
    missing = next((r for r in _REQUIRED if r not in mapping and not (r == "audio" and "id" in mapping)), None)
    if missing:
        garbled = any(mojibake_hint(h) for h in headers if h)
        hint = " (the headers look garbled: re-export as UTF-8 or pass --encoding)" if garbled else ""
        raise DataError(
            f"{where}: no {_REQUIRED[missing]} column among the headers {headers}{hint}; "
            f"name it one of: {', '.join(COLUMN_ALIASES[missing])} (or pass --columns {missing}=HEADER)"
        )
    return mapping


def _record_from_row(row: dict, mapping: dict[str, str], file: str, line: int) -> SourceRecord:
    def cell(role: str) -> str | None:
        value = row.get(mapping[role]) if role in mapping else None
        return value.strip() if isinstance(value, str) and role != "text" else value

    uid = cell("id")
    audio = cell("audio") if "audio" in mapping else uid
    if isinstance(audio, dict):  # HF style {"path": ...}
        audio = audio.get("path")
    return SourceRecord(
        file,
        line,
        str(uid) if uid not in (None, "") else None,
        audio,
        cell("text"),
        cell("instruction") or None,
        by_id="audio" not in mapping,
    )


def _read_table(path: str, opts: ReadOptions, delimiter: str | None) -> Source:
    name = os.path.basename(path)
    table = read_table(path, name, opts.encoding, delimiter)
    mapping = match_columns(table.headers, name, opts.columns)
    records: list[SourceRecord | Issue] = []
    for item in iter_records(table):
        records.append(item if isinstance(item, Issue) else _record_from_row(item[1], mapping, name, item[0]))
    return Source(records=records, encoding=table.decoded.codec, notes=_codec_notes(name, table.decoded))


def _codec_notes(name: str, decoded: Decoded) -> list[str]:
    if decoded.codec == "utf-8":
        return []
    how = " (detected; pass --encoding to override)" if decoded.detected else ""
    return [f"{name}: decoded as {decoded.codec}{how}"]


def read_csv(path: str, opts: ReadOptions) -> Source:
    return _read_table(path, opts, delimiter=None)


def read_tsv(path: str, opts: ReadOptions) -> Source:
    return _read_table(path, opts, delimiter="\t")


def read_flat_json(path: str, opts: ReadOptions) -> Source:
    name = os.path.basename(path)
    records: list[SourceRecord | Issue] = []
    items, codec = iter_json_records(path, opts.encoding)
    for line, obj in items:
        if isinstance(obj, Issue):
            records.append(obj)
            continue
        mapping, missing = find_columns(list(obj)) if isinstance(obj, dict) else ({}, "text")
        if missing:
            keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
            records.append(Issue("malformed_record", name, line, f"no {_REQUIRED[missing]} key in {keys}"))
        else:
            records.append(_record_from_row(obj, mapping, name, line))
    return Source(records=records, encoding=codec)


def _read_kaldi_table(path: str, opts: ReadOptions) -> Iterator[tuple[int, str, str | Issue]]:
    """``(line, key, value)``; the value is an Issue for a line with undecodable bytes (that line is skipped)."""
    name = os.path.basename(path)
    decoded = decode_file(path, opts.encoding, name)
    for number, line in enumerate(decoded.lines, start=1):
        key, _, value = line.strip().partition(" ")
        if not key:
            continue
        if number in decoded.bad:
            yield number, key, Issue("undecodable_text", name, number, decoded.bad[number], key)
        else:
            yield number, key, value.strip()


def read_kaldi(path: str, opts: ReadOptions) -> Source:
    if os.path.exists(os.path.join(path, "segments")):
        raise DataError(
            f"{path}/segments: segmented Kaldi data is not supported; cut the segments into files first "
            "(e.g. `extract-segments scp:wav.scp segments ark:- | wav-copy ark:- ark,scp:...`)"
        )
    wavs = {key: value for _, key, value in _read_kaldi_table(os.path.join(path, "wav.scp"), opts)}
    records: list[SourceRecord | Issue] = []
    seen: set[str] = set()
    for number, key, transcript in _read_kaldi_table(os.path.join(path, "text"), opts):
        seen.add(key)
        audio = wavs.get(key)
        if isinstance(transcript, Issue):
            records.append(transcript)
        elif audio is None:
            records.append(Issue("kaldi_unmatched", "text", number, f"utterance {key!r} has no entry in wav.scp", key))
        elif isinstance(audio, Issue):
            records.append(Issue(audio.reason, "wav.scp", audio.line, f"utterance {key!r}: {audio.message}", key))
        elif audio.endswith("|"):
            records.append(Issue("kaldi_pipe", "wav.scp", None, f"utterance {key!r} is a pipe command", key))
        else:
            records.append(SourceRecord("text", number, key, audio, transcript))
    unused = len(set(wavs) - seen)
    notes = [f"{unused} wav.scp entries have no line in text and were left out"] if unused else []
    return Source(records=records, notes=notes)


def read_folder(path: str, opts: ReadOptions) -> Source:
    records: list[SourceRecord | Issue] = []
    for directory, subdirs, files in os.walk(path):
        subdirs.sort()
        for file in sorted(files):
            stem, ext = os.path.splitext(file)
            if ext.lower() not in AUDIO_EXTENSIONS:
                continue
            audio = os.path.join(directory, file)
            uid = os.path.relpath(os.path.join(directory, stem), path).replace(os.sep, "/")
            rel = os.path.relpath(audio, path)
            sidecar = next(
                (
                    os.path.join(directory, stem + s)
                    for s in SIDECAR_EXTENSIONS
                    if os.path.isfile(os.path.join(directory, stem + s))
                ),
                None,
            )
            if sidecar is None:
                records.append(Issue("missing_transcript", rel, None, f"no {stem}.txt or {stem}.lab next to it", uid))
                continue
            try:
                transcript = read_text(sidecar, opts.encoding)[0].strip()
            except InputError as err:  # one unreadable sidecar skips its clip, not the folder
                records.append(Issue("undecodable_text", os.path.relpath(sidecar, path), None, str(err), uid))
                continue
            records.append(SourceRecord(rel, None, uid, audio, transcript))
    return Source(records=records)


READERS: dict[str, Callable[[str, ReadOptions], Source]] = {
    "csv": read_csv,
    "tsv": read_tsv,
    "kimi-jsonl": read_kimi_jsonl,
    "qwen-json": read_conversations,
    "sharegpt": read_conversations,
    "flat-json": read_flat_json,
    "kaldi": read_kaldi,
    "folder": read_folder,
    "sharegpt-dir": read_dataset_dir,
}
_EXTENSION_FORMATS = {".csv": "csv", ".tsv": "tsv"}
_JSON_KEY_FORMATS = {"conversation": "kimi-jsonl", "conversations": "qwen-json", "messages": "qwen-json"}


def detect_format(path: str, encoding: str = "auto") -> str:
    """Format name for ``path`` from its type, extension and (for JSON) the keys of its first record."""
    if os.path.isdir(path):
        is_kaldi = all(os.path.isfile(os.path.join(path, f)) for f in ("wav.scp", "text"))
        return "kaldi" if is_kaldi else "sharegpt-dir" if is_dataset_dir(path) else "folder"
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSION_FORMATS:
        return _EXTENSION_FORMATS[ext]
    if ext not in (".json", ".jsonl"):
        raise DataError(
            f"{path}: cannot tell the format from the extension {ext!r}; pass --format ({'|'.join(READERS)})"
        )
    items, _ = iter_json_records(path, encoding)
    first = next((obj for _, obj in items if isinstance(obj, dict)), {})
    return next((fmt for key, fmt in _JSON_KEY_FORMATS.items() if key in first), "flat-json")


def read_source(path: str, fmt: str = "auto", opts: ReadOptions | None = None) -> Source:
    """Read ``path`` in format ``fmt`` (or detect it); file-level problems raise DataError."""
    opts = opts or ReadOptions()
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory; check the INPUT path")
    fmt = detect_format(path, opts.encoding) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise DataError(f"unknown --format {fmt!r}; choose one of: auto, {', '.join(READERS)}")
    wants_dir = fmt in ("kaldi", "folder", "sharegpt-dir")
    if wants_dir != os.path.isdir(path):
        raise DataError(f"{path}: --format {fmt} expects a {'directory' if wants_dir else 'file'}")
    source = READERS[fmt](path, opts)
    source.format = fmt
    return source


def parse_columns(spec: str | None) -> dict[str, str]:
    """``"text=no_point_text,audio=wav"`` → ``{"text": "no_point_text", "audio": "wav"}``."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        role, sep, header = part.partition("=")
        if not sep or role not in COLUMN_ALIASES:
            raise DataError(f"--columns {part!r}: expected ROLE=HEADER with ROLE one of {', '.join(COLUMN_ALIASES)}")
        mapping[role] = header
    return mapping
