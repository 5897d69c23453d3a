"""Convert ASR data (CSV, Kimi JSONL, sharegpt, Kaldi, folders) into a LLaMA-Factory sharegpt dataset with audio.

``convert(input, out_dir)`` reads the input (``sources.read_source``), checks every row (``validate``), and writes
atomically into ``out_dir``:

* ``NAME.json`` (or ``NAME_train/_dev/_test.json`` with ``split``): rows
  ``{"id", "messages": [{"role": "user", "content": "INSTRUCTION<audio>"}, {"role": "assistant", "content": TEXT}],
  "audios": [PATH]}``; paths are relative to ``out_dir`` when the audio lives under it, otherwise absolute
  (``path_style``), never relative to the current directory: LLaMA-Factory joins relative paths to ``media_dir``,
  which defaults to ``dataset_dir``, the folder of ``dataset_info.json`` (``output_path``);
* ``dataset_info.json``: one entry per written file, merged with the entries already there;
* ``NAME.report.json``: counts, duration statistics and every problem found.

Bad rows are skipped and reported (nothing but the report is written when no row is usable); with ``strict=True``
the first bad row raises ``DataError`` instead.

Public corpus layouts (AISHELL, LibriSpeech, Common Voice, WenetSpeech, GigaSpeech, Kaldi with segments, Hugging
Face datasets: ``corpora/``) go through ``corpus_convert`` instead: streamed, sharded, resumable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ...constants import CHUNK_SECONDS
from ...fileio.audio import AudioInfo
from ...fileio.dataset_info import DATASET_INFO
from ...fileio.textio import DataError, ensure_writable_dir, write_json
from ...models.special_tokens import DEFAULT_INSTRUCTION
from ...text import detect_language, drop_spaceless_gaps
from .corpora import BY_NAME, Layout, detect_layout, named_layout, unknown_layout
from .corpora.registry import has_known_files
from .corpus_convert import CorpusResult, convert_corpus
from .dataset_files import STRICT_HINT, output_path, previous_outputs, replace_outputs, resolve_audio
from .names import printable, printable_issue, undecodable
from .records import SourceRecord
from .sources import ReadOptions, read_source
from .speech_tasks import TTS_INSTRUCTION, tts_row
from .splits import SPLIT_NAMES, assign_splits, check_split, parse_split, split_counts  # noqa: F401 (API)
from .transcripts import rate_problem, strip_invisible
from .validate import ERROR, DurationStats, Issue, check_audio, check_text, count_by_reason


@dataclass(frozen=True)
class ConvertOptions:
    name: str | None = None
    root: str | None = None
    format: str = "auto"
    instruction: str | None = None
    lang: str = "auto"
    split: tuple[float, ...] | None = None
    seed: int = 0
    strict: bool = False
    max_duration: float = float(CHUNK_SECONDS)
    drop_long: bool = False
    keep_mojibake: bool = False  # keep rows whose transcript looks garbled (default: skip and report them)
    encoding: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    path_style: str = "auto"  # auto (relative under out_dir, else absolute) | relative | absolute
    progress: bool = True
    text_case: str = "keep"  # keep | lower | upper
    # corpus layouts (data/convert/corpora): streamed, sharded, resumable
    subsets: tuple[str, ...] | None = None  # WenetSpeech/GigaSpeech subsets, Common Voice splits
    giga_text: str = "punct"  # GigaSpeech punctuation tags: punct | strip | keep
    workers: int = 0  # header probes in parallel (0: one per CPU core)
    chunk_rows: int = 20000  # rows per shard and per resume step
    restart: bool = False  # ignore the state of an interrupted run and start over
    task: str = "asr"  # asr | tts (the clip becomes the assistant's spoken answer; data/convert/speech_tasks.py)


@dataclass
class ConvertResult:
    name: str
    input: str
    out_dir: str
    format: str
    encoding: str | None
    lang: str
    instruction: str
    outputs: dict[str, str]  # dataset name → file written
    counts: dict[str, int]  # dataset name → rows written
    rows_read: int
    issues: list[Issue]
    durations: DurationStats
    dataset_info_path: str
    report_path: str
    notes: list[str] = field(default_factory=list)

    @property
    def rows_written(self) -> int:
        return sum(self.counts.values())

    @property
    def rows_skipped(self) -> int:
        return self.rows_read - self.rows_written

    def to_report(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "format": self.format,
            "encoding": self.encoding,
            "name": self.name,
            "lang": self.lang,
            "instruction": self.instruction,
            "outputs": {k: {"file": os.path.basename(v), "rows": self.counts[k]} for k, v in self.outputs.items()},
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_skipped": self.rows_skipped,
            "skipped_by_reason": count_by_reason(self.issues, ERROR),
            "warnings_by_reason": count_by_reason(self.issues, "warning"),
            "durations": asdict(self.durations),
            "notes": self.notes,
            "issues": [issue.to_dict() for issue in self.issues],
        }


@dataclass
class _Row:
    uid: str
    audio: str
    text: str
    instruction: str | None
    info: AudioInfo
    garbled: bool = False  # kept by --keep-mojibake: left out of the language detection


def _check_record(
    record: SourceRecord, root: str, opts: ConvertOptions, seen: dict[str, set[str]]
) -> tuple[_Row | None, list[Issue]]:
    uid = record.uid or f"{os.path.splitext(record.file)[0]}-{record.line}"
    bad_name = undecodable(record)
    if bad_name is not None:  # nothing about it can be written to the dataset; the issue shows the raw bytes
        return None, [printable_issue(Issue(bad_name[0], record.file, record.line, bad_name[1], uid))]
    found: list[tuple[str, str]] = [("duplicate_id", f"id {uid!r} appears again")] if uid in seen["ids"] else []
    seen["ids"].add(uid)
    found += check_text(record.text)
    path = resolve_audio(str(record.audio), root, record.by_id) if record.audio else ""
    info = None
    if not path:
        found.append(("missing_audio", "no audio path in this row"))
    else:
        info, audio_issues = check_audio(path, str(record.audio), opts.max_duration)
        found += audio_issues + (rate_problem(record.text or "", info.duration) if info is not None else [])
        if info is not None and path in seen["audio"]:
            found.append(("duplicate_audio", f"audio {record.audio} is also used by an earlier row"))
        seen["audio"].add(path)
    renamed = {"long_audio": "long_audio_dropped"} if opts.drop_long else {}
    renamed.update({"mojibake": "mojibake_kept"} if opts.keep_mojibake else {})
    issues = [Issue(renamed.get(reason, reason), record.file, record.line, msg, uid) for reason, msg in found]
    if info is None or any(issue.severity == ERROR for issue in issues):
        return None, issues
    garbled = any(issue.reason == "mojibake_kept" for issue in issues)
    text = apply_case(clean_transcript(record.text or ""), opts.text_case)
    return _Row(uid, path, text, record.instruction, info, garbled), issues


def _check_all(records: list, root: str, opts: ConvertOptions) -> tuple[list[_Row], list[Issue]]:
    rows: list[_Row] = []
    issues: list[Issue] = []
    seen: dict[str, set[str]] = {"ids": set(), "audio": set()}
    for item in tqdm(records, desc="checking audio", unit="row", disable=None if opts.progress else True):
        row, found = (
            (None, [printable_issue(item)]) if isinstance(item, Issue) else _check_record(item, root, opts, seen)
        )
        for issue in found:
            if opts.strict and issue.severity == ERROR:
                raise DataError(f"{issue.one_line()} {STRICT_HINT}")
        issues += found
        if row is not None:
            rows.append(row)
    return rows, issues


def _sharegpt(row: _Row, instruction: str, out_dir: str, style: str, task: str = "asr") -> dict[str, Any]:
    """One LLaMA-Factory row; ``instruction`` is used when the row brought none of its own."""
    if task == "tts":
        return tts_row(row.uid, row.text, output_path(row.audio, out_dir, style), instruction)
    prompt = " ".join((row.instruction or instruction).replace("<audio>", " ").split())
    return {
        "id": row.uid,
        "messages": [
            {"role": "user", "content": prompt + "<audio>"},
            {"role": "assistant", "content": row.text},
        ],
        "audios": [output_path(row.audio, out_dir, style)],
    }


def clean_transcript(text: str) -> str:
    """Collapse whitespace runs (newlines, U+3000) to one space, drop spaces between CJK characters and zero-width
    characters (``transcripts.strip_invisible``)."""
    return drop_spaceless_gaps(" ".join(strip_invisible(text).split()))


def apply_case(text: str, mode: str) -> str:
    return text.lower() if mode == "lower" else text.upper() if mode == "upper" else text


def default_name(input_path: str) -> str:
    base = os.path.basename(os.path.normpath(input_path))
    stem = base if os.path.isdir(input_path) else os.path.splitext(base)[0]
    return re.sub(r"[^\w.-]+", "_", stem).strip("._") or "asr"


def corpus_layout(input_path: str, fmt: str) -> tuple[Layout, str] | None:
    """The public-corpus layout of ``input_path`` (``fmt`` = auto or a layout name), or None for the table / JSON /
    Kaldi / folder formats of ``sources``; DataError for a directory that is nothing known."""
    if fmt == "kaldi" and os.path.isfile(os.path.join(input_path, "segments")):
        fmt = "kaldi-segments"
    if fmt in BY_NAME:
        return named_layout(fmt, input_path)
    if fmt != "auto" or not os.path.exists(input_path):
        return None
    is_manifest = os.path.basename(input_path) in ("WenetSpeech.json", "GigaSpeech.json")
    if not (os.path.isdir(input_path) or is_manifest or input_path.endswith(".parquet")):
        return None
    found = detect_layout(input_path)
    if found is None and os.path.isdir(input_path) and not has_known_files(input_path):
        raise unknown_layout(input_path)
    return found


def convert(input_path: str, out_dir: str, options: ConvertOptions | None = None) -> ConvertResult | CorpusResult:
    """Convert ``input_path`` into a LLaMA-Factory dataset under ``out_dir``; see the module docstring."""
    opts = options or ConvertOptions()
    if opts.split is not None:
        check_split(tuple(opts.split))
    out_dir = ensure_writable_dir(out_dir)
    input_path = os.path.abspath(input_path)  # readers then give absolute audio paths, whatever the cwd
    layout = corpus_layout(input_path, opts.format)
    if layout is not None:
        if opts.split is not None:
            raise DataError(f"--split: {layout[0].name} corpora keep their own splits/subsets; drop --split")
        return convert_corpus(input_path, out_dir, layout[0], layout[1], opts)
    source = read_source(input_path, opts.format, ReadOptions(opts.encoding, dict(opts.columns)))
    root = os.path.abspath(opts.root or (input_path if os.path.isdir(input_path) else os.path.dirname(input_path)))
    rows, issues = _check_all(source.records, root, opts)
    lang = opts.lang if opts.lang != "auto" else detect_language(row.text for row in rows if not row.garbled)
    instruction = opts.instruction or (TTS_INSTRUCTION if opts.task == "tts" else DEFAULT_INSTRUCTION)[lang]
    name = opts.name or default_name(input_path)
    parts = assign_splits(len(rows), opts.split, opts.seed) if opts.split else [list(range(len(rows)))]
    names = [f"{name}_{s}" for s in SPLIT_NAMES[: len(parts)]] if opts.split else [name]
    result = ConvertResult(
        name=name,
        input=printable(input_path),  # absolute already; a non-UTF-8 folder name is shown escaped
        out_dir=out_dir,
        format=source.format,
        encoding=source.encoding,
        lang=lang,
        instruction=instruction,
        outputs={},
        counts={},
        rows_read=len(source.records),
        issues=issues,
        durations=DurationStats.from_infos([row.info for row in rows]),
        dataset_info_path=os.path.join(out_dir, DATASET_INFO),
        report_path=os.path.join(out_dir, f"{name}.report.json"),
        notes=[printable(note) for note in source.notes],
    )
    if opts.instruction or opts.task == "tts":  # an explicit (or the TTS) instruction replaces the rows' own
        rows = [dataclasses.replace(row, instruction=None) for row in rows]
    for ds_name, indices in zip(names, parts):
        if not indices:
            if rows:  # no rows at all is the caller's "no usable rows" error, not a --split problem
                result.notes.append(f"{ds_name}: 0 rows, not written (too few rows for --split)")
            continue
        path = os.path.join(out_dir, f"{ds_name}.json")
        write_json(path, [_sharegpt(rows[i], instruction, out_dir, opts.path_style, opts.task) for i in indices])
        result.outputs[ds_name], result.counts[ds_name] = path, len(indices)
    if result.outputs:
        result.notes += replace_outputs(out_dir, result.outputs, previous_outputs(result.report_path), name)
    write_json(result.report_path, result.to_report())
    return result
