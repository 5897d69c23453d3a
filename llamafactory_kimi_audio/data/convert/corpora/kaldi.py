"""Kaldi data directories with a ``segments`` file (``utt rec begin end [channel]``, seconds; end -1 = to EOF).

``wav.scp`` maps recordings to files. A piped entry (``cmd ... |``) is refused and never executed; archive offsets
(``x.ark:123``) are refused. Relative paths resolve against ``--root``, else the data directory, else its
grandparent (the recipe directory: Kaldi paths are relative to ``egs/<corpus>/s5``). ``text`` is held in memory
(one dict entry per utterance); ``segments`` is streamed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator

from ..records import SourceRecord
from ..validate import Issue
from .base import Corpus, CorpusOptions, Layout, Row, SubsetIssue, in_subset, key_value_lines

_ARCHIVE = re.compile(r"^(ark|scp):|\.ark:\d+$")


def detect_kaldi_segments(path: str) -> str | None:
    files = ("wav.scp", "text", "segments")
    return path if all(os.path.isfile(os.path.join(path, f)) for f in files) else None


def _bases(path: str, opts: CorpusOptions) -> list[str]:
    path = os.path.abspath(path)
    return [opts.root] if opts.root else [path, os.path.dirname(os.path.dirname(path))]


def _recordings(path: str, opts: CorpusOptions, notes: list[str]) -> dict[str, str | Issue]:
    """recording → absolute path, or the Issue that refuses it (pipe, archive)."""
    found: dict[str, str | Issue] = {}
    bases, used = _bases(path, opts), set()
    for line, rec, value in key_value_lines(os.path.join(path, "wav.scp"), opts.encoding):
        if value.endswith("|"):
            message = f"recording {rec} is a pipe command ({value[:60]}); it was NOT executed"
            found[rec] = Issue("kaldi_pipe", "wav.scp", line, message, rec)
        elif _ARCHIVE.search(value):
            found[rec] = Issue("kaldi_archive", "wav.scp", line, f"recording {rec} is an archive entry ({value})", rec)
        elif os.path.isabs(value):
            found[rec] = value
        else:
            base = next((b for b in bases if os.path.exists(os.path.join(b, value))), bases[0])
            used.add(base)
            found[rec] = os.path.join(base, value)
    notes += [f"relative wav.scp paths resolved against {base}" for base in sorted(used)]
    return found


def read_kaldi_segments(path: str, opts: CorpusOptions) -> Corpus:
    corpus = Corpus("kaldi-segments", path, iter(()))
    corpus.rows = _rows(path, opts, corpus.notes)
    return corpus


def _rows(path: str, opts: CorpusOptions, notes: list[str]) -> Iterator[Row]:
    recordings = _recordings(path, opts, notes)
    texts = {utt: (line, text) for line, utt, text in key_value_lines(os.path.join(path, "text"), opts.encoding)}
    subset = os.path.basename(os.path.normpath(path))
    used: set[str] = set()
    for line, utt, rest in key_value_lines(os.path.join(path, "segments"), opts.encoding):
        used.add(utt)
        yield in_subset(_segment(utt, rest.split(), line, recordings, texts, subset), subset)
    orphans = [utt for utt in texts if utt not in used]
    if orphans:
        examples = ", ".join(orphans[:3])
        message = f"{len(orphans)} utterances of text have no line in segments (e.g. {examples})"
        yield SubsetIssue("kaldi_unmatched", "text", texts[orphans[0]][0], message, orphans[0], subset=subset)


def _segment(utt: str, fields: list[str], line: int, recordings: dict, texts: dict, subset: str) -> Row:
    if len(fields) not in (3, 4):
        return Issue("malformed_record", "segments", line, "expected: utt recording begin end [channel]", utt)
    rec = fields[0]
    try:
        begin, end = float(fields[1]), float(fields[2])
    except ValueError:
        return Issue(
            "malformed_record", "segments", line, f"begin/end {fields[1]!r} {fields[2]!r} are not numbers", utt
        )
    if not (math.isfinite(begin) and math.isfinite(end)):
        message = f"utterance {utt}: begin/end {fields[1]} {fields[2]} are not finite numbers of seconds"
        return Issue("nonfinite_span", "segments", line, message, utt)
    target = recordings.get(rec)
    if target is None:
        return Issue("kaldi_unmatched", "segments", line, f"utterance {utt}: recording {rec} is not in wav.scp", utt)
    if isinstance(target, Issue):
        return Issue(target.reason, "segments", line, f"utterance {utt}: {target.message}", utt)
    if utt not in texts:
        return Issue("kaldi_unmatched", "segments", line, f"utterance {utt} has no line in text", utt)
    if len(fields) == 4 and fields[3] != "0":
        return Issue("multichannel_segment", "segments", line, f"utterance {utt} reads channel {fields[3]}", utt)
    end_value = None if end == -1 else end
    return SourceRecord(
        "segments", line, utt, target, texts[utt][1], begin=begin, end=end_value, subset=subset, recording=rec
    )


KALDI_SEGMENTS = Layout(
    "kaldi-segments",
    "Kaldi with segments: wav.scp + text + segments",
    detect_kaldi_segments,
    read_kaldi_segments,
)
