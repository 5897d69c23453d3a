"""How plausible a text is in a codec: the scorer behind ``text_encodings.detect_codec``.

Every non-ASCII character a codec decodes is encoded back and weighted by the byte zone it comes from (``_ZONES``):
Big5 text read as GB18030 lands in GB2312's kana / Greek / Cyrillic rows and the user-defined area, which real
Chinese text hardly uses, while read as Big5 it lands in the level-1 (frequent) hanzi. Near ties between Chinese
readings are settled by the share of frequent characters (``frequent_hanzi``); two-byte UTF-8 text is scored by
whether its accented letters sit inside words (``latin_context_score``).
"""

from __future__ import annotations

import functools
import re

from ..text import is_han
from .frequent_hanzi import FREQUENT

BAD_LINE_COST = 20  # a line the codec cannot decode weighs like this many implausible characters
FREQUENT_SHARE = 0.5  # a reading with this share of frequent hanzi ...
FREQUENT_MARGIN = 0.3  # ... and this much more than every other close reading wins a near tie
# the same byte layout under another name: --encoding gbk is scored with GB18030's zones
_WORD = re.compile(r"[^\W\d_]+")
_ZONE_ALIASES = {"gbk": "gb18030", "gb2312": "gb18030", "big5": "cp950", "big5hkscs": "cp950", "shift_jis": "cp932"}

# codec → ((first lead byte, last lead byte, first trail byte, last trail byte, weight), ...): the first zone holding
# a character's two-byte code gives its weight; codes in no zone weigh ``_OTHER_ZONE``.
_ZONES: dict[str, tuple[tuple[int, int, int, int, float], ...]] = {
    "gb18030": (
        (0xA1, 0xA1, 0xA1, 0xFE, 1.0),  # GB2312 punctuation 、。“”《》
        (0xA3, 0xA3, 0xA1, 0xFE, 1.0),  # full-width ASCII
        (0xA2, 0xA2, 0xA1, 0xFE, 0.3),  # numbered symbols ⒈ ⅰ
        (0xA4, 0xA9, 0xA1, 0xFE, 0.1),  # kana, Greek, Cyrillic, pinyin, box drawing: rare in Chinese transcripts
        (0xB0, 0xD7, 0xA1, 0xFE, 1.0),  # level-1 hanzi (the 3755 frequent ones)
        (0xD8, 0xF7, 0xA1, 0xFE, 0.6),  # level-2 hanzi
    ),
    "cp950": (
        (0xA1, 0xA1, 0x40, 0xFE, 1.0),  # punctuation ，。、「」
        (0xA2, 0xA3, 0x40, 0xFE, 0.3),  # symbols, full-width letters, Greek, bopomofo
        (0xA4, 0xC5, 0x40, 0xFE, 1.0),  # level-1 hanzi (the 5401 frequent ones) ...
        (0xC6, 0xC6, 0x40, 0x7E, 1.0),  # ... up to C67E
        (0xC9, 0xF9, 0x40, 0xFE, 0.6),  # level-2 hanzi
    ),
    "cp932": (
        (0x81, 0x81, 0x40, 0xFC, 1.0),  # punctuation 、。「」
        (0x82, 0x82, 0x4F, 0xF1, 1.0),  # full-width digits / letters, hiragana
        (0x83, 0x83, 0x40, 0x96, 1.0),  # katakana
        (0x83, 0x84, 0x40, 0xFC, 0.1),  # Greek, Cyrillic, box drawing
        (0x88, 0x88, 0x9F, 0xFC, 1.0),  # level-1 kanji ...
        (0x89, 0x97, 0x40, 0xFC, 1.0),
        (0x98, 0x98, 0x40, 0x72, 1.0),  # ... up to 9872
        (0x98, 0xEA, 0x40, 0xFC, 0.6),  # level-2 kanji
    ),
}
_OTHER_ZONE = 0.2  # GBK / Big5 / Shift-JIS extensions: rare characters
_HALF_WIDTH_KANA = 0.2  # single-byte katakana of Shift-JIS: what Chinese bytes read as Shift-JIS mostly become


def score(sample: list[bytes], codec: str, free: int = 0) -> float:
    """Mean plausibility of the non-ASCII characters ``codec`` decodes from ``sample``; each line it cannot decode
    beyond the first ``free`` ones weighs like ``BAD_LINE_COST`` implausible characters."""
    weight, count, bad = 0.0, 0, 0
    for line in sample:
        try:
            text = line.decode(codec)
        except UnicodeDecodeError:
            bad += 1
            count += BAD_LINE_COST if bad > free else 0
            continue
        for char in text:
            if not char.isascii():
                weight += char_weight(codec, char)
                count += 1
    return weight / count if count else 0.0


def utf8_score(sample: list[bytes], free: int = 0) -> float:
    """``score`` for UTF-8: characters of three bytes or more (CJK) weigh 1; two-byte ones (accented Latin, Cyrillic,
    ...) by whether they sit inside words ("café", "привет"), since legacy CJK bytes read as UTF-8 give isolated
    symbols and short runs between punctuation ("谢谢" in GBK is "лл")."""
    weight, count, bad = 0.0, 0, 0
    for line in sample:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
            count += BAD_LINE_COST if bad > free else 0
            continue
        wide = [char for char in text if ord(char) >= 0x800]
        weight += sum(char_weight("utf-8", char) for char in wide)
        count += len(wide)
        word_weight, narrow = _two_byte_parts(text)
        weight += word_weight
        count += narrow
    return weight / count if count else 0.0


def _two_byte_parts(text: str) -> tuple[float, int]:
    """(weight, count) of the two-byte characters of ``text``: 1 inside a word of 3+ letters, 0.3 in a shorter one,
    0 outside words."""
    weight, inside = 0.0, 0
    for word in _WORD.findall(text):
        narrow = sum(0x80 <= ord(char) < 0x800 for char in word)
        inside += narrow
        weight += narrow * (1.0 if len(word) >= 3 else 0.3)
    return weight, sum(0x80 <= ord(char) < 0x800 for char in text)


def most_frequent_reading(sample: list[bytes], codecs: list[str]) -> str | None:
    """The one of ``codecs`` whose reading is clearly made of frequent Chinese characters (``frequent_hanzi``), or
    None when none stands out: GBK "你好" reads as Big5 "斕疑", and both are level-1 hanzi."""
    shares = {codec: _frequent_share(sample, codec) for codec in codecs}
    ranked = sorted(codecs, key=lambda codec: -shares[codec])
    top, runner_up = shares[ranked[0]], shares[ranked[1]]
    return ranked[0] if top >= FREQUENT_SHARE and top - runner_up >= FREQUENT_MARGIN else None


def _frequent_share(sample: list[bytes], codec: str) -> float:
    text = "".join(line.decode(codec, errors="ignore") for line in sample)
    han = [char for char in text if is_han(char)]
    return sum(char in FREQUENT for char in han) / len(han) if han else 0.0


@functools.lru_cache(maxsize=65536)
def char_weight(codec: str, char: str) -> float:
    """How plausible ``char`` is in text written in ``codec`` (1: frequent; 0: control, private use, U+FFFD)."""
    code = ord(char)
    if code < 0xA0 or 0xE000 <= code <= 0xF8FF or code == 0xFFFD:
        return 0.0
    zones = _ZONES.get(_ZONE_ALIASES.get(codec, codec))
    if zones is None:
        return 1.0
    data = char.encode(codec)
    if len(data) == 1:
        return _HALF_WIDTH_KANA if zones is _ZONES["cp932"] and 0xA1 <= data[0] <= 0xDF else 0.5
    if len(data) != 2:
        return 0.1  # GB18030 four-byte codes: outside GBK, rare in practice
    lead, trail = data
    return next((w for lo, hi, t_lo, t_hi, w in zones if lo <= lead <= hi and t_lo <= trail <= t_hi), _OTHER_ZONE)
