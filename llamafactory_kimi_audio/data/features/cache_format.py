"""The on-disk format of the feature cache: cheap clip keys, shard payloads and fixed-size index records.

A clip's key is ``blake2b(absolute path, file size, mtime_ns)``: one ``stat`` and no audio read. A file that is
rewritten gets a new size or modification time, hence a new key, so it is encoded again and never served the old
features (the same quick check ``rsync`` and ``make`` rely on).

A payload (one clip, appended to a shard) is ``MAGIC | u32 header length | JSON header | rows | codes``. The header
names the audio, its size and mtime, the frame count and the rows' dtype. Rows come first (so they start aligned),
in the dtype the encoder produced or the one asked for (what training consumes), or are absent in codes-only
entries; codes are int16 (GLM-4-Voice codes are below 16384). Each index record (:data:`RECORD`, 64 bytes) locates
one payload and carries the CRC-32 of the payload and a CRC-32 of itself, so a torn or garbled record is ignored
and a damaged payload is reported by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...fileio.audio_spans import split_fragment

MAGIC = b"KAFC"
FORMAT_VERSION = 1
CODE_DTYPE = "int16"
ROW_DTYPES = ("none", "float32", "bfloat16", "float16")  # index-record code = position
RECORD = np.dtype(
    [
        ("key", "S16"),
        ("offset", "<u8"),
        ("length", "<u8"),
        ("frames", "<u4"),
        ("dim", "<u4"),
        ("rows_dtype", "u1"),
        ("version", "u1"),
        ("pad", "<u2"),
        ("crc", "<u4"),
        ("written_ns", "<u8"),
        ("pad2", "<u4"),
        ("check", "<u4"),
    ]
)
assert RECORD.itemsize == 64


@dataclass(frozen=True)
class ClipKey:
    """Who a cache entry belongs to: the audio file as it is now."""

    path: str
    size: int
    mtime_ns: int

    @property
    def digest(self) -> bytes:
        text = f"{self.path}\0{self.size}\0{self.mtime_ns}".encode("utf-8", "surrogateescape")
        return hashlib.blake2b(text, digest_size=16).digest()


def clip_key(audio: str) -> ClipKey:
    """The key of an ``audios`` entry as its file is now: one ``stat`` of the file (OSError when it is gone); a
    segment ``PATH#t=B,E`` keeps its span in the key, so two segments of one file never share an entry."""
    path, fragment = split_fragment(audio)
    stat = os.stat(path)
    return ClipKey(os.path.abspath(path) + fragment, stat.st_size, stat.st_mtime_ns)


def key_file(key_path: str) -> str:
    """The audio file of a key's path (the segment span dropped)."""
    return split_fragment(key_path)[0]


def encode_payload(key: ClipKey, codes: Any, rows: Any | None) -> tuple[bytes, int, int, int]:
    """``(payload, frames, dim, rows dtype code)`` of one clip; ``rows`` None for a codes-only entry."""
    import torch

    codes = codes.detach().reshape(-1).cpu()
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > np.iinfo(np.int16).max):
        raise ValueError(f"semantic codes of {key.path} do not fit int16 ({int(codes.min())}..{int(codes.max())})")
    code_bytes = codes.to(torch.int16).numpy().tobytes()
    dim, dtype_code, row_bytes = 0, 0, b""
    if rows is not None:
        rows = rows.detach().cpu().contiguous()
        if rows.ndim != 2 or rows.shape[0] != codes.numel():
            raise ValueError(f"{key.path}: {codes.numel()} codes but rows of shape {list(rows.shape)}")
        dim, dtype_code = rows.shape[1], ROW_DTYPES.index(str(rows.dtype).replace("torch.", ""))
        row_bytes = rows.view(torch.uint8).numpy().tobytes()
    header = json.dumps(
        {
            "audio": key.path,
            "size": key.size,
            "mtime_ns": key.mtime_ns,
            "frames": codes.numel(),
            "rows": ROW_DTYPES[dtype_code],
            "dim": dim,
        }
    ).encode()
    payload = MAGIC + struct.pack("<I", len(header)) + header + row_bytes + code_bytes  # rows first: aligned
    return payload, codes.numel(), dim, dtype_code


def make_record(key: ClipKey, offset: int, payload: bytes, frames: int, dim: int, dtype_code: int, now: int) -> bytes:
    record = np.zeros(1, dtype=RECORD)
    record[0] = (key.digest, offset, len(payload), frames, dim, dtype_code, FORMAT_VERSION, 0, 0, now, 0, 0)
    record["crc"] = zlib.crc32(payload)
    record["check"] = zlib.crc32(record.tobytes()[:-4])
    return record.tobytes()


def parse_records(raw: bytes) -> np.ndarray:
    """The sound records of an index file's bytes (a torn tail or a garbled record is dropped)."""
    whole = len(raw) // RECORD.itemsize * RECORD.itemsize
    records = np.frombuffer(raw[:whole], dtype=RECORD)
    if not len(records):
        return records
    body = records.view(np.uint8).reshape(len(records), RECORD.itemsize)[:, :-4]
    sound = np.fromiter((zlib.crc32(row.tobytes()) for row in body), dtype=np.uint32, count=len(records))
    return records[sound == records["check"]]


def payload_header(payload: bytes) -> tuple[dict[str, Any], int]:
    """The JSON header of a payload and where its tensors start; ValueError when it is not a payload."""
    if payload[:4] != MAGIC or len(payload) < 8:
        raise ValueError("not a feature-cache payload (bad magic)")
    (length,) = struct.unpack("<I", payload[4:8])
    return json.loads(payload[8 : 8 + length]), 8 + length


def decode_payload(payload: bytes, record: Any) -> tuple[dict[str, Any], Any, Any | None]:
    """``(header, codes int64 [T], rows [T, dim] or None)``; ValueError naming what is wrong."""
    import torch

    if zlib.crc32(payload) != int(record["crc"]) or len(payload) != int(record["length"]):
        raise ValueError(f"checksum mismatch ({len(payload)} of {int(record['length'])} bytes read)")
    header, start = payload_header(payload)
    frames, dim = int(record["frames"]), int(record["dim"])
    buffer = bytearray(payload[start:])  # a copy that starts aligned; the tensors keep it alive
    dtype = ROW_DTYPES[int(record["rows_dtype"])]
    rows, row_bytes = None, 0
    if dtype != "none":
        rows = torch.frombuffer(buffer, dtype=getattr(torch, dtype), count=frames * dim).reshape(frames, dim)
        row_bytes = rows.numel() * rows.element_size()
    if len(buffer) != row_bytes + 2 * frames:
        raise ValueError(f"payload holds {len(buffer)} tensor bytes, the record describes {row_bytes + 2 * frames}")
    codes = torch.frombuffer(buffer, dtype=torch.int16, offset=row_bytes, count=frames).long()
    return header, codes, rows
