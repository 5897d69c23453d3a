"""Speech-output datasets (issue 18): an ``<audio>`` in an *assistant* turn is the audio the model learns to speak.

* ``--task tts``: every ASR row becomes ``user: INSTRUCTION + transcript`` → ``assistant: transcript<audio>``
  (the row's clip is the target), through the ASR converter's reading and checks (``convert.py``).
* ``--task spoken-reply``: a table of (question audio or question text, answer text, answer audio) becomes
  ``user: [question text][<audio>]`` → ``assistant: answer<audio>``; ``audios`` = [question audio,] answer audio.

Both write LLaMA-Factory sharegpt rows (``messages`` + ``audios``; the dataset_info entry is the ASR one) and a
report; bad rows are skipped and reported as in ``convert``, or stop the run with ``strict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...fileio.dataset_info import DATASET_INFO
from ...fileio.textio import DataError, ensure_writable_dir, write_json
from .dataset_files import STRICT_HINT, dataset_info_entry, merge_dataset_info, output_path, resolve_audio
from .records import iter_json_records
from .tables import iter_records, read_table
from .validate import ERROR, Issue, check_audio, check_text

TASKS = ("asr", "tts", "spoken-reply")
TTS_INSTRUCTION = {"zh": "请用语音朗读下面的文字：", "en": "Read the following text aloud:"}
SPOKEN_REPLY_COLUMNS = ("id", "question", "question_audio", "answer", "answer_audio")


def tts_row(uid: str, text: str, audio: str, instruction: str) -> dict[str, Any]:
    """One text → speech row: the transcript is both the user's text and the spoken answer's text."""
    return {
        "id": uid,
        "messages": [
            {"role": "user", "content": f"{instruction} {text}".strip()},
            {"role": "assistant", "content": f"{text}<audio>"},
        ],
        "audios": [audio],
    }


def spoken_reply_row(uid: str, question: str, question_audio: str | None, answer: str, answer_audio: str) -> dict:
    """One spoken-reply row; the question is audio, text, or text followed by audio."""
    user = " ".join(question.replace("<audio>", " ").split()) + ("<audio>" if question_audio else "")
    return {
        "id": uid,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": f"{answer}<audio>"}],
        "audios": [*([question_audio] if question_audio else []), answer_audio],
    }


@dataclass
class SpokenReplyResult:
    output: str
    rows_read: int
    rows_written: int
    issues: list[Issue]
    dataset_info_path: str
    report_path: str


def read_spoken_reply_table(path: str, encoding: str = "auto") -> list[tuple[int, dict[str, Any]] | Issue]:
    """``(line, row)`` pairs of a CSV / TSV / JSON / JSONL table with the ``SPOKEN_REPLY_COLUMNS``; a row that cannot
    be read (bad bytes, a quote left open: ``tables.py``) is an Issue in its place."""
    lower = path.lower()
    if lower.endswith((".json", ".jsonl")):
        records, _ = iter_json_records(path, encoding)
        return [(line, row if isinstance(row, dict) else {}) for line, row in records if not isinstance(row, Issue)]
    name = os.path.basename(path)
    table = read_table(path, name, encoding, "\t" if lower.endswith(".tsv") else ",")
    missing = {"answer", "answer_audio"} - set(table.headers)
    if missing:
        raise DataError(
            f"{path}: no {sorted(missing)} column among the headers {table.headers}; a spoken-reply table needs "
            f"answer, answer_audio and question and/or question_audio (optional: id)"
        )
    return list(iter_records(table))


def _check_row(line: int, row: dict, root: str, name: str, max_duration: float) -> tuple[dict | None, list[Issue]]:
    uid = str(row.get("id") or f"{os.path.splitext(name)[0]}-{line}")
    found = check_text(row.get("answer"))
    question, question_audio = str(row.get("question") or ""), row.get("question_audio") or None
    if not question.strip() and not question_audio:
        found.append(("missing_question", "neither question text nor question_audio"))
    paths = {}
    for column in ("question_audio", "answer_audio"):
        if column == "answer_audio" and not row.get(column):
            found.append(("missing_audio", "no answer_audio in this row"))
        elif row.get(column):
            paths[column] = resolve_audio(str(row[column]), root)
            found += check_audio(paths[column], str(row[column]), max_duration)[1]
    issues = [Issue(reason, name, line, message, uid) for reason, message in found]
    if any(issue.severity == ERROR for issue in issues):
        return None, issues
    return {"uid": uid, "question": question, "answer": " ".join(str(row["answer"]).split()), **paths}, issues


def convert_spoken_reply(
    input_path: str,
    out_dir: str,
    name: str,
    root: str | None = None,
    strict: bool = False,
    max_duration: float = 30.0,
    path_style: str = "auto",
    encoding: str = "auto",
) -> SpokenReplyResult:
    """Convert a spoken-reply table into ``out_dir/NAME.json`` + its dataset_info entry + ``NAME.report.json``."""
    out_dir = ensure_writable_dir(out_dir)
    root = os.path.abspath(root or os.path.dirname(input_path))
    table = read_spoken_reply_table(input_path, encoding)
    name_of = os.path.basename(input_path)
    rows, issues = [], []
    for item in table:
        row, found = (None, [item]) if isinstance(item, Issue) else _check_row(*item, root, name_of, max_duration)
        if strict and any(issue.severity == ERROR for issue in found):
            raise DataError(f"{next(i for i in found if i.severity == ERROR).one_line()} {STRICT_HINT}")
        issues += found
        if row is not None:
            question_audio = row.get("question_audio")
            shown = output_path(question_audio, out_dir, path_style) if question_audio else None
            answer_audio = output_path(row["answer_audio"], out_dir, path_style)
            rows.append(spoken_reply_row(row["uid"], row["question"], shown, row["answer"], answer_audio))
    output = os.path.join(out_dir, f"{name}.json")
    report = os.path.join(out_dir, f"{name}.report.json")
    if rows:
        write_json(output, rows)
        merge_dataset_info(out_dir, {name: dataset_info_entry(os.path.basename(output))})
    summary = {"input": os.path.abspath(input_path), "task": "spoken-reply", "rows_read": len(table)}
    write_json(report, {**summary, "rows_written": len(rows), "issues": [issue.to_dict() for issue in issues]})
    return SpokenReplyResult(output, len(table), len(rows), issues, os.path.join(out_dir, DATASET_INFO), report)
