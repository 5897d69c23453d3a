"""WenetSpeech and GigaSpeech: one JSON manifest of long recordings (``audios[].path``) cut into ``segments``.

Each segment has ``sid``, ``begin_time``/``end_time`` (s), ``subsets`` and the text (``text`` in WenetSpeech,
``text_tn`` in GigaSpeech, with ``<COMMA>``-style punctuation tags and garbage utterances such as ``<MUSIC>``).
Tags are ``L`` (WenetSpeech) or ``{XL}`` (GigaSpeech); braces are stripped. A segment is written once, into the
first of the selected subsets it carries. The manifest is streamed (``jsonstream``): one recording in memory.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ....fileio.textio import DataError
from ..records import SourceRecord
from ..validate import Issue
from .base import Corpus, CorpusOptions, Layout, SubsetIssue
from .jsonstream import stream_array_member

WENET_DEFAULT = ("L", "DEV", "TEST_NET", "TEST_MEETING")
GIGA_DEFAULT = ("XL", "DEV", "TEST")
_PUNCT = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
_PUNCT_TAG = re.compile(r"\s*(<COMMA>|<PERIOD>|<QUESTIONMARK>|<EXCLAMATIONPOINT>)")
_GARBAGE = re.compile(r"<(SIL|MUSIC|NOISE|OTHER)>")


def _tag(value: str) -> str:
    return str(value).strip().strip("{}").upper()


def _manifest(path: str, file_name: str) -> str | None:
    if os.path.isfile(path) and os.path.basename(path) == file_name:
        return path
    candidate = os.path.join(path, file_name)
    if os.path.isfile(candidate):
        return candidate
    packed = [n for n in _names(path) if n.startswith(file_name) and n.endswith((".aes", ".tgz", ".gz"))]
    if packed:
        raise DataError(
            f"{os.path.join(path, packed[0])}: the manifest is still packed; decrypt/extract {file_name} first"
        )
    return None


def _names(path: str) -> list[str]:
    try:
        return os.listdir(path) if os.path.isdir(path) else []
    except OSError:
        return []


def _read(path: str, opts: CorpusOptions, layout: str, file_name: str, defaults: tuple[str, ...]) -> Corpus:
    manifest = _manifest(path, file_name) or path
    base = os.path.abspath(opts.root or os.path.dirname(manifest))
    selected = tuple(_tag(s) for s in (opts.subsets or defaults))
    giga = layout == "gigaspeech"
    corpus = Corpus(layout, base, iter(()), lang="en" if giga else "zh")
    corpus.rows = _rows(manifest, base, selected, opts if giga else None, corpus.notes)
    return corpus


def _rows(manifest: str, base: str, selected: tuple[str, ...], giga: CorpusOptions | None, notes: list[str]):
    name, unselected = os.path.basename(manifest), 0
    with open(manifest, encoding="utf-8") as fh:
        for number, audio in enumerate(stream_array_member(fh, "audios", name), start=1):
            if not isinstance(audio, dict) or not isinstance(audio.get("path"), str):
                yield Issue("malformed_record", name, None, f"audios[{number - 1}] has no path")
                continue
            path = os.path.join(base, audio["path"])
            for segment in audio.get("segments") or []:
                row = _segment_row(segment, path, audio, selected, giga, name)
                unselected += row is None
                if row is not None:
                    yield row
    if unselected:
        notes.append(f"{unselected} segments are not in the selected subsets ({','.join(selected)})")


def _segment_row(seg: Any, path: str, audio: dict, selected: tuple[str, ...], giga: CorpusOptions | None, name: str):
    if not isinstance(seg, dict):
        return Issue("malformed_record", name, None, f"a segment of {audio.get('aid')} is not an object")
    tags = {_tag(t) for t in seg.get("subsets") or []}
    subset = next((s for s in selected if s in tags), None)
    if subset is None:
        return None
    sid = str(seg.get("sid") or f"{audio.get('aid')}_{seg.get('begin_time')}")
    where = f"{name} {audio.get('aid')}"
    try:
        begin, end = float(seg["begin_time"]), float(seg["end_time"])
    except (KeyError, TypeError, ValueError):
        message = f"segment {sid} has no numeric begin_time/end_time"
        return SubsetIssue("malformed_record", where, None, message, sid, subset=subset)
    text = seg.get("text_tn" if giga else "text")
    if giga is not None and isinstance(text, str):
        if _GARBAGE.search(text):
            return SubsetIssue("garbage_utterance", where, None, f"segment {sid} is {text[:40]!r}", sid, subset=subset)
        text = giga_text(text, giga.giga_text)
    return SourceRecord(where, None, sid, path, text, begin=begin, end=end, subset=subset, recording=audio.get("aid"))


def giga_text(text: str, mode: str) -> str:
    """GigaSpeech ``text_tn``: ``punct`` attaches , . ? ! to the previous word; ``strip`` drops the tags."""
    if mode == "keep":
        return text
    if mode == "strip":
        return " ".join(_PUNCT_TAG.sub(" ", text).split())
    return " ".join(_PUNCT_TAG.sub(lambda m: _PUNCT[m.group(1)], text).split())


def _detect(file_name: str):
    def detect(path: str) -> str | None:
        return path if _manifest(path, file_name) else None

    return detect


WENETSPEECH = Layout(
    "wenetspeech",
    "WenetSpeech: WenetSpeech.json (+ audio/)",
    _detect("WenetSpeech.json"),
    lambda path, opts: _read(path, opts, "wenetspeech", "WenetSpeech.json", WENET_DEFAULT),
)
GIGASPEECH = Layout(
    "gigaspeech",
    "GigaSpeech: GigaSpeech.json (+ audio/)",
    _detect("GigaSpeech.json"),
    lambda path, opts: _read(path, opts, "gigaspeech", "GigaSpeech.json", GIGA_DEFAULT),
)
