"""Stream the elements of one top-level array member of a (multi-GB) JSON object in constant memory.

WenetSpeech.json / GigaSpeech.json hold ``{"...": ..., "audios": [{...}, {...}, ...], ...}``; the toolkits
``json.load`` them whole, which needs tens of GB. Here the file is read in chunks and each value is decoded with
``json.JSONDecoder.raw_decode`` as soon as the buffer holds it whole; members other than the wanted one are decoded
and dropped (they are small metadata in both corpora).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from ....fileio.textio import DataError

CHUNK = 1 << 20


class _Buffer:
    """A growing window over a text stream: ``text[pos:]`` is what is not consumed yet."""

    def __init__(self, fh: IO[str], name: str, chunk: int) -> None:
        self.fh, self.name, self.chunk = fh, name, chunk
        self.text, self.pos, self.eof = "", 0, False

    def fill(self) -> bool:
        """Read one more chunk (dropping what was consumed); False at the end of the file."""
        if self.eof:
            return False
        more = self.fh.read(self.chunk)
        self.text, self.pos = self.text[self.pos :] + more, 0
        self.eof = not more
        return bool(more)

    def peek(self) -> str:
        """The next non-blank character (reading on as needed), or '' at the end of the file."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos].isspace():
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return ""

    def expect(self, chars: str) -> str:
        char = self.peek()
        if not char or char not in chars:
            found = repr(char) if char else "the end of the file"
            raise DataError(f"{self.name}: expected one of {chars!r} but found {found}; the JSON file is damaged")
        self.pos += 1
        return char

    def value(self, decoder: json.JSONDecoder) -> Any:
        """Decode the next JSON value whole, reading more until it is complete."""
        self.peek()
        while True:
            try:
                obj, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as err:
                if self.fill():
                    continue
                raise DataError(f"{self.name}: invalid or truncated JSON ({err.msg}); the file is damaged") from err
            if end == len(self.text) and not self.eof and self.fill():
                continue  # a number may go on in the next chunk: decode again with more text
            self.pos = end
            return obj


def stream_array_member(fh: IO[str], member: str, name: str, chunk: int = CHUNK) -> Iterator[Any]:
    """Each element of ``obj[member]`` of the top-level object in ``fh``, in order, one in memory at a time."""
    buf, decoder = _Buffer(fh, name, chunk), json.JSONDecoder()
    buf.expect("{")
    found = False
    while buf.peek() != "}":
        key = buf.value(decoder)
        buf.expect(":")
        if key == member and buf.peek() == "[":
            found = True
            buf.expect("[")
            while buf.peek() != "]":
                yield buf.value(decoder)
                if buf.peek() == ",":
                    buf.expect(",")
            buf.expect("]")
        else:
            buf.value(decoder)
        if buf.peek() == ",":
            buf.expect(",")
        elif not buf.peek():
            raise DataError(f"{name}: the JSON object is not closed with '}}'; the file may be truncated")
    if not found:
        raise DataError(f"{name}: no {member!r} array at the top level; is this the corpus' own JSON manifest?")
