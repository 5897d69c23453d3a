"""A torn or missing index, found by ``cache verify``: complete payloads in a shard's ``.bin`` that no sound record
of its ``.idx`` points to and that no newer entry replaces.

A writer killed mid-entry leaves at most one *partial* payload at the end of its ``.bin`` (dead bytes, harmless);
complete payloads without a record mean the ``.idx`` was truncated, garbled or deleted, so those clips are missing
from the cache although their bytes are there. A shard whose writer is still running (same host, live process) may
have its last payload's record on the way: that one payload is not counted.
"""

from __future__ import annotations

import os
import socket
import struct

from .cache_format import MAGIC, RECORD, ROW_DTYPES, ClipKey, parse_records, payload_header
from .cache_store import CacheIndex

FIX = (
    "fix: re-run `kimi-audio-lf precompute` on the dataset (it encodes the missing entries again), then "
    "`kimi-audio-lf cache gc` frees their unindexed bytes"
)
ROW_BYTES = {"none": 0, "float32": 4, "bfloat16": 2, "float16": 2}
assert set(ROW_BYTES) == set(ROW_DTYPES)


def index_problems(folder: str, index: CacheIndex) -> list[str]:
    """One line per shard whose index is torn or missing, naming the file and the fix."""
    if not os.path.isdir(folder):
        return []
    stems = sorted({n[:-4] for n in os.listdir(folder) if n.endswith((".bin", ".idx"))})
    problems = []
    for stem in stems:
        line = _shard_problem(os.path.join(folder, stem), index)
        if line:
            problems.append(line)
    return problems


def _shard_problem(stem: str, index: CacheIndex) -> str | None:
    bin_path, idx_path = f"{stem}.bin", f"{stem}.idx"
    try:
        with open(idx_path, "rb") as f:
            raw = f.read()
        missing = False
    except FileNotFoundError:
        raw, missing = b"", True
    records, alive = parse_records(raw), _writer_alive(stem)
    torn = len(raw) % RECORD.itemsize != 0 and not alive
    garbled = len(raw) // RECORD.itemsize - len(records)
    lost = 0
    if os.path.isfile(bin_path):
        lost = _unindexed_payloads(bin_path, records, index, spare_tail=alive or not (missing or torn or garbled))
    if not (lost or torn or garbled):
        return None
    what = "missing index" if missing else "torn index"
    details = [f"{lost} entries of {bin_path} have no index record"] if lost else []
    if garbled:
        details.append(f"{garbled} garbled records")
    if torn:
        details.append("a partial record at its end")
    return f"{idx_path}: {what} ({', '.join(details)}); {FIX}"


def _writer_alive(stem: str) -> bool:
    """The shard's writer (``<host>-<pid>-<tag>``) is a live process on this host."""
    parts = os.path.basename(stem).rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gaps(records, size: int) -> list[tuple[int, int]]:
    """The byte ranges of a ``.bin`` of ``size`` bytes that no record covers."""
    gaps, position = [], 0
    for offset, length in sorted((int(r["offset"]), int(r["length"])) for r in records):
        if offset > position:
            gaps.append((position, min(offset, size)))
        position = max(position, offset + length)
    if position < size:
        gaps.append((position, size))
    return gaps


def _unindexed_payloads(bin_path: str, records, index: CacheIndex, spare_tail: bool) -> int:
    """Complete payloads in the uncovered ranges of ``bin_path`` whose clip has no entry in the merged index.

    ``spare_tail``: one complete payload alone at the end of the file is what a writer killed between a payload and
    its record leaves (or a live writer's entry whose record is on the way), not a torn index: not counted."""
    size = os.path.getsize(bin_path)
    found: list[tuple[bytes, int, int]] = []  # (key digest, gap start, payload end)
    fd = os.open(bin_path, os.O_RDONLY)
    try:
        for start, end in _gaps(records, size):
            at = start
            while at < end:
                parsed = _payload_at(fd, at)
                if parsed is None or at + parsed[1] > end:
                    break  # not a payload or a partial one: dead bytes of an interrupted write
                at += parsed[1]
                found.append((parsed[0].digest, start, at))
    finally:
        os.close(fd)
    if spare_tail and found and found[-1][2] == size and (len(found) == 1 or found[-2][1] != found[-1][1]):
        found.pop()
    return sum(index.find(digest) is None for digest, _, _ in found)


def _payload_at(fd: int, at: int) -> tuple[ClipKey, int] | None:
    """The clip key and total length of the payload starting at byte ``at``, or None when there is none."""
    head = os.pread(fd, 8, at)
    if len(head) < 8 or head[:4] != MAGIC:
        return None
    (header_length,) = struct.unpack("<I", head[4:8])
    try:
        header, start = payload_header(os.pread(fd, 8 + header_length, at))
        tensors = int(header["frames"]) * (int(header["dim"]) * ROW_BYTES[header["rows"]] + 2)
        key = ClipKey(header["audio"], int(header["size"]), int(header["mtime_ns"]))
    except (ValueError, KeyError, TypeError):
        return None
    return key, start + tensors
