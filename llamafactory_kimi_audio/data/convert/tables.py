"""CSV / TSV tables read row by row with their line numbers, so that one bad row costs that row only.

* A row on a line whose bytes are not valid in the file's codec (``text_encodings.Decoded.bad``) becomes an Issue.
* A row that repeats the header (two exports pasted together) becomes an Issue, not a row whose audio is "audio".
* A row with non-empty cells past the header's last column becomes an Issue: its last cell would be cut short.
* A quote that never closes would make the csv module swallow every following line into one field (and fail with
  "field larger than field limit" past 128 KiB): a row whose quoted field runs over lines that look like complete
  rows of their own (as many fields as the header), or to the end of the file, becomes an Issue naming the line the
  quote opens on, and reading starts again on the next line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass

from ...fileio.text_encodings import Decoded, decode_file
from ...fileio.textio import DataError
from .validate import Issue

DELIMITERS = ",\t;|"


@dataclass(frozen=True)
class TableRow:
    row: int  # as a spreadsheet numbers it: the header is row 1, a blank line is a row
    line: int  # the physical line the row starts on
    last_line: int  # and the one it ends on
    fields: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[TableRow | Issue]
    decoded: Decoded


def read_table(path: str, name: str, encoding: str = "auto", delimiter: str | None = None) -> Table:
    """Decode ``path`` (``text_encodings.decode_file``) and split it into the header and rows / row Issues."""
    decoded = decode_file(path, encoding, name)
    lines = decoded.lines
    if delimiter is None:  # the candidate found most often in the header line (Excel may use ';' by locale)
        header = lines[0] if lines else ""
        delimiter = max(DELIMITERS, key=lambda d: (header.count(d), d == ","))
    parsed = _spans(lines, delimiter)
    first = next(parsed, None)
    if first is None:
        return Table([], [], decoded)
    if not isinstance(first, TableRow):
        raise DataError(f"{name} line 1: the header row {first.message}; fix the header")
    if 1 in decoded.bad:
        raise DataError(f"{name} line 1: the header row has bad bytes: {decoded.bad[1]}; fix it or pass --encoding")
    header = first.fields
    rows = [
        _row_issue(item, decoded, name)
        or _repeated_header(item, header, name)
        or _extra_cells(item, len(header), name, delimiter)
        or item
        for item in parsed
    ]
    return Table(first.fields, rows, decoded)


@dataclass(frozen=True)
class _Broken:
    row: int
    line: int
    message: str


class _Feed:
    """The lines from ``pos`` on, one per ``next`` (the csv module reads no further than the row it is on)."""

    def __init__(self, lines: list[str], pos: int) -> None:
        self.lines, self.pos = lines, pos

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _spans(lines: list[str], delimiter: str) -> Iterator[TableRow | _Broken]:
    """Rows with their spans; a span that is a quote left open gives ``_Broken`` and parsing resumes on the line
    after the one it opened on."""
    pos, row, width = 0, 0, None
    while pos < len(lines):
        feed = _Feed(lines, pos)
        reader = csv.reader(feed, delimiter=delimiter)
        start = pos
        try:
            for fields in reader:
                row += 1
                problem = _unterminated(lines, start, feed.pos, delimiter, width)
                if problem:
                    yield _Broken(row, start + 1, problem)
                    break
                yield TableRow(row, start + 1, feed.pos, fields)
                if width is None:
                    width = len(fields)  # the header's
                start = feed.pos
            else:
                return
        except csv.Error as err:
            row += 1
            limit = "field limit" in str(err)
            why = "its field grew past the csv module's limit" if limit else f"the csv module says: {err}"
            yield _Broken(row, start + 1, f"opens a quote on line {start + 1} that never closes ({why})")
        pos = start + 1


def _unterminated(lines: list[str], start: int, end: int, delimiter: str, width: int | None) -> str | None:
    """Why the row on ``lines[start:end]`` is a quote left open, or None (one line, or a real multi-line cell)."""
    if end == len(lines) and _open_at_end(lines[start:end], delimiter):
        return f"opens a quote on line {start + 1} that never closes (it runs to the end of the file)"
    if end - start <= 1 or width is None or width < 2:
        return None
    swallowed = sum(len(next(csv.reader([line], delimiter=delimiter), [])) == width for line in lines[start + 1 : end])
    if swallowed:
        return (
            f"opens a quote on line {start + 1} that does not close before {swallowed} line(s) that look like rows "
            f"of their own (lines {start + 2}-{end})"
        )
    return None


def _open_at_end(span: list[str], delimiter: str) -> bool:
    """Whether the quoted field of the last row is still open at the end of the file (the lenient reader keeps it)."""
    try:
        for _ in csv.reader(span, delimiter=delimiter, strict=True):
            pass
    except csv.Error as err:
        return "unexpected end of data" in str(err)
    return False


def _row_issue(item: TableRow | _Broken, decoded: Decoded, name: str) -> Issue | None:
    if isinstance(item, _Broken):
        return Issue("unterminated_quote", name, item.row, _line_note(item.row, item.line) + item.message)
    bad = next((number for number in range(item.line, item.last_line + 1) if number in decoded.bad), None)
    if bad is None:
        return None
    return Issue("undecodable_text", name, item.row, _line_note(item.row, bad) + decoded.bad[bad])


def _repeated_header(item: TableRow | Issue, header: list[str], name: str) -> Issue | None:
    """The header again (two exports pasted together): named as such, not read as a row whose audio is 'audio'."""
    if not isinstance(item, TableRow) or _cells(item.fields) != _cells(header):
        return None
    return Issue("repeated_header", name, item.row, f"repeats the header row ({','.join(_cells(header))})")


def _extra_cells(item: TableRow | Issue, width: int, name: str, delimiter: str) -> Issue | None:
    """A row with non-empty cells past the header's last column (an unquoted delimiter inside a transcript): reading
    it would cut the cell short without a word, so it becomes an Issue. Empty extra cells (``a,b,c,,``) are fine."""
    if not isinstance(item, TableRow) or not any(cell.strip() for cell in item.fields[width:]):
        return None
    extra = ", ".join(repr(cell) for cell in item.fields[width:] if cell.strip())
    return Issue(
        "extra_cells",
        name,
        item.row,
        f"has {len(item.fields)} cells but the header has {width} (after the last column: {extra}), probably a "
        f"{delimiter!r} inside an unquoted cell",
    )


def _cells(fields: list[str]) -> list[str]:
    return [field.strip().lstrip("\ufeff").lower() for field in fields]


def _line_note(row: int, line: int) -> str:
    return "" if row == line else f"line {line}: "


def iter_records(table: Table) -> Iterator[tuple[int, dict] | Issue]:
    """``(row, {header: value})`` per non-blank row (extra fields under the key None, as csv.DictReader does)."""
    width = len(table.headers)
    for item in table.rows:
        if isinstance(item, Issue):
            yield item
            continue
        record: dict = dict(zip(table.headers, item.fields))
        if len(item.fields) > width:
            record[None] = item.fields[width:]
        if any(value.strip() for value in item.fields):
            yield item.row, record
