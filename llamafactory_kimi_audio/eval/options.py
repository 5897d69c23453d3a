"""What ``evaluate`` is asked to do, checked once: :class:`EvaluateOptions`, and :func:`prepare_test_set`, the one
step that reads a test set and checks its clips (shared by ``kimi-audio-lf evaluate`` and ``eval.evaluate``).

The CLI builds both before it loads a model, so a bad option or an unreadable clip fails before the slow load; the
library builds them from its keyword arguments. No torch here (``Generation`` is checked by its class name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..errors import InputError
from .inputs import TestItem, load_test_set, require_test_set
from .normalize import NORMALIZERS
from .speech_eval import SpeechItem, check_speech_clips, is_speech_test_set, load_speech_test_set

LANGUAGES = ("auto", "zh", "en")
NEEDS_DATA = "--model needs --data TEST.json (the utterances to transcribe)"


@dataclass(frozen=True)
class EvaluateOptions:
    """How to read, transcribe and score a test set. ``strict``: an unreadable clip is an InputError instead of
    being skipped and listed in ``EvalResult.unreadable``."""

    normalizer: str = "standard"
    language: str = "auto"  # which utterances also get WER; CER covers all
    root: str | None = None  # folder relative audio paths resolve against
    encoding: str = "auto"  # text encoding of CSV test sets / predictions
    instruction: str | None = None  # with a model: one instruction for every utterance
    generation: Any = None  # eval.transcribe.Generation (with a model); None: its defaults
    progress: bool = True
    plot: bool = True
    strict: bool = False

    def __post_init__(self) -> None:
        if self.normalizer not in NORMALIZERS:
            raise InputError(f"normalizer {self.normalizer!r}: choose one of {', '.join(NORMALIZERS)}")
        if self.language not in LANGUAGES:
            raise InputError(f"language {self.language!r}: choose one of {', '.join(LANGUAGES)}")
        if not isinstance(self.encoding, str) or not self.encoding:
            raise InputError(f"encoding {self.encoding!r}: give a codec name such as utf-8, gbk, or auto")
        if self.generation is not None and type(self.generation).__name__ != "Generation":
            raise InputError(f"generation must be an eval.Generation, got {type(self.generation).__name__}")

    @classmethod
    def from_keywords(cls, base: EvaluateOptions | None = None, **changes: Any) -> EvaluateOptions:
        """``base`` (or the defaults) with ``changes``; an unknown name is a TypeError naming it."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(changes) - known):
            raise TypeError(f"evaluate() got unexpected options: {', '.join(unknown)}")
        values = {name: getattr(base, name) for name in known} if base is not None else {}
        return cls(**{**values, **changes})


@dataclass(frozen=True)
class TestSet:
    """A loaded test set: ASR items, or spoken-answer items (assistant ``<audio>``), and the file it came from."""

    items: Sequence[TestItem] | Sequence[SpeechItem]
    speech: bool = False
    path: str | None = None

    __test__ = False  # not a pytest class

    @property
    def dataset(self) -> str | None:
        return os.path.abspath(self.path) if self.path else None


def prepare_test_set(
    data: str | Sequence[TestItem] | Sequence[SpeechItem] | TestSet | None,
    options: EvaluateOptions,
    transcribe: bool,
) -> TestSet | None:
    """Read ``data`` (a file or loaded items) once; ``transcribe`` (a model will run on it): it is required and its
    clips' headers are checked now, so a missing clip fails (``strict``) before any model is loaded."""
    if isinstance(data, TestSet):
        return data
    if data is None:
        if transcribe:
            raise InputError(NEEDS_DATA)
        return None
    if isinstance(data, str):
        require_test_set(data)
        speech = transcribe and is_speech_test_set(data, options.encoding)  # predictions pair with the text rows
        load = load_speech_test_set if speech else load_test_set
        test_set = TestSet(load(data, options.root, options.encoding), speech, data)
    else:
        test_set = TestSet(list(data), is_speech_items(data))
    if transcribe:
        check_clips(test_set, options.strict)
    return test_set


def is_speech_items(items: Sequence[Any]) -> bool:
    return bool(items) and all(isinstance(item, SpeechItem) for item in items)


def check_clips(test_set: TestSet, strict: bool) -> None:
    """InputError when ``strict`` and a clip's header is unreadable (or missing), or when no clip is readable."""
    from .clips import split_readable

    if test_set.speech:
        check_speech_clips(test_set.items, strict)
    else:
        split_readable(test_set.items, lambda i: [i.audio], lambda i: i.id, strict)
