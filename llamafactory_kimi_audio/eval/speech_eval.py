"""Evaluation of speech output (issue 18 item 6): greedy spoken answers scored against the target audio's codes.

A speech test set is sharegpt rows whose assistant turn holds an ``<audio>`` (the target), as ``convert --task tts``
and ``--task spoken-reply`` write them. For every row the model answers the user turn with the official decoding
loop (``generate_speech``, both heads greedy) and the answer is scored at the code level, and, when the checkpoint
has the detokenizer (``audio_detokenizer/`` + ``vocoder/``), by an ASR round trip (``speech_roundtrip.py``):

- **code error rate**: edit distance between generated and target GLM-4-Voice codes / target codes, over the set;
- **exact match**: share of answers whose codes equal the target's;
- the **text stream** (what the model says it speaks) against the answer text: the usual CER / WER report;
- **round trip** (with a detokenizer): the model's own transcript of the generated 24 kHz wave vs the answer text.

Target codes come from the feature cache when it holds the clip (``KIMI_AUDIO_FEATURE_CACHE``), else from the
GLM-4-Voice tokenizer of the checkpoint. Decoding stops at the audio end token or after ``2·N + delay + 10`` steps
for a target of N codes (a runaway answer is scored by its first ``2·N + 10`` codes: insertions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jiwer

from ..data.convert.conversations import message_turns
from ..data.convert.dataset_files import resolve_audio
from ..data.convert.records import iter_json_records
from ..data.convert.validate import Issue
from ..fileio.dataset_info import media_root
from ..fileio.textio import DataError

PLACEHOLDER = "<audio>"


@dataclass(frozen=True)
class SpeechItem:
    """One spoken-answer test case: the question (text and/or audio) and the target answer (audio and its text)."""

    id: str
    question_text: str
    question_audio: str | None  # absolute path
    target_audio: str  # absolute path
    answer_text: str


@dataclass(frozen=True)
class CodeScore:
    id: str
    target_len: int
    hyp_len: int
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    text_ref: str
    text_hyp: str

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def exact(self) -> bool:
        return self.errors == 0 and self.hyp_len == self.target_len

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "code_error_rate": round(self.errors / max(1, self.target_len), 6),
            "exact": self.exact,
        }


@dataclass
class SpeechScores:
    utterances: list[CodeScore]
    generated: list[list[int]] = field(default_factory=list)  # the answers' codes, in item order
    round_trip: Any = None  # speech_roundtrip.RoundTrip when the checkpoint has the detokenizer
    items: list[SpeechItem] = field(default_factory=list)  # the scored items, in order (unreadable ones left out)
    unreadable: list[Any] = field(default_factory=list)  # clips.Unreadable of the items skipped

    @property
    def n(self) -> int:
        return len(self.utterances)

    @property
    def code_error_rate(self) -> float:
        return sum(u.errors for u in self.utterances) / max(1, sum(u.target_len for u in self.utterances))

    @property
    def exact_match(self) -> float:
        return sum(u.exact for u in self.utterances) / max(1, self.n)

    @property
    def length_ratio(self) -> float:
        return sum(u.hyp_len for u in self.utterances) / max(1, sum(u.target_len for u in self.utterances))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "metric": "codes",  # code-level accuracy; the ASR round trip (with a detokenizer) is its own block
            "n": self.n,
            "code_error_rate": self.code_error_rate,
            "exact_match": self.exact_match,
            "length_ratio": self.length_ratio,
            "n_unreadable": len(self.unreadable),
        }
        if self.round_trip is not None:
            out["round_trip"] = self.round_trip.to_dict()
        return out


def code_score(
    uid: str, target: Sequence[int], hyp: Sequence[int], text_ref: str = "", text_hyp: str = ""
) -> CodeScore:
    """Levenshtein alignment of two code sequences (each code one "word")."""
    if not hyp:
        return CodeScore(uid, len(target), 0, 0, 0, len(target), 0, text_ref, text_hyp)
    out = jiwer.process_words(" ".join(map(str, target)), " ".join(map(str, hyp)))
    counts = (out.hits, out.substitutions, out.deletions, out.insertions)
    return CodeScore(uid, len(target), len(hyp), *counts, text_ref, text_hyp)


# --------------------------------------------------------------------------------------------------- test set
def _turns(obj: dict) -> list[tuple[str, str]]:
    return message_turns(obj) or []


def is_speech_row(obj: Any) -> bool:
    """A sharegpt row with an ``<audio>`` in an assistant turn (a speech-output sample)."""
    return isinstance(obj, dict) and any(role == "assistant" and PLACEHOLDER in c for role, c in _turns(obj))


def is_speech_test_set(path: str, encoding: str = "auto") -> bool:
    """True when the JSON / JSONL file's first row is a speech-output sample (other formats: False)."""
    if not os.path.isfile(path) or not path.lower().endswith((".json", ".jsonl")):
        return False
    try:
        records, _ = iter_json_records(path, encoding)
        first = next((obj for _, obj in records if not isinstance(obj, Issue)), None)
    except DataError:
        return False
    return is_speech_row(first)


def _speech_item(obj: dict, where: str, root: str, index: int) -> SpeechItem:
    turns = _turns(obj)
    if not is_speech_row(obj):
        raise DataError(f"{where}: no assistant <audio> target; evaluate ASR and speech-output rows as separate sets")
    if [role for role, _ in turns] != ["user", "assistant"]:
        raise DataError(
            f"{where}: speech evaluation takes one user turn then one spoken assistant turn, got roles "
            f"{[role for role, _ in turns]}; split multi-turn conversations into single-turn rows"
        )
    (_, question), (_, answer) = turns
    audios = obj.get("audios") or []
    audios = [audios] if isinstance(audios, str) else [a.get("path") if isinstance(a, dict) else a for a in audios]
    wanted = question.count(PLACEHOLDER) + answer.count(PLACEHOLDER)
    if answer.count(PLACEHOLDER) != 1 or question.count(PLACEHOLDER) > 1 or len(audios) != wanted:
        raise DataError(
            f"{where}: {question.count(PLACEHOLDER)} user and {answer.count(PLACEHOLDER)} assistant <audio> for "
            f"{len(audios)} audios; a speech test row has at most one question audio and exactly one target audio"
        )
    paths = [resolve_audio(str(a), root) for a in audios]
    uid = str(obj.get("id") or obj.get("key") or index)
    text = " ".join(question.replace(PLACEHOLDER, " ").split())
    question_audio = paths[0] if len(paths) == 2 else None
    return SpeechItem(uid, text, question_audio, paths[-1], " ".join(answer.replace(PLACEHOLDER, " ").split()))


def load_speech_test_set(path: str, root: str | None = None, encoding: str = "auto") -> list[SpeechItem]:
    """Speech test cases in file order; a row that is not one must stop the run (a test set cannot shrink)."""
    base = os.path.abspath(root) if root else media_root(path)
    records, _ = iter_json_records(path, encoding)
    items = []
    for line, obj in records:
        where = f"{os.path.basename(path)} line {line}"
        if isinstance(obj, Issue):
            raise DataError(f"{obj.one_line()} (test set records cannot be skipped)")
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        items.append(_speech_item(obj, where, base, len(items)))
    if not items:
        raise DataError(f"{path}: no rows to evaluate")
    return items


def speech_clips(item: SpeechItem) -> list[str]:
    """The clips a speech test case reads: its question audio (if any) and its target."""
    return [p for p in (item.question_audio, item.target_audio) if p is not None]


def check_speech_clips(items: Sequence[SpeechItem], strict: bool = False) -> None:
    """Before any model is loaded: InputError when ``strict`` and a question / target clip's header is unreadable (or
    missing), or when no item is readable."""
    from .clips import split_readable

    split_readable(items, speech_clips, lambda i: i.id, strict)
