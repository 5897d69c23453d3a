"""Text-file plumbing shared by the converter and the evaluator: encoding detection, mojibake hints, atomic writes.

Spreadsheets exported on Chinese Windows arrive as GBK/GB18030, Big5, Shift-JIS, UTF-8 with a BOM, or text that was
already decoded with the wrong codec once and saved again ("mojibake"). ``read_text`` decodes the first kinds (the
codec is detected by ``text_encodings.py``) and reports which codec it used; ``mojibake_hint`` recognises the
usual shapes of the last so the converter can warn per row.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..errors import InputError
from ..text import is_han
from .text_encodings import decode_file


class DataError(InputError):
    """A problem with an input or output file, phrased for the user (file, place, fix) on one line."""


# (codec the text was wrongly decoded with, codec it really was); each pair is tried by ``mojibake_hint``.
# "cp1252" is Windows' lenient flavour: bytes CP1252 leaves undefined (0x81, 0x8D, ...) pass through as U+0081...
_MOJIBAKE_PAIRS = (("cp1252", "utf-8"), ("gbk", "utf-8"), ("latin-1", "gb18030"))
# A UTF-8 lead byte seen as Latin-1 followed by a continuation byte seen as Latin-1/CP1252 ("Ã©", "æ•", "é›").
_UTF8_AS_LATIN = re.compile(
    "[\u00c2-\u00ef][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
    "\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039"
    "\u203a\u20ac\u2122]"
)


def read_text(path: str, encoding: str = "auto") -> tuple[str, str]:
    """Decode a whole text file; returns ``(text, codec)``. ``encoding="auto"``: detected (``text_encodings.py``).

    For readers that cannot skip a line: a line with bytes invalid in the codec raises DataError naming it (the
    table, JSON Lines and Kaldi readers use ``decode_file`` and skip such rows instead).
    """
    decoded = decode_file(path, encoding)
    if decoded.bad:
        first = min(decoded.bad)
        raise DataError(f"{path} line {first}: {decoded.bad[first]}; fix the bytes, or pass the right --encoding")
    return decoded.text, decoded.codec


def mojibake_hint(text: str) -> str | None:
    """Return a one-line description when ``text`` looks like mojibake, else None.

    Recognised shapes: U+FFFD replacement characters (bytes already lost), UTF-8 read as Latin-1/CP1252 ("Ã©",
    "é\\x87\\x8d" for "重"; also when some bytes were lost on the way), UTF-8 read as GBK ("鏁版嵁" for "数据") and
    GBK read as Latin-1 ("Êý¾Ý").
    """
    if "\ufffd" in text:
        return (
            "contains U+FFFD replacement characters (bytes not valid in the file's encoding, or text decoded with "
            "the wrong codec before saving)"
        )
    if text.isascii():
        return None
    for wrong, right in _MOJIBAKE_PAIRS:
        fixed = _redecode(text, wrong, right)
        if fixed is not None:
            return f"looks like {right} text decoded as {wrong}: probably {fixed[:24]!r}; re-export the file as UTF-8"
    pairs = _UTF8_AS_LATIN.findall(text)
    if len(pairs) >= 2:
        return f"looks like utf-8 text decoded as cp1252 ({pairs[0]!r}, ...; bytes lost); re-export the file as UTF-8"
    return None


def _encode(text: str, codec: str) -> bytes:
    if codec != "cp1252":
        return text.encode(codec)
    out = bytearray()
    for char in text:
        try:
            out += char.encode("cp1252")
        except UnicodeEncodeError:
            if ord(char) > 0xFF:
                raise
            out.append(ord(char))  # Latin-1 / C1 control: the byte itself
    return bytes(out)


def _redecode(text: str, wrong: str, right: str) -> str | None:
    try:
        fixed = _encode(text, wrong).decode(right)
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None
    if fixed == text or len(fixed) >= len(text):
        return None
    if right == "utf-8" and wrong != "gbk":
        return fixed  # Latin-1 text that is also valid UTF-8 only happens with mojibake pairs such as "Ã©"
    if wrong == "latin-1":  # GBK pairs: every two non-ASCII chars must have become one CJK char, none borrowed ASCII
        non_ascii = [c for c in fixed if not c.isascii()]
        if not all(map(is_han, non_ascii)) or 2 * len(non_ascii) != sum(not c.isascii() for c in text):
            return None
    return fixed if sum(map(is_han, fixed)) >= 2 else None  # guards against chance decodes of real text


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``), else set and restored."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success fsync and ``os.replace`` it, on any error delete it.

    An interrupted run therefore leaves either the old file or the complete new one, never a half-written file.
    The file gets the user's umask (0644 under umask 022), so a shared data directory stays readable to the team.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes it 0600; give it the mode a plain open() would (the umask's)
            os.fchmod(fd, 0o666 & ~current_umask())
        newline = "" if "b" not in mode else None
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as UTF-8 JSON (non-ASCII kept readable) atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=indent)
        fh.write("\n")


def write_lines(path: str, lines: Callable[[], Iterator[str]]) -> None:
    """Write the strings produced by ``lines()`` atomically, one per line."""
    with atomic_open(path) as fh:
        for line in lines():
            fh.write(line + "\n")


def ensure_writable_dir(path: str, flag: str = "--out-dir") -> str:
    """Create ``path`` if needed and check that files can be created in it; returns the absolute path."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        blocker = _file_in_the_way(path)
        if blocker is not None:
            where = "" if blocker == path else f"{path}: "
            fix = f"choose another {flag} (a folder, created if missing)"
            raise DataError(f"{where}{blocker} is a file, not a folder; {fix}") from err
        reason = err.strerror or type(err).__name__
        raise DataError(f"{path}: cannot write to the output directory ({reason}); choose a writable {flag}") from err
    return path


def _file_in_the_way(path: str) -> str | None:
    """``path`` or the first of its parent folders that is a file (e.g. the input CSV given as --out-dir)."""
    parts = path.split(os.sep)
    for end in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:end])
        if os.path.exists(prefix) and not os.path.isdir(prefix):
            return prefix
    return None
