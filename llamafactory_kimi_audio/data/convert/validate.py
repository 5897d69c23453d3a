"""Row-level checks of a converted ASR dataset: every problem becomes an ``Issue`` with a reason code.

Errors make the converter skip the row (or stop under ``--strict``); warnings keep it. ``REASONS`` is the single
table of reason codes, their severity and the fix shown to the user.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field

from ...constants import CHUNK_SECONDS, SAMPLE_RATE
from ...fileio.audio import AudioInfo, probe
from ...fileio.audio_errors import (
    NONFINITE_FIX,
    TRUNCATED_FIX,
    AudioError,
    NonFiniteAudioError,
    SpanError,
    TruncatedAudioError,
)
from ...fileio.audio_silence import SILENT_DBFS, SILENT_PEAK
from ...fileio.audio_spans import split_media
from ...fileio.audio_verify import shown_name, verify_samples
from ...fileio.textio import mojibake_hint
from .transcripts import transcript_problems

ERROR = "error"
WARNING = "warning"
# Shortest clip kept: LLaMA-Factory's own stand-in audio is 0.1 s; 0.1 s is 2 frames of 12.5 Hz audio tokens (one
# frame is 80 ms), and no word is shorter. A 0.6 ms clip would still get a token and a Whisper row of padding.
MIN_CLIP_SECONDS = 0.1

# reason → (severity, fix appended to the message)
REASONS: dict[str, tuple[str, str]] = {
    "malformed_record": (ERROR, "fix the record or delete it"),
    "audio_count": (ERROR, "an ASR row needs exactly one audio; split multi-audio rows or fix the <audio> tags"),
    "missing_audio": (ERROR, "fix the path or pass --root DIR (relative paths resolve against it)"),
    "unreadable_audio": (ERROR, "re-encode it as 16 kHz mono WAV/FLAC, e.g. `sox in.x -r 16000 -c 1 out.wav`"),
    "empty_audio": (ERROR, "replace the file or delete the row"),
    "truncated_audio": (ERROR, TRUNCATED_FIX),
    "non_finite_audio": (ERROR, NONFINITE_FIX),
    "short_audio": (ERROR, f"clips under {MIN_CLIP_SECONDS:g} s hold no speech; delete the row or fix the file"),
    "empty_text": (ERROR, "fill in the transcript or delete the row"),
    "duplicate_id": (ERROR, "ids must be unique; rename one of them (the first occurrence was kept)"),
    "missing_transcript": (ERROR, "add a transcript for this utterance or delete the audio"),
    "undecodable_name": (ERROR, "rename it to UTF-8, e.g. `convmv -f GBK -t UTF-8 --notest -r DIR`"),
    "kaldi_unmatched": (ERROR, "add the utterance to wav.scp or remove it from text"),
    "kaldi_pipe": (ERROR, "run the command once, store the output as a .wav file and list that file in wav.scp"),
    "long_audio_dropped": (ERROR, "skipped because of --drop-long; raise --max-duration to keep such clips"),
    "long_audio": (
        WARNING,
        f"kept: Kimi-Audio encodes audio in {CHUNK_SECONDS} s chunks; use --drop-long to skip such clips",
    ),
    "sample_rate": (WARNING, "kept: audio is resampled to 16 kHz at train time"),
    "multichannel": (WARNING, "kept: channels are averaged to mono at train time"),
    "mojibake": (ERROR, "skipped (pass --keep-mojibake to keep such rows)"),
    "mojibake_kept": (WARNING, "kept because of --keep-mojibake, but the transcript is probably garbled"),
    "duplicate_audio": (WARNING, "kept: the same file is used by several rows"),
    "silent_audio": (
        WARNING,
        "kept, but the model would learn to write text for silence; fix or replace the audio, or delete the row "
        "(checked here for the clips convert decodes; precompute and training check every clip)",
    ),
    # segments (PATH#t=BEGIN,END rows) and corpus layouts
    "negative_span": (ERROR, "fix the segment's begin/end (seconds from the start of the recording)"),
    "reversed_span": (ERROR, "swap or fix the segment's begin and end"),
    "empty_span": (ERROR, "fix the segment's end or delete the segment"),
    "segment_past_end": (ERROR, "fix the segment's end, or check that the recording is complete"),
    "segment_end_clamped": (WARNING, "kept: the end was cut at the end of the recording (≤ 0.5 s past it)"),
    "short_segment": (ERROR, f"segments under {MIN_CLIP_SECONDS:g} s hold no speech; fix the segment's times"),
    "overlapping_segments": (WARNING, "kept: check the segment times if the overlap is not intended"),
    "kaldi_archive": (ERROR, "dump the audio to files (e.g. wav-copy) and list the files in wav.scp"),
    "multichannel_segment": (ERROR, "split the channels into mono files and list one recording per channel"),
    # text rows (tables.py, fileio/text_encodings.py, transcripts.py)
    "undecodable_text": (ERROR, "fix the bytes of that line or re-save the file as UTF-8 (or pass --encoding)"),
    "repeated_header": (ERROR, "delete that line (two exports pasted into one file?); the rows around it were read"),
    "extra_cells": (ERROR, 'put that cell in double quotes ("one, two") or remove the extra delimiters'),
    "unterminated_quote": (ERROR, 'close the quote, or write "" for a literal quote; the rows after it were read'),
    "placeholder_in_text": (ERROR, "the transcript must not hold <audio> or Kimi-Audio special tokens; remove them"),
    "control_characters": (ERROR, "the text is damaged or binary; fix the transcript or delete the row"),
    "long_transcript": (
        WARNING,
        "kept, but probably the wrong transcript or audio: training stops on it if cutoff_len cuts its label",
    ),
    "nonfinite_span": (ERROR, "fix the segment's begin/end: they must be finite numbers of seconds"),
    "garbage_utterance": ("skip", "skipped: not speech (GigaSpeech <SIL>/<MUSIC>/<NOISE>/<OTHER>), as the recipes do"),
}


@dataclass(frozen=True)
class Issue:
    """One problem with one row (``line`` is the CSV row as Excel numbers it, or the 1-based line/item number)."""

    reason: str
    file: str
    line: int | None
    message: str
    uid: str | None = None

    @property
    def severity(self) -> str:  # error (row skipped; --strict stops), warning (kept) or skip (skipped by design)
        return REASONS.get(self.reason, (ERROR, ""))[0]

    @property
    def where(self) -> str:
        return f"{self.file} {self.line_label} {self.line}" if self.line else self.file

    @property
    def line_label(self) -> str:
        return "row" if self.file.lower().endswith((".csv", ".tsv")) else "line"

    def one_line(self) -> str:
        fix = REASONS.get(self.reason, (ERROR, ""))[1]
        return f"{self.where}: {self.message}" + (f"; {fix}" if fix else "")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "severity": self.severity}


@dataclass
class DurationStats:
    """Durations (seconds) of the accepted clips."""

    count: int = 0
    total: float = 0.0
    min: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    median: float = 0.0
    sample_rates: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_infos(cls, infos: list[AudioInfo]) -> DurationStats:
        if not infos:
            return cls()
        durations = [info.duration for info in infos]
        rates = Counter(str(info.sample_rate) for info in infos)
        return cls(
            count=len(durations),
            total=round(sum(durations), 3),
            min=round(min(durations), 3),
            max=round(max(durations), 3),
            mean=round(statistics.fmean(durations), 3),
            median=round(statistics.median(durations), 3),
            sample_rates=dict(sorted(rates.items())),
        )


def check_text(text: str | None) -> list[tuple[str, str]]:
    """(reason, message) pairs for a transcript."""
    if text is None or not text.strip():
        return [("empty_text", "transcript is empty" if not text else "transcript is only whitespace")]
    hint = mojibake_hint(text)
    return [("mojibake", f"transcript {text[:20]!r} {hint}")] if hint else transcript_problems(text)


def check_audio(path: str, shown: str, max_duration: float) -> tuple[AudioInfo | None, list[tuple[str, str]]]:
    """Probe ``path`` (``shown`` is the path as written in the source); returns the header and (reason, message)."""
    if not os.path.isfile(split_media(path)[0]):
        detail = "" if shown == path else f" (resolved to {path})"
        return None, [("missing_audio", f"audio file not found: {shown}{detail}")]
    try:
        info = probe(path)  # a PATH#t=BEGIN,END segment is checked against its file (span_frames)
    except SpanError as err:
        return None, [(err.reason, str(err).removeprefix(f"{path}: ").split(";")[0] + f" ({shown})")]
    except TruncatedAudioError as err:
        detail = str(err).removeprefix(f"{path}: truncated audio: the WAV header").split(";")[0]
        return None, [("truncated_audio", f"audio {shown} is truncated: its header{detail}")]
    except AudioError as err:
        detail = str(err).removeprefix(f"{path}: ").split(";")[0].removeprefix("unreadable audio ")
        return None, [("unreadable_audio", f"cannot read audio {shown} {detail}")]
    if info.frames == 0:
        return None, [("empty_audio", f"audio {shown} is empty (0 samples)")]
    if info.duration < MIN_CLIP_SECONDS:
        return None, [("short_audio", f"audio {shown} is {info.duration * 1000:.1f} ms long")]
    problem, peak = _sample_problem(info, shown)
    if problem is not None:
        return None, [problem]
    found: list[tuple[str, str]] = []
    if peak is not None and peak < SILENT_PEAK:
        found.append(("silent_audio", f"audio {shown} is digitally silent (peak below {SILENT_DBFS} dBFS)"))
    if info.duration > max_duration:
        found.append(("long_audio", f"audio {shown} is {info.duration:.1f} s long (> {max_duration:g} s)"))
    if info.sample_rate != SAMPLE_RATE:
        found.append(("sample_rate", f"audio {shown} is {info.sample_rate} Hz, not {SAMPLE_RATE} Hz"))
    if info.channels > 1:
        found.append(("multichannel", f"audio {shown} has {info.channels} channels"))
    return info, found


def _sample_problem(info: AudioInfo, shown: str) -> tuple[tuple[str, str] | None, float | None]:
    """Decode what the header cannot vouch for (``audio_verify``): a cut compressed file, NaN/inf samples; with the
    decoded peak (None: a PCM WAV, not decoded)."""
    try:
        return None, verify_samples(info)
    except AudioError as err:
        reason = "non_finite_audio" if isinstance(err, NonFiniteAudioError) else "truncated_audio"
        detail = str(err).removeprefix(f"{shown_name(info)}: ").split("; ")[0]
        return (reason, f"audio {shown}: {detail}"), None


def summarize(issues: list[Issue], examples: int = 3) -> list[str]:
    """Human-readable lines: per reason, the count and the first few examples."""
    by_reason: dict[str, list[Issue]] = {}
    for issue in issues:
        by_reason.setdefault(issue.reason, []).append(issue)
    lines = []
    for reason, group in sorted(by_reason.items(), key=lambda item: (item[1][0].severity != ERROR, item[0])):
        verdict = "skipped" if group[0].severity == ERROR else "warning"
        lines.append(f"{verdict}: {len(group)} × {reason}{_places(group)}")
        lines.extend(f"    {issue.one_line()}" for issue in group[:examples])
        if len(group) > examples:
            lines.append(f"    … and {len(group) - examples} more (see the report)")
    return lines


def _places(group: list[Issue], shown: int = 20) -> str:
    """`` (rows.csv rows 2, 5, 9)``: where the issues of one reason are, so they can be fixed without the report."""
    by_file: dict[str, list[str]] = {}
    for issue in group:
        if issue.line:
            by_file.setdefault(issue.file, []).append(str(issue.line))
    parts = []
    for file, lines in by_file.items():
        label = Issue("", file, None, "").line_label
        more = f" … (+{len(lines) - shown})" if len(lines) > shown else ""
        parts.append(f"{file} {label}{'s' if len(lines) > 1 else ''} {', '.join(lines[:shown])}{more}")
    return f" ({'; '.join(parts)})" if parts else ""


def count_by_reason(issues: list[Issue], severity: str) -> dict[str, int]:
    return dict(sorted(Counter(i.reason for i in issues if i.severity == severity).items()))
