"""Which codec a text file is written in, and its lines decoded one by one so that one bad byte costs one line.

``decode_file`` answers a ``Decoded``: every physical line (a line whose bytes are not valid in the codec is decoded
with U+FFFD and listed in ``bad`` with the reason), the codec, and how it was chosen. The converter skips the rows on
bad lines and keeps the others; a file with more than ``MAX_BAD_SHARE`` bad lines is refused (wrong codec).

Detection (``encoding="auto"``): a BOM wins (UTF-8, UTF-16, UTF-32); a file with many NUL bytes is tried as UTF-16;
otherwise each of ``CANDIDATES`` decodes the lines holding non-ASCII bytes and is scored by how plausible its
characters are *for that codec*: every character is encoded back and the byte zone it comes from is weighted
(``_ZONES``): e.g. Big5 text read as GB18030 lands in GB2312's kana / Greek / Cyrillic rows and the user-defined
area, which real Chinese text hardly uses, while read as Big5 it lands in the level-1 (frequent) hanzi. A line that
does not decode costs ``BAD_LINE_COST`` characters of weight 0. When the best two are close, or the best is
implausible, the file is refused with one line naming ``--encoding``: guessing wrong would keep every row as garbage.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from ..errors import InputError
from ..text import is_han
from .frequent_hanzi import FREQUENT

CANDIDATES = ("utf-8", "gb18030", "cp950", "cp932")  # tie order: UTF-8 first (self-validating), then by use
LABELS = {"utf-8": "UTF-8", "gb18030": "GB18030/GBK", "cp950": "Big5 (cp950)", "cp932": "Shift-JIS (cp932)"}
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
MAX_BAD_SHARE = 0.01  # more bad lines than this (and more than one) means a wrong codec: refuse the file
BAD_LINE_COST = 20  # a line the codec cannot decode weighs like this many implausible characters
MIN_SCORE = 0.7  # below this the best candidate's text is not plausible: refuse rather than keep garbage
STRONG_SCORE = 0.9  # a candidate this plausible is not overruled by an equally valid two-byte UTF-8 reading
MIN_MARGIN = 0.15  # two candidates closer than this cannot be told apart: refuse, naming both
FREQUENT_SHARE = 0.5  # a reading with this share of frequent hanzi ...
FREQUENT_MARGIN = 0.3  # ... and this much more than every other close reading wins a near tie
SAMPLE_LINES = 5000  # lines with non-ASCII bytes scored per candidate (the whole file is decoded afterwards)
ENCODING_HINT = "pass --encoding with the file's encoding (e.g. utf-8, gb18030, big5, shift_jis, cp1252, euc-kr)"

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


class EncodingError(InputError):
    """The codec of a text file cannot be chosen, or it does not fit most of the file: one line, naming --encoding."""


@dataclass
class Decoded:
    lines: list[str]  # physical lines with their "\n" (none after a last line without one)
    codec: str
    bad: dict[int, str] = field(default_factory=dict)  # 1-based line number → why its bytes were not decoded
    detected: bool = False  # chosen by ``detect_codec`` (not given, not a BOM)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def label(codec: str) -> str:
    return LABELS.get(codec, codec)


def decode_file(path: str, encoding: str = "auto", name: str | None = None) -> Decoded:
    """Read ``path`` and decode it line by line (see the module docstring); EncodingError when the codec is wrong."""
    with open(path, "rb") as fh:
        raw = fh.read()
    return decode_bytes(raw, name or path, encoding)


def decode_bytes(raw: bytes, name: str, encoding: str = "auto") -> Decoded:
    detected = False
    if encoding == "auto":
        codec = _bom_codec(raw) or _utf16_without_bom(raw)
        if codec is None:
            codec, detected = detect_codec(raw, name), True
    else:
        codec = _checked_codec(encoding)
    decoded = _decode_wide(raw, name, codec) if codec.startswith("utf-16") or codec.startswith("utf-32") else None
    decoded = decoded or _decode_lines(raw, codec)
    decoded.detected = detected
    _refuse_if_mostly_bad(decoded, name, given=encoding != "auto")
    return decoded


def _checked_codec(encoding: str) -> str:
    import codecs

    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise EncodingError(
            f"unknown --encoding {encoding!r}; use a Python codec name such as utf-8, gb18030, big5, shift_jis, cp1252"
        ) from None


def _bom_codec(raw: bytes) -> str | None:
    return next((codec for bom, codec in _BOMS if raw.startswith(bom)), None)


def _utf16_without_bom(raw: bytes) -> str | None:
    """UTF-16 saved without a BOM: NUL in about every other byte (ASCII-range text)."""
    head = raw[:4096]
    if len(head) < 4 or head.count(0) < len(head) // 4:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    return "utf-16-le" if odd > even else "utf-16-be"


def _decode_wide(raw: bytes, name: str, codec: str) -> Decoded:
    """UTF-16/32: decoded whole (a line cannot be cut out of the bytes); a bad unit refuses the file by line."""
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as err:
        line = raw[: err.start].decode(codec, errors="replace").count("\n") + 1
        raise EncodingError(
            f"{name} line {line}: bytes are not valid {codec} ({err.reason}); the file may be truncated or not "
            f"{codec}: re-save it as UTF-8 or {ENCODING_HINT}"
        ) from None
    return Decoded(split_lines(text.removeprefix("\ufeff")), codec)


def split_lines(text: str) -> list[str]:
    """Lines with their "\\n" (only "\\n" splits: "\\r", U+2028, ... stay inside a line, as in the bytes)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _decode_lines(raw: bytes, codec: str) -> Decoded:
    body = raw[3:] if codec == "utf-8-sig" and raw.startswith(b"\xef\xbb\xbf") else raw
    codec_used = "utf-8" if codec == "utf-8-sig" else codec
    try:
        return Decoded(split_lines(body.decode(codec_used)), codec)
    except UnicodeDecodeError:
        pass
    lines: list[str] = []
    bad: dict[int, str] = {}
    for number, chunk in enumerate(_byte_lines(body), start=1):
        try:
            lines.append(chunk.decode(codec_used))
        except UnicodeDecodeError as err:
            column = len(chunk[: err.start].decode(codec_used, errors="replace")) + 1
            bad[number] = f"byte 0x{chunk[err.start]:02x} at column {column} is not valid {label(codec_used)}"
            lines.append(chunk.decode(codec_used, errors="replace"))
    return Decoded(lines, codec, bad)


def _byte_lines(raw: bytes) -> list[bytes]:
    """Lines of ``raw`` with their b"\\n": safe for every ASCII-compatible codec (no multi-byte unit holds 0x0A)."""
    parts = raw.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _refuse_if_mostly_bad(decoded: Decoded, name: str, given: bool) -> None:
    if not decoded.bad:
        return
    total = sum(1 for line in decoded.lines if line.strip())
    if len(decoded.bad) <= max(1, int(MAX_BAD_SHARE * total)):
        return
    first = min(decoded.bad)
    fix = f"check --encoding {decoded.codec} (or leave it at auto)" if given else ENCODING_HINT
    raise EncodingError(
        f"{name}: {len(decoded.bad)} of {total} lines are not valid {label(decoded.codec)} text (first: line {first}, "
        f"{decoded.bad[first]}); {fix}"
    )


def detect_codec(raw: bytes, name: str) -> str:
    """The most plausible of ``CANDIDATES`` for ``raw`` (no BOM); EncodingError when none is, or two tie."""
    sample = [line for line in _byte_lines(raw) if not line.isascii()][:SAMPLE_LINES]
    if not sample:
        return "utf-8"
    free = max(1, int(MAX_BAD_SHARE * raw.count(b"\n")))  # bad lines the file may have anyway (skipped rows)
    scores = {codec: _score(sample, codec, free) for codec in CANDIDATES}
    utf8 = _utf8_text(sample)
    if utf8 is not None:  # every line is valid UTF-8: only two-byte text can also be legacy CJK ("谢谢" = "лл")
        if any(ord(char) >= 0x800 for char in utf8):
            return "utf-8"
        scores["utf-8"] = _latin_context_score(utf8)
        rival = max(CANDIDATES[1:], key=lambda codec: scores[codec])
        if scores["utf-8"] >= STRONG_SCORE or scores[rival] < STRONG_SCORE:
            return "utf-8"
    ranked = sorted(CANDIDATES, key=lambda codec: -scores[codec])  # stable: ties keep the CANDIDATES order
    best = ranked[0]
    if scores[best] == 0:  # no candidate decodes any non-ASCII line: bad bytes in a UTF-8 (ASCII) file
        return "utf-8"
    if scores[best] < MIN_SCORE:
        raise EncodingError(
            f"{name}: cannot tell the text encoding: it does not read as {', '.join(map(label, CANDIDATES))} "
            f"(best guess {label(best)}: {_preview(sample, best)!r}); {ENCODING_HINT}"
        )
    close = [codec for codec in ranked if scores[codec] > scores[best] - MIN_MARGIN and scores[codec] > 0]
    close += ["utf-8"] if utf8 is not None and "utf-8" not in close else []
    if len(close) > 1 and (best != "utf-8" or utf8 is not None):
        best = _most_frequent_reading(sample, close)
    if best is None:
        readings = ", ".join(f"{label(codec)} ({_preview(sample, codec)!r})" for codec in close)
        flags = " or ".join(f"--encoding {_flag(codec)}" for codec in close)
        raise EncodingError(
            f"{name}: cannot tell the text encoding, these readings all fit: {readings}; pass {flags} "
            "(or the file's own encoding)"
        )
    return best


def _most_frequent_reading(sample: list[bytes], codecs: list[str]) -> str | None:
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


def _utf8_text(sample: list[bytes]) -> str | None:
    try:
        return "".join(line.decode("utf-8") for line in sample)
    except UnicodeDecodeError:
        return None


def _latin_context_score(text: str) -> float:
    """Plausibility of UTF-8 text made of two-byte characters only: accented letters sit inside Latin words ("café",
    "Müller") or in runs of letters of their own script ("привет"); legacy CJK bytes read as UTF-8 give isolated
    symbols and short runs between punctuation."""
    words = re.findall(r"[^\W\d_]+", text)
    weight = count = 0.0
    for word in words:
        special = sum(not char.isascii() for char in word)
        if special:
            count += special
            weight += special * (1.0 if len(word) >= 3 else 0.3)
    symbols = sum(not char.isascii() and not char.isalpha() for char in text)
    count += symbols
    return weight / count if count else 0.0


def _flag(codec: str) -> str:
    return {"cp950": "big5", "cp932": "shift_jis"}.get(codec, codec)


def _preview(sample: list[bytes], codec: str) -> str:
    text = "".join(line.decode(codec, errors="replace") for line in sample[:3])
    return "".join(ch for ch in text if not ch.isascii())[:12]


def _score(sample: list[bytes], codec: str, free: int = 0) -> float:
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


@functools.lru_cache(maxsize=65536)
def char_weight(codec: str, char: str) -> float:
    """How plausible ``char`` is in text written in ``codec`` (1: frequent; 0: control, private use, U+FFFD)."""
    code = ord(char)
    if code < 0xA0 or 0xE000 <= code <= 0xF8FF or code == 0xFFFD:
        return 0.0
    if codec not in _ZONES:
        return 1.0
    data = char.encode(codec)
    if len(data) == 1:
        return _HALF_WIDTH_KANA if codec == "cp932" and 0xA1 <= data[0] <= 0xDF else 0.5
    if len(data) != 2:
        return 0.1  # GB18030 four-byte codes: outside GBK, rare in practice
    lead, trail = data
    zones = _ZONES[codec]
    return next((w for lo, hi, t_lo, t_hi, w in zones if lo <= lead <= hi and t_lo <= trail <= t_hi), _OTHER_ZONE)
