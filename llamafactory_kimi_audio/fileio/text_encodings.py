"""Which codec a text file is written in, and its lines decoded one by one so that one bad byte costs one line.

``decode_file`` answers a ``Decoded``: every physical line (a line whose bytes are not valid in the codec is decoded
with U+FFFD and listed in ``bad`` with the reason), the codec, and how it was chosen. The converter skips the rows on
bad lines and keeps the others; a file with more than ``MAX_BAD_SHARE`` bad lines is refused (wrong codec).

Detection (``encoding="auto"``): a BOM wins (UTF-8, UTF-16, UTF-32); a file with many NUL bytes is tried as UTF-16;
otherwise each of ``CANDIDATES`` decodes the lines holding non-ASCII bytes and is scored by how plausible its
characters are for that codec (``encoding_scores.py``). When the best readings are close, or the best is
implausible, the file is refused with one line naming ``--encoding``: guessing wrong would keep every row as garbage.
A given ``--encoding`` that reads as implausible text while another codec reads well is refused the same way.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from ..errors import InputError
from .encoding_scores import most_frequent_reading, score, utf8_score

CANDIDATES = ("utf-8", "gb18030", "cp950", "cp932")  # tie order: UTF-8 first (self-validating), then by use
LABELS = {"utf-8": "UTF-8", "gb18030": "GB18030/GBK", "cp950": "Big5 (cp950)", "cp932": "Shift-JIS (cp932)"}
_LINE_END = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")
_BYTE_LINE_END = re.compile(rb"(?<=\n)|(?<=\r)(?!\n)")
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
MAX_BAD_SHARE = 0.01  # more bad lines than this (and more than one) means a wrong codec: refuse the file
MIN_SCORE = 0.7  # below this the best candidate's text is not plausible: refuse rather than keep garbage
STRONG_SCORE = 0.9  # a candidate this plausible is not overruled by an equally valid two-byte UTF-8 reading
MIN_MARGIN = 0.15  # two candidates closer than this cannot be told apart: refuse, naming both
SAMPLE_LINES = 5000  # lines with non-ASCII bytes scored per candidate (the whole file is decoded afterwards)
ENCODING_HINT = "pass --encoding with the file's encoding (e.g. utf-8, gb18030, big5, shift_jis, cp1252, euc-kr)"


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
    if encoding != "auto":
        _refuse_implausible_choice(raw, name, codec, encoding)
    return decoded


def _refuse_implausible_choice(raw: bytes, name: str, codec: str, encoding: str) -> None:
    """A given --encoding that turns the text into implausible characters while another codec reads it well."""
    sample = [line for line in _byte_lines(raw) if not line.isascii()][:SAMPLE_LINES]
    if not sample or score(sample, codec, free=len(sample)) >= MIN_SCORE:
        return
    try:
        better = detect_codec(raw, name)
    except EncodingError:
        return
    if better != codec:
        raise EncodingError(
            f"{name}: --encoding {encoding} reads it as {_preview(sample, codec)!r}, which is not plausible text; "
            f"it reads as {label(better)} ({_preview(sample, better)!r}): pass --encoding {_flag(better)} or leave "
            "it at auto"
        )


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
    """Lines with their ending: "\\n", "\\r\\n" or a lone "\\r" (old Mac CSV), as the csv module expects them;
    U+2028, form feeds, ... stay inside a line, as they do in the bytes."""
    return [line for line in _LINE_END.split(text) if line]


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
    """``split_lines`` on bytes: safe for every ASCII-compatible codec (no multi-byte unit holds 0x0A or 0x0D)."""
    return [line for line in _BYTE_LINE_END.split(raw) if line]


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
    if _plainly_utf8(raw):
        return "utf-8"
    sample = [line for line in _byte_lines(raw) if not line.isascii()][:SAMPLE_LINES]
    if not sample:
        return "utf-8"
    free = max(1, int(MAX_BAD_SHARE * raw.count(b"\n")))  # bad lines the file may have anyway (skipped rows)
    scores = {codec: score(sample, codec, free) for codec in CANDIDATES[1:]}
    scores["utf-8"] = utf8_score(sample, free)
    utf8_valid = _utf8_text(sample) is not None
    rival = max(CANDIDATES[1:], key=lambda codec: scores[codec])
    if utf8_valid and (scores["utf-8"] >= STRONG_SCORE or scores[rival] < STRONG_SCORE):
        return "utf-8"  # valid two-byte UTF-8 is overruled only by a strong legacy reading ("谢谢" in GBK = "лл")
    ranked = sorted(CANDIDATES, key=lambda codec: -scores[codec])  # stable: ties keep the CANDIDATES order
    best = ranked[0]
    if scores[best] == 0:  # no candidate decodes any non-ASCII line: bad bytes in a UTF-8 (ASCII) file
        return "utf-8"
    if scores[best] < MIN_SCORE:
        raise EncodingError(
            f"{name}: cannot tell the text encoding: it reads as none of {', '.join(map(label, CANDIDATES))} "
            f"({_first_utf8_error(raw)}); {ENCODING_HINT}"
        )
    close = [codec for codec in ranked if scores[codec] > scores[best] - MIN_MARGIN and scores[codec] > 0]
    close += ["utf-8"] if utf8_valid and "utf-8" not in close else []
    if len(close) > 1:
        best = most_frequent_reading(sample, close)
    if best is None:
        readings = ", ".join(f"{label(codec)} ({_preview(sample, codec)!r})" for codec in close)
        flags = " or ".join(f"--encoding {_flag(codec)}" for codec in close)
        raise EncodingError(
            f"{name}: cannot tell the text encoding, these readings all fit: {readings}; pass {flags} "
            "(or the file's own encoding)"
        )
    return best


def _plainly_utf8(raw: bytes) -> bool:
    """Valid UTF-8 that is ASCII or holds a character of three bytes or more (CJK): no legacy codec reads like that
    by chance. Checked on the whole file at C speed before any line is scored."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text.isascii() or _beyond_two_bytes().search(text) is not None


@functools.cache
def _beyond_two_bytes() -> re.Pattern[str]:
    # compiled on first use: a class this wide takes ~10 ms to compile, which every importing process would pay
    return re.compile("[\u0800-\U0010ffff]")


def _utf8_text(sample: list[bytes]) -> str | None:
    try:
        return "".join(line.decode("utf-8") for line in sample)
    except UnicodeDecodeError:
        return None


def _first_utf8_error(raw: bytes) -> str:
    bad = _decode_lines(raw, "utf-8").bad
    first = min(bad) if bad else None
    return f"line {first}: {bad[first]}" if first else "its characters are implausible in each"


def _flag(codec: str) -> str:
    return {"cp950": "big5", "cp932": "shift_jis"}.get(codec, codec)


def _preview(sample: list[bytes], codec: str) -> str:
    text = "".join(line.decode(codec, errors="replace") for line in sample[:3])
    return "".join(ch for ch in text if not ch.isascii())[:12]
