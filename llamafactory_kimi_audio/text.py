"""Script and language facts about transcripts, shared by the converter, the mojibake detector and the scorer.

Three character classes, built from one table of Unicode blocks because each question needs a different set:

- ``is_han``: Chinese ideographs only. The mojibake detector accepts a re-decoded string only when it became Han.
- ``is_cjk_char``: the scripts scored per character (CER): Han, kana and Hangul.
- ``SPACELESS``: characters between which a space is noise in a transcript (Han, CJK punctuation, full-width
  forms). Hangul is not in it: Korean separates words with spaces.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

HAN = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF))  # unified, extension A, compatibility ideographs
KANA = ((0x3040, 0x30FF),)  # hiragana + katakana
HANGUL = ((0xAC00, 0xD7AF),)  # syllables
CJK_PUNCTUATION = ((0x3000, 0x303F),)  # ideographic space, 、。「」…
FULLWIDTH = ((0xFF00, 0xFFEF),)  # full-width ASCII, half-width kana

PER_CHARACTER = HAN + KANA + HANGUL
SPACELESS = CJK_PUNCTUATION + HAN + FULLWIDTH

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def char_class(ranges: Iterable[tuple[int, int]]) -> str:
    """A regex character-class body (``a-b...``) for ``ranges``."""
    return "".join(f"{chr(low)}-{chr(high)}" for low, high in ranges)


def _in(char: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in ranges)


def is_han(char: str) -> bool:
    return _in(char, HAN)


def is_cjk_char(char: str) -> bool:
    """A character scored on its own (Han, kana, Hangul)."""
    return _in(char, PER_CHARACTER)


@functools.cache
def _spaceless_gap() -> re.Pattern[str]:
    # compiled on first use: classes this wide take ~10 ms to compile, which every importing process would pay
    return re.compile(f"(?<=[{char_class(SPACELESS)}]) (?=[{char_class(SPACELESS)}])")


def drop_spaceless_gaps(text: str) -> str:
    """Remove single spaces between two Han / CJK-punctuation / full-width characters ("你 好" → "你好")."""
    return _spaceless_gap().sub("", text)


def cjk_ratio(texts: str | Iterable[str]) -> float:
    """Share of CJK characters among "tokens" (each CJK character, each other word) of ``texts``; 0 when empty.

    Counting a Latin word as one token keeps "我们讨论machine learning" Chinese (7 of 9 tokens) while an English
    sentence quoting one Chinese name stays English.
    """
    cjk = other = 0
    for text in [texts] if isinstance(texts, str) else texts:
        cjk += sum(map(is_cjk_char, text))
        other += len(_WORD.findall("".join(" " if is_cjk_char(c) else c for c in text)))
    total = cjk + other
    return cjk / total if total else 0.0


def detect_language(texts: str | Iterable[str]) -> str:
    """``"zh"`` (score by characters) when CJK tokens are at least half of the text, else ``"en"`` (by words)."""
    return "zh" if cjk_ratio(texts) >= 0.5 else "en"
