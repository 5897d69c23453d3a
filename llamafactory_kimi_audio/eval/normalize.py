"""Named text-normalisation pipelines applied to references and hypotheses before scoring.

Pick one by name (``evaluate --normalizer standard``); the name and its steps are recorded in ``summary.json`` so two
reports are only compared when they were normalised the same way.

``standard`` (default)
    1. ``nfkc``: Unicode NFKC, which folds full-width letters/digits/punctuation to half width ("ＡＢＣ１２" → "ABC12",
       "，" → ",") and compatibility forms.
    2. ``lowercase``.
    3. ``remove_punctuation``: every Unicode punctuation character (categories P*, so CJK 。，、？！“”《》【】…
       as well as ASCII) and the symbols ``~ ` ^ | ･`` become a space; apostrophes inside words are dropped instead
       ("don't" → "dont") so contractions stay one word.
    4. ``collapse_whitespace``: runs of whitespace (including U+3000) become one space; leading/trailing removed.
``basic``
    ``nfkc`` + ``collapse_whitespace``: keeps case and punctuation (for punctuation-sensitive comparisons).
``none``
    ``collapse_whitespace`` only.

Scoring then works per utterance on the normalised strings: CER utterances (Chinese, Japanese, Korean) are compared
character by character with all spaces removed; WER utterances (everything else) word by word.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InputError
from ..text import cjk_ratio, detect_language, is_cjk_char  # noqa: F401  (defined once in text.py, used from here)

Step = Callable[[str], str]

_APOSTROPHES = re.compile(r"(?<=\w)['\u2019](?=\w)")
_EXTRA_PUNCT = set("~`^|\uff65")
_WHITESPACE = re.compile(r"\s+")


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def lowercase(text: str) -> str:
    return text.lower()


def remove_punctuation(text: str) -> str:
    text = _APOSTROPHES.sub("", text)
    return "".join(" " if unicodedata.category(c).startswith("P") or c in _EXTRA_PUNCT else c for c in text)


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Normalizer:
    """A named sequence of ``str -> str`` steps."""

    name: str
    steps: tuple[Step, ...]

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text

    @property
    def step_names(self) -> list[str]:
        return [step.__name__ for step in self.steps]

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "steps": self.step_names}


NORMALIZERS: dict[str, Normalizer] = {
    "standard": Normalizer("standard", (nfkc, lowercase, remove_punctuation, collapse_whitespace)),
    "basic": Normalizer("basic", (nfkc, collapse_whitespace)),
    "none": Normalizer("none", (collapse_whitespace,)),
}


def get_normalizer(name: str) -> Normalizer:
    try:
        return NORMALIZERS[name]
    except KeyError:
        raise InputError(f"unknown normalizer {name!r}; choose one of: {', '.join(NORMALIZERS)}") from None
