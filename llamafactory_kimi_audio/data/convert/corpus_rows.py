"""Checking corpus rows against their audio headers, chunk by chunk: probes run in parallel (one per recording,
never one per segment), spans are validated with ``audio_spans.span_frames``, and kept rows become LLaMA-Factory
sharegpt rows whose ``audios`` entry is ``PATH`` or ``PATH#t=BEGIN,END``."""

from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from ...fileio.audio import AudioInfo
from ...fileio.audio_errors import SpanError
from ...fileio.audio_spans import media_value, span_frames
from ...text import drop_spaceless_gaps
from .names import printable_issue, undecodable
from .records import SourceRecord
from .transcripts import rate_problem, strip_invisible
from .validate import ERROR, Issue, check_audio, check_text

MIN_SEGMENT_SECONDS = 0.1
PROBE_BATCH = 256


@dataclass(frozen=True)
class RowRules:
    max_duration: float
    drop_long: bool
    keep_mojibake: bool
    text_case: str  # keep | lower | upper


@dataclass
class Checked:
    """A kept row: where it goes and what is written."""

    subset: str
    uid: str
    audio: str  # absolute path, with #t=BEGIN,END for a segment
    text: str
    instruction: str | None
    seconds: float
    sample_rate: int


def probe_batch(paths: list[str]) -> list[AudioInfo | tuple[str, str]]:
    """Worker: the header of each file, or ``(reason, message)`` when it cannot be used."""
    out: list[AudioInfo | tuple[str, str]] = []
    for path in paths:
        info, found = check_audio(path, path, float("inf"))
        out.append(info if info is not None else found[0])
    return out


class ProbeResults:
    """Headers of one chunk's files, being probed by the pool (``get`` waits), or probed here on ``get``."""

    def __init__(self, paths: list[str], pool: Executor | None) -> None:
        unique = list(dict.fromkeys(paths))
        self.batches = [unique[i : i + PROBE_BATCH] for i in range(0, len(unique), PROBE_BATCH)]
        self.futures = [pool.submit(probe_batch, batch) for batch in self.batches] if pool is not None else None

    def get(self) -> dict[str, AudioInfo | tuple[str, str]]:
        results = [f.result() for f in self.futures] if self.futures is not None else map(probe_batch, self.batches)
        return {path: found for batch, out in zip(self.batches, results) for path, found in zip(batch, out)}


def start_probes(paths: list[str], pool: Executor | None) -> ProbeResults:
    return ProbeResults(paths, pool)


class RowChecker:
    """Turns records into ``Checked`` rows or issues; remembers the last segment for the overlap check."""

    def __init__(self, rules: RowRules) -> None:
        self.rules = rules
        self.last: tuple[str, float, str] | None = None  # (recording path, end s, uid) of the last kept segment

    def check(
        self, record: SourceRecord, probed: AudioInfo | tuple[str, str] | None
    ) -> tuple[Checked | None, list[Issue]]:
        uid = record.uid or f"{record.file}-{record.line}"
        bad_name = undecodable(record)
        if bad_name is not None:  # nothing about it can be written to the dataset; the issue shows the raw bytes
            return None, [printable_issue(self._issue(bad_name[0], record, bad_name[1], uid))]
        found = check_text(record.text)
        info = probed if isinstance(probed, AudioInfo) else None
        if info is None:
            found.append(probed or ("missing_audio", "no audio path in this row"))
        seconds, audio = None, None
        if info is not None and record.begin is not None:
            span = self._span(record, info, uid, found)
            if span is not None:
                seconds, audio = span[1] - span[0], media_value(info.path, span[0], span[1])
        elif info is not None:
            seconds, audio = info.duration, info.path
        found += rate_problem(record.text or "", seconds) if seconds is not None else []
        if seconds is not None and seconds > self.rules.max_duration:
            reason = "long_audio_dropped" if self.rules.drop_long else "long_audio"
            found.append((reason, f"{seconds:.1f} s long (> {self.rules.max_duration:g} s)"))
        issues = [self._issue(reason, record, message, uid) for reason, message in found]
        if info is None or audio is None or seconds is None or any(i.severity == ERROR for i in issues):
            return None, issues
        text = _case(drop_spaceless_gaps(" ".join(strip_invisible(record.text or "").split())), self.rules.text_case)
        return Checked(
            record.subset or "train", uid, audio, text, record.instruction, seconds, info.sample_rate
        ), issues

    def _span(self, record: SourceRecord, info: AudioInfo, uid: str, found: list) -> tuple[float, float] | None:
        begin = float(record.begin or 0.0)
        end = float(record.end) if record.end is not None else info.duration
        try:
            start, stop, clamped = span_frames(info.sample_rate, info.frames, begin, end)
        except SpanError as err:
            found.append((err.reason, f"segment of {os.path.basename(info.path)}: {err}"))
            return None
        rate = info.sample_rate
        b, e = start / rate, stop / rate
        if clamped:
            found.append(("segment_end_clamped", f"end {end} s cut to the end of the recording ({e:.3f} s)"))
        if e - b < MIN_SEGMENT_SECONDS:
            found.append(("short_segment", f"segment is {e - b:.3f} s long"))
        if self.last is not None and self.last[0] == info.path and b < self.last[1]:
            found.append(
                ("overlapping_segments", f"[{b}, {e}] s overlaps segment {self.last[2]} (ends {self.last[1]} s)")
            )
        if not any(_is_error(reason) for reason, _ in found):
            self.last = (info.path, max(e, self.last[1] if self.last and self.last[0] == info.path else e), uid)
        return round(b, 6), round(e, 6)

    def _issue(self, reason: str, record: SourceRecord, message: str, uid: str) -> Issue:
        renamed = {"mojibake": "mojibake_kept"} if self.rules.keep_mojibake else {}
        return Issue(renamed.get(reason, reason), record.file, record.line, f"{uid}: {message}", uid)


def _is_error(reason: str) -> bool:
    return Issue(reason, "", None, "").severity == ERROR


def _case(text: str, mode: str) -> str:
    return text.lower() if mode == "lower" else text.upper() if mode == "upper" else text


def sharegpt_row(row: Checked, instruction: str, audio_path: str) -> dict[str, Any]:
    prompt = " ".join((row.instruction or instruction).replace("<audio>", " ").split())
    return {
        "id": row.uid,
        "messages": [{"role": "user", "content": prompt + "<audio>"}, {"role": "assistant", "content": row.text}],
        "audios": [audio_path],
    }
