"""Transcript checks that ``validate.check_text`` runs besides "empty" and "mojibake": what would stop training
later or train on something that is not a transcript.

* ``<audio>`` (LLaMA-Factory's audio placeholder) in a transcript: every placeholder in a sample must match one
  audio, so the sample would stop training at preprocessing. Kimi-Audio's own special-token strings
  (``<|im_media_begin|>``, ``<|reserved_token_12|>``, ...) are refused too: the template reads audio spans from them.
  ``<image>`` / ``<video>`` are kept: the kimi_audio plugin never expands them, they stay plain text.
* Control characters (NUL, C0 and C1 controls other than whitespace such as tab / newline, DEL) mean a binary or
  damaged file: the row is skipped.
* Invisible characters: zero-width space / word joiner / BOM / soft hyphen are removed from the kept transcript
  (``strip_invisible``; harmless, and they would become label tokens the audio does not hold). A transcript with
  nothing visible (only such characters, or other format characters) is empty.
* Far more text than the audio can hold (``MAX_CHARS_PER_SECOND``): a warning, since cutoff_len would cut the label
  and training then stops on that sample (integration/wrappers.py); it is usually a transcript on the wrong row.
"""

from __future__ import annotations

import re
import unicodedata

from ...models import special_tokens as st

AUDIO_PLACEHOLDER = "<audio>"  # LLaMA-Factory's default (llamafactory.extras.constants; its env override aside)
_KIMI_SPECIALS = re.compile("|".join(re.escape(token) for token in st.SPECIAL_TOKENS if token.startswith("<|")))
_REMOVED_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad"))  # ZWSP, word joiner, BOM, soft hyphen
# Fast speech is ~8 syllables (Chinese characters) or ~20 Latin letters a second; the limit is twice that, plus slack
# for short clips, tags such as "[noise]" and punctuation: it flags transcripts on the wrong row, not fast talkers.
MAX_CHARS_PER_SECOND = 40
SLACK_CHARS = 50


def strip_invisible(text: str) -> str:
    """``text`` without zero-width spaces, word joiners, BOMs and soft hyphens (ZWJ / ZWNJ are kept: they change
    how some scripts and emoji are written)."""
    return text.translate(_REMOVED_INVISIBLE)


def visible_length(text: str) -> int:
    """Characters that are neither whitespace nor format characters (zero-width, direction marks, ...)."""
    return sum(not char.isspace() and unicodedata.category(char) != "Cf" for char in text)


def transcript_problems(text: str) -> list[tuple[str, str]]:
    """(reason, message) pairs for a non-empty transcript that is not mojibake."""
    found: list[tuple[str, str]] = []
    if not visible_length(text):
        return [("empty_text", f"transcript has no visible character (only {_codepoints(text)})")]
    marker = AUDIO_PLACEHOLDER if AUDIO_PLACEHOLDER in text else None
    special = _KIMI_SPECIALS.search(text)
    if marker or special:
        token = marker or special.group(0)
        found.append(("placeholder_in_text", f"transcript {_preview(text, token)} contains {token}"))
    control = next((char for char in text if _is_control(char)), None)
    if control is not None:
        where = f"at position {text.index(control) + 1}"
        found.append(("control_characters", f"transcript has control character U+{ord(control):04X} {where}"))
    return found


def rate_problem(text: str, seconds: float) -> list[tuple[str, str]]:
    """A warning when the transcript holds more characters than ``seconds`` of speech plausibly can."""
    length = visible_length(text)
    if seconds <= 0 or length <= MAX_CHARS_PER_SECOND * seconds + SLACK_CHARS:
        return []
    rate = length / seconds
    return [("long_transcript", f"transcript has {length} characters for {seconds:.2f} s of audio ({rate:.0f}/s)")]


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc" and not char.isspace()  # tabs, newlines: collapsed to spaces


def _codepoints(text: str) -> str:
    shown = sorted({f"U+{ord(char):04X}" for char in text if not char.isspace()})
    return ", ".join(shown[:4]) or "whitespace"


def _preview(text: str, token: str) -> str:
    start = max(0, text.index(token) - 12)
    return repr(text[start : start + 40])
